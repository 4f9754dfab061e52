"""The message plane: where a published message is stored, numbered and carried to every process
that serves its channel.

Every message gets an offset when it is stored: ``<epoch>:<milliseconds>-<sequence>``, zero
padded so that, within a channel, a later message's offset sorts after an earlier one's. The
epoch names one life of a channel's history: when the history is gone (expired, flushed,
evicted) the next message starts a new epoch, so an offset from before can never be mistaken for
one the history still reaches.

Two buses share one interface:

- ``RedisBus`` keeps each channel's history in a Redis stream (trimmed to ``history_size``,
  expiring ``history_ttl`` after the last message) and carries messages to the processes over
  pub/sub, one Redis channel per wssfleet channel, subscribed only while a process serves it.
  A Lua script stores and publishes in one step, so pub/sub order is history order.
- ``MemoryBus`` does the same inside one process, for a service run without Redis.

Frames are built once: the hub passes the message frame without its closing offset (``head``),
the bus appends ``offset"}``; nothing on the hot path decodes JSON.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import hashlib
import logging
import random
import re
import uuid
from collections import Counter, deque
from collections.abc import Callable
from dataclasses import dataclass, field

import redis.asyncio as redis
from redis.asyncio.retry import Retry
from redis.backoff import ExponentialBackoff
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import RedisError
from redis.exceptions import TimeoutError as RedisTimeoutError

from wssfleet.pipelined import Address, Connection, Link, LinkLost, ReplyError

log = logging.getLogger("wssfleet.broker")

OFFSET = re.compile(r"^([0-9a-f]{1,32}):(\d{13,20})-(\d{6,20})$")
FRAME_TAIL = '"}'
# Subscribed by every process whatever its clients want: the pub/sub connection exists (and is
# health-checked) before the first channel is asked for.
CONTROL_CHANNEL = "wssfleet:control"
# Redis's name for a wssfleet channel's pub/sub channel is this and the channel's name.
CHANNEL_PREFIX = "wssfleet:channel:"
CHANNEL_PREFIX_LENGTH = len(CHANNEL_PREFIX)
# A channel nobody serves any more keeps its subscription this long, so a client that comes
# straight back (a reconnect) finds its feed still warm.
UNSUBSCRIBE_AFTER = 5.0
COMMAND_TIMEOUT = 2.0
# A history read answers about this many bytes at a time: as many entries as fit when each is
# as large as a publish may be, and no more bytes than this (entries stored before that bound
# may be larger). Redis reads no more than a page for it, and serves others between pages.
HISTORY_PAGE_BYTES = 256 * 2**10
# A pub/sub connection that has said nothing this long is asked for a PONG; one that stays
# silent COMMAND_TIMEOUT longer is dropped and made again.
HEALTH_CHECK_INTERVAL = 5.0

# KEYS: history stream, its state (hash: epoch, last trimmed id, bytes held), the registry of
#   channels with history (zset: channel by expiry, ms), the publishing subject's registry of
#   the channels it started, [idempotency key, the subject's pending ids (zset: key by expiry)]
# ARGV: pub/sub channel, frame head, history size, history ttl (s), epoch for a new history,
#   history byte budget, most channels with history, most per subject, most pending ids per
#   subject, the channel's name
# Answers the offset, or an error 'LIMIT <reason>' that the publisher hears as it is.
STORE_AND_PUBLISH = """
local ttl = tonumber(ARGV[4]) * 1000
local clock = redis.call('TIME')
local now = tonumber(clock[1]) * 1000 + math.floor(tonumber(clock[2]) / 1000)
if #KEYS == 6 then
  local done = redis.call('GET', KEYS[5])
  if done then return done end
  redis.call('ZREMRANGEBYSCORE', KEYS[6], '-inf', now)
  if redis.call('ZCARD', KEYS[6]) >= tonumber(ARGV[9]) then
    return redis.error_reply('LIMIT too many publish ids of this subject await expiry')
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
redis.call('PUBLISH', ARGV[1], offset .. ' ' .. ARGV[2] .. offset .. '"}')
if #KEYS == 6 then
  redis.call('SET', KEYS[5], offset, 'PX', ttl)
  redis.call('ZADD', KEYS[6], now + ttl, KEYS[5])
  redis.call('PEXPIRE', KEYS[6], ttl)
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


