"""The message plane's code in Redis: one Functions library (Lua) that stores and publishes
a message in one step and reads a channel's history, and the keys it reads and writes. The
deploy loads it as the operator (roles/redis.py); the workers may only call it."""

from __future__ import annotations

import hashlib

# KEYS: history stream, its state (hash: epoch, last trimmed id, bytes held), the registry of
#   channels with history (zset: channel by expiry, ms), the publishing subject's registry of
#   the channels it started, [idempotency key, the subject's pending ids (zset: key by expiry),
#   every subject's pending ids (zset: key by expiry)]
# ARGV: pub/sub channel, frame head, history size, history ttl (s), epoch for a new history,
#   history byte budget, most channels with history, most per subject, most pending ids per
#   subject, the channel's name, whether subscribers hold it until it is confirmed ('1'), most
#   pending ids of every subject together
# Answers the offset, or an error 'LIMIT <reason>' that the publisher hears as it is.
STORE_AND_PUBLISH = """
local ttl = tonumber(ARGV[4]) * 1000
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
-- Six keys: an instance of the release before the fleet-wide bound, still running while a
-- rollout goes on; its ids keep their meaning, uncounted by the fleet's set.
if #KEYS >= 6 then
  local done = redis.call('GET', KEYS[5])
  if done then
    -- Sent again: subscribers may hold it still. Held or not, it is as safe as it will get
    -- when its publisher no longer waits for a replica: release it.
    if ARGV[11] ~= '1' then redis.call('PUBLISH', ARGV[1], '!' .. done) end
    return done
  end
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
  if redis.call('ZCARD', KEYS[6]) >= tonumber(ARGV[9]) then
    return redis.error_reply('LIMIT too many publish ids of this subject await expiry')
  end
  -- Fleet-wide too: any number of subjects may not hold more than the memory budget counts.
  if #KEYS == 7 then
    redis.call('ZREMRANGEBYSCORE', KEYS[7], '-inf', now)
    if redis.call('ZCARD', KEYS[7]) >= tonumber(ARGV[12]) then
      return redis.error_reply('LIMIT too many publish ids await expiry')
    end
  end
end
-- Whether a registry has room for one more channel: members whose expiry passed are looked
-- up (their history may have been kept alive since) and re-scored or dropped.
local function has_room(registry, most)
  local due = redis.call('ZRANGEBYSCORE', registry, '-inf', now, 'LIMIT', 0, 256)
  for _, channel in ipairs(due) do
    local left = redis.call('PTTL', 'wssfleet:history:' .. channel)
    if left > 0 then
      redis.call('ZADD', registry, now + left, channel)
    else
      redis.call('ZREM', registry, channel)
    end
  end
  return redis.call('ZCARD', registry) < most
end
local state = redis.call('HMGET', KEYS[2], 'epoch', 'bytes')
local epoch, held = state[1], tonumber(state[2]) or 0
if (not epoch) or redis.call('EXISTS', KEYS[1]) == 0 then
  if not has_room(KEYS[3], tonumber(ARGV[7])) then
    return redis.error_reply('LIMIT too many channels have history')
  end
  if not has_room(KEYS[4], tonumber(ARGV[8])) then
    return redis.error_reply('LIMIT this subject started history on too many channels')
  end
  epoch, held = ARGV[5], 0
  redis.call('HSET', KEYS[2], 'epoch', epoch, 'trimmed', '0-0')
  redis.call('ZADD', KEYS[3], now + ttl, ARGV[10])
  redis.call('ZADD', KEYS[4], now + ttl, ARGV[10])
  redis.call('PEXPIRE', KEYS[4], 2 * ttl)
end
-- Room for the new entry within both bounds: the oldest entries go first.
local size, budget = tonumber(ARGV[3]), tonumber(ARGV[6])
held = held + #ARGV[2]
local length = redis.call('XLEN', KEYS[1])
local minid = '0-0'
if length >= size or held > budget then
  local last
  local cursor = '-'
  while length >= size or held > budget do
    local count = math.max(length - size + 1, 16)
    local batch = redis.call('XRANGE', KEYS[1], cursor, '+', 'COUNT', count)
    if #batch == 0 then break end
    for _, entry in ipairs(batch) do
      if length < size and held <= budget then break end
      last = entry[1]
      held = held - #entry[2][2]
      length = length - 1
    end
    cursor = '(' .. last
  end
  if last then
    local ms, seq = string.match(last, '^(%d+)-(%d+)$')
    minid = ms .. '-' .. (tonumber(seq) + 1)
    -- Remember the newest entry trimmed: an offset before it cannot be recovered in full.
    redis.call('HSET', KEYS[2], 'trimmed', last)
  end
end
-- Trimmed by XADD itself (MINID: every entry before it goes), as the workers' user may not
-- XTRIM.
local id = redis.call('XADD', KEYS[1], 'MINID', minid, '*', 'f', ARGV[2])
redis.call('HSET', KEYS[2], 'bytes', held)
redis.call('PEXPIRE', KEYS[1], ttl)
redis.call('PEXPIRE', KEYS[2], ttl)
local ms, seq = string.match(id, '^(%d+)-(%d+)$')
local offset = epoch .. ':' .. string.rep('0', 13 - #ms) .. ms .. '-'
  .. string.rep('0', 6 - #seq) .. seq
-- Held (marked '~') while a replica may not have it yet: the subscribers' processes deliver
-- it once the publisher's process announces it is on two nodes ('!' and its offset).
local hold = ARGV[11] == '1' and '~' or ''
redis.call('PUBLISH', ARGV[1], hold .. offset .. ' ' .. ARGV[2] .. offset .. '"}')
if #KEYS >= 6 then
  redis.call('SET', KEYS[5], offset, 'PX', ttl)
  redis.call('ZADD', KEYS[6], now + ttl, KEYS[5])
  redis.call('PEXPIRE', KEYS[6], ttl)
end
if #KEYS == 7 then
  redis.call('ZADD', KEYS[7], now + ttl, KEYS[5])
  redis.call('PEXPIRE', KEYS[7], ttl)
end
return offset
"""

