"""The bus through Redis: history in a stream per channel, delivery over pub/sub to the
processes that serve the channel, both through the functions of redis_functions.py."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import random
import sys

from wssfleet.broker import (
    FRAME_TAIL,
    Bus,
    BusUnavailable,
    Deliver,
    History,
    Limits,
    NotConfirmed,
    Position,
    PublishRefused,
    Resync,
    offset_of,
)
from wssfleet.pipelined import (
    Address,
    Link,
    LinkLost,
    ReplyError,
    RespConnection,
    raise_if_cancelled,
)
from wssfleet.redis_functions import publish_keys

log = logging.getLogger("wssfleet.broker")

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
# The longest pause between two attempts to reach Redis again. Each attempt asks the Sentinels
# where the primary is, so this is how late a process may learn of a failover's end (a
# failover takes a second or two): a handful of processes per host, each asking three
# Sentinels twice a second while Redis is away, costs the Sentinels nothing.
RECONNECT_DELAY_MAX = 0.5
# A history read answers about this many bytes at a time: as many entries as fit when each is
# as large as a publish may be, and no more bytes than this (entries stored before that bound
# may be larger). Redis reads no more than a page for it, and serves others between pages.
HISTORY_PAGE_BYTES = 256 * 2**10
# A pub/sub connection that has said nothing this long is asked for a PONG; one that stays
# silent COMMAND_TIMEOUT longer is dropped and made again.
HEALTH_CHECK_INTERVAL = 5.0
# How often a process asks the primary which replicas it has (a publish with an id waits for
# one of them while there are any) and, through Sentinels, whether it is still the primary.
PRIMARY_CHECK_INTERVAL = 1.0
# A replica counts while it acknowledged the stream this recently (replicas do every second).
# The primary itself drops a silent replica only after repl-timeout (60 s): until then every
# publish would wait for one that is gone (cut off), and be refused.
REPLICA_MAX_LAG = 2


def replication_fields(info: bytes) -> dict[str, str]:
    return dict(line.split(":", 1) for line in info.decode().splitlines() if ":" in line)


def replicas_in_step(info: bytes, caught_up_to: int = 0) -> tuple[bool, int]:
    """From INFO replication: whether the server is a primary, and how many replicas are
    online, acknowledged within REPLICA_MAX_LAG seconds and hold the primary's stream up to
    ``caught_up_to`` at least."""
    fields = replication_fields(info)
    in_step = 0
    for name, value in fields.items():
        if name.startswith("slave") and name[5:].isdigit():
            replica = dict(pair.split("=", 1) for pair in value.split(",") if "=" in pair)
            if (
                replica.get("state") == "online"
                and int(replica.get("lag", "99")) <= REPLICA_MAX_LAG
                and int(replica.get("offset", "-1")) >= caught_up_to
            ):
                in_step += 1
    return fields.get("role") == "master", in_step


class RedisBus(Bus):
    """One process's link to Redis: a command connection for storing and reading history and
    one pub/sub connection for the channels this process serves."""

    def __init__(
        self,
        url: str,
        limits: Limits,
        name: str,
        sentinels: tuple[str, ...] = (),
        primary_name: str = "wssfleet",
        replica_wait_ms: int = 1000,
        sentinel_password: str = "",
        sentinel_user: str = "",
    ) -> None:
        """
        + url: redis:// URL, password included
        + limits: what a channel's history keeps, and the bounds on what publishers store
        + name: this process in Redis's CLIENT LIST (its pub/sub connection is bus:<name>, its
          publish connection publish:<name>)
        + sentinels: host:port of the Sentinels that name the primary (none: the URL's host)
        + primary_name: the name they monitor it by
        + sentinel_password: what the Sentinels ask for (none: they ask for nothing)
        + sentinel_user: the Sentinel user that password is for (none: their default user)
        + replica_wait_ms: how long a publish with an id waits for a replica's confirmation
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
        self._publish_ids = limits.publish_ids
        self.connected = False
        # When it last connected (loop time).
        self.connected_at = 0.0
        self.received = 0
        self._deliver: Deliver = lambda channel, run: None
        self._resync: Resync = lambda channels: None
        self._wanted: dict[str, int] = {}
        self._confirmed: dict[str, asyncio.Future[None]] = {}
        # Per channel, messages heard but not yet confirmed on two nodes, in the primary's order.
        self._held: dict[str, list[tuple[str, str]]] = {}
        # Per channel, the messages of the read from Redis being handled: they go to the hub
        # as one run when the read is through (see Hub._fan_out).
        self._arrived: dict[str, list[tuple[str, str]]] = {}
        self._release_timers: dict[str, asyncio.TimerHandle] = {}
        self._subscriber: RespConnection | None = None
        self._connected_event = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        # The loop keeps only weak references to tasks: one nobody holds can be collected
        # mid-flight, and a subscription it was making would never be confirmed.
        self._background: set[asyncio.Task[None]] = set()
        self._address = Address(url, sentinels, primary_name, sentinel_password, sentinel_user)
        # Every publish of this process goes out on one pipelined connection, and messages
        # arrive on another, handled as they are parsed (see pipelined.py).
        self._publishing = Link(self._address, f"publish:{name}", COMMAND_TIMEOUT)
        # History reads on a connection of their own: a page is larger than a publish.
        self._reading = Link(self._address, f"read:{name}", COMMAND_TIMEOUT)
        # Replicas the primary had at the last look: while there is one, a publish with an id
        # is acknowledged only once one of them has it too.
        self.replicas = 0
        self._replica_wait_ms = replica_wait_ms
        # Set when a replica let a publish's WAIT run out: the primary's stream offset then.
        # No replica counts until one holds the stream that far (see _replica_missed).
        self._replicas_behind_from = 0
        self._watching: asyncio.Task[None] | None = None

    def start(self, deliver: Deliver, resync: Resync) -> None:
        self._deliver = deliver
        self._resync = resync
        self._task = asyncio.create_task(self._listen_forever(), name="redis-bus")
        self._watching = asyncio.create_task(self._watch_primary(), name="redis-primary")

    async def stop(self) -> None:
        for task in (self._task, self._watching):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._publishing.close()
        self._reading.close()

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

    def is_ready(self, channel: str) -> bool:
        confirmed = self._confirmed.get(channel)
        return (
            self.connected
            and confirmed is not None
            and confirmed.done()
            and not confirmed.cancelled()
            and confirmed.exception() is None
        )

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
        self._held.pop(channel, None)
        if self.connected:
            self._send_to_subscriber("UNSUBSCRIBE", self._bus_channel(channel))

    async def publish(self, channel: str, head: str, subject: str, message_key: str | None) -> str:
        keys = publish_keys(channel, subject, message_key)
        # Names a new history's epoch: unique enough, and no system call per message.
        epoch = f"{random.getrandbits(32):08x}"
        # A second try only where it cannot store the message twice: the connection was gone
        # before the command left (Redis restarted between two publishes), or the publish
        # has an idempotency key.
        for last_try in (False, True):
            if last_try:
                await self._count_replicas_again()
            arguments = [
                self._bus_channel(channel),
                head,
                self.history_size,
                self.history_ttl,
                epoch,
                *self._publish_limits,
                channel,
                # With a replica, subscribers hold the message until it is on two nodes: one
                # delivered and then lost with the primary would leave them ahead of it.
                "1" if self.replicas else "0",
                self._publish_ids,
            ]
            command = ("FCALL", "wssfleet_store_and_publish", len(keys), *keys, *arguments)
            try:
                if arguments[-2] == "0":
                    return (await self._publishing.call(*command)).decode()
                stored, confirmed = await self._publishing.calls(
                    command, ("WAIT", 1, self._replica_wait_ms)
                )
                offset = stored.decode()
                if confirmed < 1:
                    await self._replica_missed()
                if confirmed < 1 and message_key is not None:
                    # Still held: sent again with its id, it is confirmed then.
                    raise NotConfirmed(
                        "no replica has it yet (it may not survive the primary): send it "
                        "again, same id"
                    )
                # On two nodes (or, with no id to send it again by, as safe as it gets):
                # the subscribers' processes deliver it, and what was held before it.
                await self._publishing.call("PUBLISH", self._bus_channel(channel), "!" + offset)
                return offset
            except ReplyError as error:
                if str(error).startswith("LIMIT "):
                    raise PublishRefused(str(error).removeprefix("LIMIT ")) from None
                if str(error).startswith("READONLY"):
                    # A failover made this server a replica: the next try finds the primary.
                    self._publishing.close()
                raise BusUnavailable(_reason(error)) from None
            except LinkLost as error:
                if last_try or (error.sent and message_key is None):
                    raise BusUnavailable(_reason(error)) from None
        raise AssertionError("unreachable")

    async def _replica_missed(self) -> None:
        """No replica confirmed a publish within replica_wait_ms: it is gone (cut off, its
        host lost) or far behind. Publishes stop waiting for one now, rather than once the
        primary's own count drops it (2 to 4 s later, every publish meanwhile refused after
        waiting in vain), and until a replica holds everything the primary holds now."""
        if not self.replicas:
            return
        self.replicas = 0
        # None counts while the primary is asked how far its stream is (the primary watch
        # may look meanwhile).
        self._replicas_behind_from = sys.maxsize
        try:
            info = await self._publishing.call("INFO", "replication")
            offset = int(replication_fields(info).get("master_repl_offset", "0"))
        except (LinkLost, ReplyError):
            # Unknown: the primary's own count of its replicas decides, as it always does.
            offset = 0
        self._replicas_behind_from = offset
        log.info("redis: no replica confirmed in time; publishes do not wait for one")

    async def _count_replicas_again(self) -> None:
        """Before a publish is tried again on a new connection: the replicas counted were
        the old server's. A failover's new primary has none while the old one is away, and
        a publish that waited for one would wait redis_replica_wait_ms for nothing, then be
        refused (in the lab that cost the publishers a second after every failover). The
        new server is asked; what it cannot answer is left to the try itself."""
        with contextlib.suppress(LinkLost, ReplyError):
            info = await self._publishing.call("INFO", "replication")
            is_primary, replicas = replicas_in_step(info, self._replicas_behind_from)
            if is_primary:
                self.replicas = replicas

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
        command = ("FCALL_RO", "wssfleet_read_since", 2, *self._keys(channel), *arguments)
        # A read is safe to repeat: once more on a new connection when the first one was lost
        # (a Redis restart, a failover).
        for last_try in (False, True):
            try:
                epoch, last, recovered, entries, more = await self._reading.call(*command)
                break
            except ReplyError as error:
                raise BusUnavailable(_reason(error)) from None
            except LinkLost as error:
                if last_try:
                    raise BusUnavailable(_reason(error)) from None
        epoch = epoch.decode()
        latest = offset_of(epoch, last.decode()) if epoch else ""
        return epoch, latest, bool(recovered), entries, bool(more)

    async def _watch_primary(self) -> None:
        """Every PRIMARY_CHECK_INTERVAL: how many replicas the primary has, and whether the
        connections still reach the primary. A server a failover demoted, or one the
        Sentinels no longer name, is left: both connections are made again to the primary
        (the pub/sub one catches up from history, as after any reconnection)."""
        unanswered = False
        while True:
            await asyncio.sleep(PRIMARY_CHECK_INTERVAL)
            try:
                info = await self._publishing.call("INFO", "replication")
            except (LinkLost, ReplyError) as error:
                self.replicas = 0
                if not unanswered:
                    log.info("redis: replicas unknown (%s)", error)
                    if self._subscriber is not None:
                        # The primary does not answer (gone, or cut off): the bus is taken
                        # for lost now rather than after its own silence, so that history
                        # reads wait for the next primary instead of failing against this one.
                        self._subscriber.close("the primary does not answer")
                unanswered = True
                continue
            unanswered = False
            is_primary, replicas = replicas_in_step(info, self._replicas_behind_from)
            try:
                primary = await self._address.primary(COMMAND_TIMEOUT)
            except LinkLost as error:
                if is_primary:
                    # It answers as the primary; the Sentinels do not agree on one (mid-
                    # failover, or too few answer): stay until a majority names another.
                    log.info("redis: the primary is unconfirmed (%s)", error)
                    continue
                primary = None
            if is_primary and primary == self._address.current:
                self.replicas = replicas
                if replicas:
                    # One has caught up with what no replica confirmed.
                    self._replicas_behind_from = 0
                continue
            self.replicas = 0
            self._replicas_behind_from = 0
            named = f"{primary[0]}:{primary[1]}" if primary else "not agreed on"
            log.warning("redis: the primary is now %s; reconnecting", named)
            self._publishing.close()
            self._reading.close()
            if self._subscriber is not None:
                self._subscriber.close("the primary moved")

    async def _listen_forever(self) -> None:
        delay = 0.1
        while True:
            # No retries on this connection: a silent reconnect would skip what was published
            # meanwhile. Instead each new connection asks the hub to catch up from history.
            subscriber = None
            try:
                subscriber = await self._address.connect(f"bus:{self.name}", COMMAND_TIMEOUT)
                channels = list(self._confirmed)
                subscriber.listen(
                    functools.partial(self._heard, resubscribed=channels), self._hand_over
                )
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
                # Never confirmed on that server: what survived is read back from history.
                self._held.clear()
                self._arrived.clear()
                if self.connected:
                    delay = 0.1
                self._set_connected(False)
                if subscriber is not None:
                    subscriber.close("the bus stopped listening")
            raise_if_cancelled()
            # Full jitter keeps a fleet of processes from reconnecting in lockstep.
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, RECONNECT_DELAY_MAX)

    async def _until_lost(self, subscriber: RespConnection) -> None:
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
            channel, payload = reply[1][CHANNEL_PREFIX_LENGTH:].decode(), reply[2].decode()
            if payload.startswith("!"):
                self._release(channel, payload[1:])
                return
            offset, _, frame = payload.partition(" ")
            if offset.startswith("~"):
                held = self._held.setdefault(channel, [])
                held.append((offset[1:], frame))
                if len(held) > self.history_size:
                    # Never confirmed for this long (a replica that lags): delivered as it
                    # is rather than kept without bound.
                    self._arrive(channel, [held.pop(0)])
                return
            if channel in self._held:
                # Published without waiting (no replica left): what was held before it is
                # as safe as it will get, and goes first.
                self._release(channel, offset)
            self._arrive(channel, [(offset, frame)])
            return
        # What arrived before this push goes first (a resync starts from it).
        self._hand_over()
        if kind == b"subscribe":
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

    def _release(self, channel: str, confirmed: str) -> None:
        """Deliver the held messages of ``channel`` up to the confirmed offset: a replica has
        them all (replication keeps the primary's order). Held ones of an older history
        (another epoch) go too."""
        held = self._held.get(channel)
        if not held:
            return
        epoch = confirmed.partition(":")[0] + ":"
        count = 0
        while count < len(held) and (
            held[count][0] <= confirmed or not held[count][0].startswith(epoch)
        ):
            count += 1
        released, held[:count] = held[:count], []
        if not held:
            del self._held[channel]
        self._arrive(channel, released)

    def _arrive(self, channel: str, run: list[tuple[str, str]]) -> None:
        arrived = self._arrived.get(channel)
        if arrived is None:
            self._arrived[channel] = run
        else:
            arrived.extend(run)

    def _hand_over(self) -> None:
        """Deliver what arrived, a run a channel."""
        arrived, self._arrived = self._arrived, {}
        for channel, run in arrived.items():
            self._deliver(channel, run)

    def _set_connected(self, connected: bool) -> None:
        if connected == self.connected:
            return
        self.connected = connected
        log.info("redis %s", "connected" if connected else "disconnected")
        if connected:
            self.connected_at = asyncio.get_running_loop().time()
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
    if isinstance(error, TimeoutError):
        return "the message bus did not answer in time"
    if "Function not found" in str(error):
        # Loaded by the deploy: a Redis that lost it (FUNCTION FLUSH) needs a deploy.
        return "the message bus lacks wssfleet's functions (a deploy loads them)"
    return f"the message bus is unavailable ({type(error).__name__})"