class BusUnavailable(Exception):
    """The bus could not store or read a message now; the caller says so to its client."""


class PublishRefused(Exception):
    """A publish past one of the deployment's bounds (history channels, pending ids): the
    message is not stored, and the publisher hears why."""


@dataclass(frozen=True)
class Limits:
    """The bounds a bus enforces on what publishers store (see ClientPolicy)."""

    history_size: int
    history_ttl: int
    history_max_bytes: int = 512 * 2**10
    max_publish_bytes: int = 16384
    history_channels: int = 200
    history_channels_per_subject: int = 50
    publish_ids_per_subject: int = 50_000


HISTORY_CHANNELS_KEY = "wssfleet:history-channels"


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
    return keys


@dataclass(frozen=True, order=True)
class Position:
    """Where an offset points: its epoch and its place in that epoch's history."""

    epoch: str
    milliseconds: int
    sequence: int

    @classmethod
    def parse(cls, offset: str) -> Position | None:
        match = OFFSET.match(offset)
        if match is None:
            return None
        return cls(match[1], int(match[2]), int(match[3]))

    @property
    def stream_id(self) -> str:
        return f"{self.milliseconds}-{self.sequence}"


def offset_of(epoch: str, stream_id: str) -> str:
    milliseconds, sequence = stream_id.split("-")
    return f"{epoch}:{int(milliseconds):013d}-{int(sequence):06d}"


def is_after(offset: str, reference: str | None) -> bool:
    """Whether ``offset`` comes after ``reference`` in its channel. A message of another
    epoch counts as later: a new history starts after the old one ended. (Called for every
    message: compares the padded text instead of parsing.)"""
    if not reference:
        return True
    epoch, _, place = offset.partition(":")
    reference_epoch, _, reference_place = reference.partition(":")
    if epoch != reference_epoch:
        return True
    return (len(place), place) > (len(reference_place), reference_place)


@dataclass(frozen=True)
class History:
    """A channel's history as seen from an offset: what came after it, and whether that is
    all of it."""

    latest: str
    recovered: bool
    missed: list[tuple[str, str]] = field(default_factory=list)


# (channel, offset, complete frame)
Deliver = Callable[[str, str, str], None]
# Called with the channels whose messages may have been missed while the bus was away.
Resync = Callable[[list[str]], None]


class Bus:
    """What the hub needs from a bus."""

    connected: bool
    received: int

    def start(self, deliver: Deliver, resync: Resync) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def want(self, channel: str) -> None:
        """This process serves ``channel``: carry its messages here (see ``ready``)."""
        raise NotImplementedError

    async def ready(self, channel: str) -> None:
        """Return once messages of a wanted ``channel`` published from now on reach
        ``deliver``."""
        raise NotImplementedError

    def release(self, channel: str) -> None:
        """This process no longer serves ``channel``."""
        raise NotImplementedError

    async def publish(self, channel: str, head: str, subject: str, message_key: str | None) -> str:
        """Store and carry a message of ``subject``; its offset. ``message_key`` (the publish
        id) makes a retry return the first attempt's offset instead of storing it again."""
        raise NotImplementedError

    async def since(self, channel: str, offset: str | None) -> History:
        """What the channel's history holds after ``offset``: None asks only for its latest
        offset, "" (a client that saw the channel empty) for all of it."""
        raise NotImplementedError

    async def wait_connected(self) -> None:
        raise NotImplementedError