# KEYS: history stream, its state
# ARGV: what to read ('latest', 'all', or 'since'), the offset's epoch and stream id, max entries,
#   about how many bytes of entries
# Returns {epoch, last id, recovered (0/1), entries, more (0/1)}; epoch '' when there is no
# history.
READ_SINCE = """
local epoch = redis.call('HGET', KEYS[2], 'epoch')
if (not epoch) or redis.call('EXISTS', KEYS[1]) == 0 then
  -- Nothing stored: whoever saw the channel empty has missed nothing.
  return {'', '', ARGV[1] == 'all' and 1 or 0, {}, 0}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
local last, deleted = '0-0', '0-0'
for i = 1, #info, 2 do
  if info[i] == 'last-generated-id' then last = info[i + 1] end
  if info[i] == 'max-deleted-entry-id' then deleted = info[i + 1] end
end
local trimmed = redis.call('HGET', KEYS[2], 'trimmed') or '0-0'
if ARGV[1] == 'latest' or (ARGV[1] == 'since' and ARGV[2] ~= epoch) then
  return {epoch, last, 0, {}, 0}
end
local since = ARGV[1] == 'all' and '0-0' or ARGV[3]
local function parse(id)
  local ms, seq = string.match(id, '^(%d+)-(%d+)$')
  return tonumber(ms), tonumber(seq)
end
local function after(a, b)
  local ams, aseq = parse(a)
  local bms, bseq = parse(b)
  return ams > bms or (ams == bms and aseq > bseq)
end
-- Beyond the newest message, or older than what trimming (or an XDEL) removed: not whole.
if after(since, last) or after(trimmed, since) or after(deleted, since) then
  return {epoch, last, 0, {}, 0}
end
-- At most ARGV[4] entries and about ARGV[5] bytes (at least one entry); the fifth answer
-- says whether more may follow.
local entries = redis.call('XRANGE', KEYS[1], '(' .. since, '+', 'COUNT', ARGV[4])
local page, bytes = {}, 0
for i, entry in ipairs(entries) do
  bytes = bytes + #entry[2][2]
  if i > 1 and bytes > tonumber(ARGV[5]) then
    return {epoch, last, 1, page, 1}
  end
  page[i] = entry
end
return {epoch, last, 1, page, #entries == tonumber(ARGV[4]) and 1 or 0}
"""


def _library() -> tuple[str, str]:
    """The message plane's code as one Redis Functions library, and its version (a digest of
    its code). The deploy loads it with the operator's user (roles/redis.py); the workers'
    user may only call it (FCALL), never load or run code of its own."""
    code = (
        "#!lua name=wssfleet\n"
        "redis.register_function('wssfleet_store_and_publish', function(KEYS, ARGV)\n"
        f"{STORE_AND_PUBLISH}\nend)\n"
        "redis.register_function{function_name='wssfleet_read_since', flags={'no-writes'},\n"
        f"  callback=function(KEYS, ARGV)\n{READ_SINCE}\nend}}\n"
    )
    version = hashlib.sha256(code.encode()).hexdigest()[:16]
    code += (
        "redis.register_function{function_name='wssfleet_version', flags={'no-writes'},\n"
        f"  callback=function() return '{version}' end}}\n"
    )
    return code, version


LIBRARY, LIBRARY_VERSION = _library()


HISTORY_CHANNELS_KEY = "wssfleet:history-channels"
# Every subject's publish ids awaiting expiry, for the fleet-wide bound (publish_ids).
PUBLISH_IDS_KEY = "wssfleet:publish-ids"


def _counted(text: str) -> str:
    """``text`` with its length before it: parts joined this way cannot be confused with
    other parts that join to the same characters ('a:b' + 'c' is not 'a' + 'b:c')."""
    return f"{len(text)}:{text}"


def publish_keys(channel: str, subject: str, message_key: str | None) -> list[str]:
    """The keys a publish reads and writes (STORE_AND_PUBLISH's KEYS), in order."""
    keys = [
        f"wssfleet:history:{channel}",
        f"wssfleet:history-state:{channel}",
        HISTORY_CHANNELS_KEY,
        f"wssfleet:subject-channels:{_counted(subject)}",
    ]
    if message_key is not None:
        keys.append(f"wssfleet:published:{_counted(channel)}:{_counted(subject)}:{message_key}")
        keys.append(f"wssfleet:subject-ids:{_counted(subject)}")
        keys.append(PUBLISH_IDS_KEY)
    return keys