class MemoryBus(Bus):
    """The bus of a process that runs alone: history in memory, same offsets and answers."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.history_size = limits.history_size
        self.history_ttl = limits.history_ttl
        self.connected = True
        self.received = 0
        self.epoch = uuid.uuid4().hex[:8]
        self._histories: dict[str, deque[tuple[str, str]]] = {}
        self._bytes: dict[str, int] = {}
        self._started_by: dict[str, str] = {}
        self._trimmed: dict[str, str] = {}
        self._sequence = 0
        # (channel, subject, publish id) -> (offset, when)
        self._keys: dict[tuple[str, str, str], tuple[str, float]] = {}
        # Per subject: publish ids remembered, channels whose history it started.
        self._ids_of: Counter[str] = Counter()
        self._channels_of: Counter[str] = Counter()
        self._touched: dict[str, float] = {}
        self._swept = 0.0
        self._deliver: Deliver = lambda channel, offset, frame: None

    def _expire(self, now: float) -> None:
        """Forget histories and publish keys older than history_ttl, as Redis would."""
        if now - self._swept < 1.0:
            return
        self._swept = now
        for channel in [c for c, at in self._touched.items() if now - at > self.history_ttl]:
            del self._touched[channel]
            self._histories.pop(channel, None)
            self._bytes.pop(channel, None)
            self._channels_of[self._started_by.pop(channel)] -= 1
            self._trimmed.pop(channel, None)
        for key in [k for k, (_, at) in self._keys.items() if now - at > self.history_ttl]:
            del self._keys[key]
            self._ids_of[key[1]] -= 1

    def start(self, deliver: Deliver, resync: Resync) -> None:
        self._deliver = deliver

    async def stop(self) -> None:
        return None

    def want(self, channel: str) -> None:
        return None

    async def ready(self, channel: str) -> None:
        return None

    def release(self, channel: str) -> None:
        return None

    async def wait_connected(self) -> None:
        return None

    async def publish(self, channel: str, head: str, subject: str, message_key: str | None) -> str:
        now = asyncio.get_running_loop().time()
        self._expire(now)
        limits = self.limits
        key = None if message_key is None else (channel, subject, message_key)
        if key is not None:
            if key in self._keys:
                return self._keys[key][0]
            if self._ids_of[subject] >= limits.publish_ids_per_subject:
                raise PublishRefused("too many publish ids of this subject await expiry")
        if channel not in self._histories:
            if len(self._histories) >= limits.history_channels:
                raise PublishRefused("too many channels have history")
            if self._channels_of[subject] >= limits.history_channels_per_subject:
                raise PublishRefused("this subject started history on too many channels")
            self._started_by[channel] = subject
            self._channels_of[subject] += 1
        self._touched[channel] = now
        self._sequence += 1
        offset = f"{self.epoch}:{int(now * 1000):013d}-{self._sequence:06d}"
        history = self._histories.setdefault(channel, deque())
        history.append((offset, head))
        held = self._bytes.get(channel, 0) + len(head.encode())
        while len(history) > self.history_size or held > limits.history_max_bytes:
            trimmed, trimmed_head = history.popleft()
            self._trimmed[channel] = trimmed
            held -= len(trimmed_head.encode())
        self._bytes[channel] = held
        if key is not None:
            self._keys[key] = (offset, now)
            self._ids_of[subject] += 1
        self.received += 1
        self._deliver(channel, offset, head + offset + FRAME_TAIL)
        return offset

    async def since(self, channel: str, offset: str | None) -> History:
        self._expire(asyncio.get_running_loop().time())
        history = self._histories.get(channel, deque())
        latest = history[-1][0] if history else ""
        if offset is None:
            return History(latest, False)
        trimmed = self._trimmed.get(channel)
        if offset == "":
            if trimmed is not None:
                return History(latest, False)
            return History(latest, True, [(o, head + o + FRAME_TAIL) for o, head in history])
        position = Position.parse(offset)
        if (
            position is None
            or position.epoch != self.epoch
            or (latest and is_after(offset, latest))
            or not latest
            or (trimmed is not None and is_after(trimmed, offset))
        ):
            return History(latest, False)
        missed = [(o, head + o + FRAME_TAIL) for o, head in history if is_after(o, offset)]
        return History(latest, True, missed)


class RedisBus(Bus):
    """One process's link to Redis: a command connection for storing and reading history and
    one pub/sub connection for the channels this process serves."""

    def __init__(self, url: str, limits: Limits, name: str) -> None:
        """
        + url: redis:// URL, password included
        + limits: what a channel's history keeps, and the bounds on what publishers store
        + name: this process in Redis's CLIENT LIST (its pub/sub connection is bus:<name>, its
          publish connection publish:<name>)
        """
        self.name = name
        self.history_size = limits.history_size
        self.history_ttl = limits.history_ttl
        self._history_max_bytes = limits.history_max_bytes
        self._page_entries = max(1, HISTORY_PAGE_BYTES // limits.max_publish_bytes)
        # STORE_AND_PUBLISH's ARGV after the frame head and the epoch, which vary.
        self._publish_limits = (
            limits.history_max_bytes,
            limits.history_channels,
            limits.history_channels_per_subject,
            limits.publish_ids_per_subject,
        )
        self.connected = False
        self.received = 0
        self._deliver: Deliver = lambda channel, offset, frame: None
        self._resync: Resync = lambda channels: None
        self._wanted: dict[str, int] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        self._release_timers: dict[str, asyncio.TimerHandle] = {}
        self._subscriber: Connection | None = None
        self._connected_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # The loop keeps only weak references to tasks: one nobody holds can be collected
        # mid-flight, and a subscription it was making would never be confirmed.
        self._background: set[asyncio.Task[None]] = set()
        # A command that meets a connection the server closed (a Redis restart) is retried
        # once on a fresh one: without this the first command after a restart fails.
        self._commands = redis.Redis.from_url(
            url,
            socket_connect_timeout=COMMAND_TIMEOUT,
            socket_timeout=COMMAND_TIMEOUT,
            retry=Retry(ExponentialBackoff(cap=0.2, base=0.02), 2),
            retry_on_error=[RedisConnectionError, RedisTimeoutError, OSError],
            health_check_interval=10,
        )
        # Every publish of this process goes out on one pipelined connection, and messages
        # arrive on another, handled as they are parsed (see pipelined.py).
        self._publishing = Link(url, f"publish:{name}", COMMAND_TIMEOUT)
        self._address = Address(url)

    def start(self, deliver: Deliver, resync: Resync) -> None:
        self._deliver = deliver
        self._resync = resync
        self._task = asyncio.create_task(self._listen_forever(), name="redis-bus")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._publishing.close()
        await self._commands.aclose()

    async def wait_connected(self) -> None:
        await self._connected_event.wait()

    @staticmethod
    def _bus_channel(channel: str) -> str:
        return f"{CHANNEL_PREFIX}{channel}"

    @staticmethod
    def _keys(channel: str) -> list[str]:
        return [f"wssfleet:history:{channel}", f"wssfleet:history-state:{channel}"]

    def want(self, channel: str) -> None:
        timer = self._release_timers.pop(channel, None)
        if timer is not None:
            timer.cancel()
        self._wanted[channel] = self._wanted.get(channel, 0) + 1
        if channel in self._confirmed:
            return
        self._confirmed[channel] = asyncio.get_running_loop().create_future()
        # Subscribed now if a connection exists; a connection made later subscribes every
        # channel in _confirmed itself.
        self._send_to_subscriber("SUBSCRIBE", self._bus_channel(channel))

    def _in_background(self, coroutine) -> None:
        task = asyncio.get_running_loop().create_task(coroutine)
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    def _send_to_subscriber(self, *command: str) -> None:
        subscriber = self._subscriber
        if subscriber is not None:
            # A connection lost meanwhile: the next one subscribes from _confirmed.
            with contextlib.suppress(LinkLost):
                subscriber.send(*command)

    async def ready(self, channel: str) -> None:
        """Wait until Redis has confirmed this process's subscription to ``channel``."""
        while True:
            confirmed = self._confirmed.get(channel)
            if confirmed is None:
                return
            try:
                await asyncio.shield(confirmed)
                return
            except BusUnavailable:
                await self.wait_connected()

    def release(self, channel: str) -> None:
        count = self._wanted.get(channel, 0) - 1
        if count > 0:
            self._wanted[channel] = count
            return
        self._wanted.pop(channel, None)
        self._unsubscribe_later(channel)

    def _unsubscribe_later(self, channel: str) -> None:
        loop = asyncio.get_running_loop()
        self._release_timers[channel] = loop.call_later(
            UNSUBSCRIBE_AFTER, lambda: self._in_background(self._unsubscribe(channel))
        )

    async def _unsubscribe(self, channel: str) -> None:
        self._release_timers.pop(channel, None)
        if channel in self._wanted:
            return
        confirmed = self._confirmed.get(channel)
        if confirmed is None:
            return
        if not confirmed.done():
            # Unsubscribing before Redis confirmed could let that late confirmation pass for
            # a later subscription's: try again once this one is settled.
            self._unsubscribe_later(channel)
            return
        del self._confirmed[channel]
        if self.connected:
            self._send_to_subscriber("UNSUBSCRIBE", self._bus_channel(channel))

    async def publish(self, channel: str, head: str, subject: str, message_key: str | None) -> str:
        keys = publish_keys(channel, subject, message_key)
        arguments = [
            self._bus_channel(channel),
            head,
            self.history_size,
            self.history_ttl,
            # Names a new history's epoch: unique enough, and no system call per message.
            f"{random.getrandbits(32):08x}",
            *self._publish_limits,
            channel,
        ]
        command = ("FCALL", "wssfleet_store_and_publish", len(keys), *keys, *arguments)
        # A second try only where it cannot store the message twice: the connection was gone
        # before the command left (Redis restarted between two publishes), or the publish
        # has an idempotency key.
        for last_try in (False, True):
            try:
                return (await self._publishing.call(*command)).decode()
            except ReplyError as error:
                if str(error).startswith("LIMIT "):
                    raise PublishRefused(str(error).removeprefix("LIMIT ")) from None
                raise BusUnavailable(_reason(error)) from None
            except LinkLost as error:
                if last_try or (error.sent and message_key is None):
                    raise BusUnavailable(_reason(error)) from None
        raise AssertionError("unreachable")

    async def since(self, channel: str, offset: str | None) -> History:
        """Read in pages of about HISTORY_PAGE_BYTES, each a command of its own, so that no
        reply is larger than that and Redis serves others between pages. A history that holds
        more than a channel may (history_max_bytes: one kept from before that bound) is not
        recovered: the client refetches its state instead of overflowing its buffer."""
        position = Position.parse(offset) if offset else None
        arguments: list[str | int]
        page = [self._page_entries, HISTORY_PAGE_BYTES]
        if offset == "":
            arguments = ["all", "", "", *page]
        elif position is None:
            # No offset, or one this service never gives: the latest only.
            arguments = ["latest", "", "", 0, 0]
        else:
            arguments = ["since", position.epoch, position.stream_id, *page]
        epoch, latest, recovered, entries, more = await self._read_page(channel, arguments)
        if offset is None or not recovered:
            return History(latest, recovered)
        missed: list[tuple[str, str]] = []
        read = 0
        while True:
            for stream_id, fields in entries:
                message_offset = offset_of(epoch, stream_id.decode())
                head = dict(zip(fields[::2], fields[1::2], strict=True))[b"f"].decode()
                read += len(head)
                missed.append((message_offset, head + message_offset + FRAME_TAIL))
            if not more:
                return History(latest, True, missed)
            if read > self._history_max_bytes or len(missed) > self.history_size:
                return History(latest, False)
            last_id = entries[-1][0].decode()
            page_epoch, _, recovered, entries, more = await self._read_page(
                channel, ["since", epoch, last_id, *page]
            )
            if not recovered or page_epoch != epoch:
                # Trimmed past where the last page ended, or a new history began: not whole.
                return History(latest, False)

    async def _read_page(
        self, channel: str, arguments: list[str | int]
    ) -> tuple[str, str, bool, list, bool]:
        """One READ_SINCE: the history's epoch, its latest offset, whether it reaches back
        to the offset asked for, up to a page of entries after it, and whether more follow."""
        try:
            epoch, last, recovered, entries, more = await asyncio.wait_for(
                self._commands.fcall_ro("wssfleet_read_since", 2, *self._keys(channel), *arguments),
                COMMAND_TIMEOUT * 2,
            )
        except (RedisError, OSError, TimeoutError) as error:
            raise BusUnavailable(_reason(error)) from None
        epoch = epoch.decode()
        latest = offset_of(epoch, last.decode()) if epoch else ""
        return epoch, latest, bool(recovered), entries, bool(more)

    async def _listen_forever(self) -> None:
        delay = 0.1
        while True:
            # No retries on this connection: a silent reconnect would skip what was published
            # meanwhile. Instead each new connection asks the hub to catch up from history.
            subscriber = None
            try:
                subscriber = await self._address.connect(f"bus:{self.name}", COMMAND_TIMEOUT)
                channels = list(self._confirmed)
                subscriber.listen(functools.partial(self._heard, resubscribed=channels))
                # One command: when the control channel is confirmed, so is every channel.
                subscriber.send(
                    "SUBSCRIBE", CONTROL_CHANNEL, *(self._bus_channel(c) for c in channels)
                )
                self._subscriber = subscriber
                await self._until_lost(subscriber)
            except (LinkLost, ReplyError) as error:
                if self.connected:
                    log.warning("redis lost: %s", error)
            finally:
                self._subscriber = None
                if self.connected:
                    delay = 0.1
                self._set_connected(False)
                if subscriber is not None:
                    subscriber.close("the bus stopped listening")
            # Full jitter keeps a fleet of processes from reconnecting in lockstep.
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, 2.0)

    async def _until_lost(self, subscriber: Connection) -> None:
        """Return when the connection is lost, or silent COMMAND_TIMEOUT past the PING that a
        silence of HEALTH_CHECK_INTERVAL brings."""
        loop = asyncio.get_running_loop()
        while True:
            silent = loop.time() - subscriber.heard
            if silent > HEALTH_CHECK_INTERVAL + COMMAND_TIMEOUT:
                log.warning("redis lost: silent for %.1f s", silent)
                return
            if silent >= HEALTH_CHECK_INTERVAL:
                with contextlib.suppress(LinkLost):
                    subscriber.send("PING")
                wait = HEALTH_CHECK_INTERVAL + COMMAND_TIMEOUT - silent
            else:
                wait = HEALTH_CHECK_INTERVAL - silent
            with contextlib.suppress(TimeoutError):
                # A little past the moment, so that the next look finds it passed.
                await asyncio.wait_for(asyncio.shield(subscriber.lost), wait + 0.05)
                log.warning("redis lost: the bus connection closed")
                return

    def _heard(self, reply: list | ReplyError, resubscribed: list[str]) -> None:
        """One push from the pub/sub connection, as it is parsed."""
        if not isinstance(reply, list):
            log.warning("redis refused a subscription: %s", reply)
            return
        kind = reply[0]
        if kind == b"message":
            self.received += 1
            offset, _, frame = reply[2].decode().partition(" ")
            self._deliver(reply[1][CHANNEL_PREFIX_LENGTH:].decode(), offset, frame)
        elif kind == b"subscribe":
            name = reply[1].decode()
            if name == CONTROL_CHANNEL:
                if resubscribed:
                    # Whatever these channels carried while the bus was away is in history.
                    self._resync(resubscribed)
                self._set_connected(True)
                return
            confirmed = self._confirmed.get(name[CHANNEL_PREFIX_LENGTH:])
            if confirmed is not None and not confirmed.done():
                confirmed.set_result(None)

    def _set_connected(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        log.info("redis %s", "connected" if connected else "disconnected")
        if connected:
            self._connected_event.set()
            return
        self._connected_event.clear()
        for channel, confirmed in list(self._confirmed.items()):
            if not confirmed.done():
                confirmed.set_exception(BusUnavailable("redis disconnected"))
                # Retrieved by whoever awaits it; marked so an unawaited one does not warn.
                confirmed.exception()
            self._confirmed[channel] = asyncio.get_running_loop().create_future()


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError | RedisTimeoutError):
        return "the message bus did not answer in time"
    if "Function not found" in str(error):
        # Loaded by the deploy: a Redis that lost it (FUNCTION FLUSH) needs a deploy.
        return "the message bus lacks wssfleet's functions (a deploy loads them)"
    return f"the message bus is unavailable ({type(error).__name__})"
