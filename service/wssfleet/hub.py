"""Every client of one process by channel, and the bus that stores and carries their
messages: joins with recovery, publishes, fan-out, keepalive, drain and shed."""

from __future__ import annotations

import asyncio
import collections
import random
import time
from collections.abc import Coroutine
from json.encoder import encode_basestring_ascii

from wssfleet import auth, metrics, protocol
from wssfleet.broker import (
    Bus,
    BusUnavailable,
    History,
    Limits,
    NotConfirmed,
    PublishRefused,
    is_after,
)
from wssfleet.client import Client, text_frame
from wssfleet.config import ServiceConfig as Config
from wssfleet.events import event
from wssfleet.memory_broker import MemoryBus
from wssfleet.pacing import busiest_second, paced
from wssfleet.protocol import CLOSE_INTERNAL_ERROR, CLOSE_SERVICE_RESTART, CLOSE_TOKEN_EXPIRED
from wssfleet.redis_broker import RedisBus
from wssfleet.turns import Turns

# History reads (joins of a channel not live here, recoveries, catch-ups) at once in one
# process, shared in turn between subjects; and how long reads that fail while the bus is
# connected are retried before the client hears that nothing could be recovered (time the
# bus spends away, a failover, does not count).
HISTORY_READS = 4
HISTORY_READ_DEADLINE = 15.0
# Whose turn a catch-up after a reconnection takes: no token's subject has this form.
CATCH_UP = "\x00catch-up"
# What the bus appends to a stored message's head: its offset (at most 80 characters) and '"}'.
MESSAGE_TAIL_BYTES = 82


def publish_key(message_id: str | int) -> str:
    """A publish id as its idempotency key names it: its JSON text, as json.dumps writes it
    (keys stored by an earlier release must still match), without json.dumps's per-call work."""
    if isinstance(message_id, str):
        return encode_basestring_ascii(message_id)
    return str(message_id)


class Feed:
    """One channel as this process serves it: its clients and the last offset delivered."""

    def __init__(self) -> None:
        self.members: set[Client] = set()
        self.offset: str | None = None
        # Messages that arrive while the feed catches up on what a bus outage skipped.
        self.buffer: list[tuple[str, str]] | None = None


class Hub:
    """Every client of this process, by channel, and the bus that stores and carries their
    messages."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.stats = metrics.Stats()
        self.clients: set[Client] = set()
        # Open connections by token subject, bounded by connections_per_subject.
        self.subjects: collections.Counter[str] = collections.Counter()
        self.feeds: dict[str, Feed] = {}
        # When the keepalive last looked: the time a new client counts as last pinged (one
        # float that every client opened since shares).
        self.ticked = 0.0
        limits = Limits(
            history_size=config.history_size,
            history_ttl=config.history_ttl,
            history_max_bytes=config.history_max_bytes,
            max_publish_bytes=min(config.max_publish_bytes, config.max_message_bytes),
            history_channels=config.history_channels,
            history_channels_per_subject=config.history_channels_per_subject,
            publish_ids_per_subject=config.publish_ids_per_subject,
            publish_ids=config.publish_ids,
        )
        self.bus: Bus = (
            RedisBus(
                config.redis_url,
                limits,
                config.worker_label,
                sentinels=config.redis_sentinels,
                primary_name=config.redis_primary_name,
                sentinel_user=config.redis_sentinel_user,
                sentinel_password=config.redis_sentinel_password,
                replica_wait_ms=config.redis_replica_wait_ms,
            )
            if config.redis_url
            else MemoryBus(limits)
        )
        self.draining: asyncio.Task[None] | None = None
        self.shedding: asyncio.Task[None] | None = None
        self._catching_up: set[asyncio.Task[None]] = set()
        self.reads = Turns(HISTORY_READS)
        # Channel: the read of its latest offset the joins without since share.
        self._latest_reads: dict[str, asyncio.Future[History]] = {}
        self._keeping_alive: asyncio.Task[None] | None = None
        self._beating: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.bus.start(self.deliver, self.resync)
        loop = asyncio.get_running_loop()
        self.ticked = loop.time()
        self._keeping_alive = loop.create_task(self.keep_alive())
        self._beating = loop.create_task(self.heartbeat())

    async def stop(self) -> None:
        for task in (self._keeping_alive, self._beating):
            if task is not None:
                task.cancel()
        await self.bus.stop()

    async def heartbeat(self) -> None:
        """A frame browsers can see, to every client that was sent nothing for
        ``heartbeat_interval``: a client whose path died (its master vanished, a NAT forgot
        it) hears nothing, and the contract reconnects it. WebSocket pings do not reach a
        browser's code. Two looks per interval: a client written to since the last look is
        skipped, so busy clients cost nothing and none waits longer than the interval."""
        frame = text_frame(protocol.encode("heartbeat"))
        half = self.config.heartbeat_interval / 2
        while True:
            await asyncio.sleep(half)
            beats = 0
            for client in tuple(self.clients):
                if client.spoke:
                    client.spoke = False
                elif client.write(frame):
                    beats += 1
            self.stats.delivered["heartbeat"] += beats

    async def keep_alive(self) -> None:
        """One keepalive for every client instead of a timer per connection: each client is
        pinged ``ping_interval`` after its last ping, and dropped with 1011 when the pong has
        not come ``ping_timeout`` after the ping."""
        interval, timeout = self.config.ping_interval, self.config.ping_timeout
        tick = min(1.0, interval / 2, timeout / 2)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = self.ticked = loop.time()
            wall = time.time()
            for client in tuple(self.clients):
                if client.closing:
                    continue
                if client.expires <= wall:
                    # Its token's grants end here: a client that wants to stay sends a fresher
                    # token before (refresh), as the shipped clients do.
                    self.stats.closes["token_expired"] += 1
                    event("token_expired", sub=client.subject)
                    client.refuse(CLOSE_TOKEN_EXPIRED, "token expired")
                    continue
                if client.pong_due:
                    if now - client.pinged > timeout:
                        # A peer that does not answer pings will not answer a close either.
                        client.hang_up(CLOSE_INTERNAL_ERROR, "keepalive ping timeout")
                    continue
                if now - client.pinged >= interval:
                    client.pinged = now
                    client.pong_due = True
                    # Written without waiting: a peer whose path is dead stops reading, and
                    # its ping then times out like a lost pong.
                    client.ws.send_ping()

    def join(
        self,
        client: Client,
        channel: str,
        since: str | None,
        request_id: str | int | None = None,
    ) -> Coroutine[None, None, None] | None:
        """Subscribe a client and answer it: from the channel's latest offset, or (``since``)
        with every message after that offset first, then the live ones, none twice. What has
        to be awaited for that (a history read), or None: answered at once. A refusal names
        the channel, and the request's id when it had one."""
        if not auth.allows(client.may_subscribe, channel):
            self.stats.requests_refused["not_allowed"] += 1
            client.reply("error", reason="not allowed", channel=channel, **_named(request_id))
            return None
        if channel in client.channels:
            feed = self.feeds[channel]
            client.reply("subscribed", channel=channel, offset=feed.offset or "")
            return None
        if len(client.channels) >= protocol.MAX_CHANNELS_PER_CLIENT:
            self.stats.requests_refused["too_many_channels"] += 1
            client.reply(
                "error",
                reason=f"at most {protocol.MAX_CHANNELS_PER_CLIENT} channels",
                channel=channel,
                **_named(request_id),
            )
            return None
        feed = self.feeds.get(channel)
        if (
            since is None
            and feed is not None
            and feed.offset is not None
            and feed.buffer is None
            and self.bus.is_ready(channel)
        ):
            # The channel is live here: the last offset this process delivered is where the
            # client begins, and whatever Redis holds past it is on its way to every member,
            # this client included. No history read, so a reconnect storm costs Redis nothing.
            client.add_channel(channel)
            feed.members.add(client)
            self.stats.joined_live += 1
            client.reply("subscribed", channel=channel, offset=feed.offset)
            return None
        if feed is None:
            feed = self.feeds[channel] = Feed()
            self.bus.want(channel)
        client.add_channel(channel)
        pending = client.recovering(channel)
        feed.members.add(client)
        return self._join_from_history(client, channel, since, feed, pending)

    async def _join_from_history(
        self,
        client: Client,
        channel: str,
        since: str | None,
        feed: Feed,
        pending: list[tuple[str, str]],
    ) -> None:
        history = await self._history(channel, since, client.subject)
        if client.waiting(channel) is not pending:
            return  # unsubscribed or gone meanwhile
        if feed.offset is None:
            feed.offset = history.latest
        if since is None:
            client.reply("subscribed", channel=channel, offset=history.latest)
            last = history.latest
        elif history.recovered:
            self.stats.recoveries["recovered"] += 1
            self.stats.recovered_messages += len(history.missed)
            client.reply("subscribed", channel=channel, recovered=True, missed=len(history.missed))
            for _, frame in history.missed:
                client.offer(frame)
            last = history.missed[-1][0] if history.missed else since
        else:
            self.stats.recoveries["not_recovered"] += 1
            # Said to the client as a gap it reloads over: the operator hears where from.
            event(
                "history not recovered",
                channel=channel,
                sub=client.subject,
                since=since,
                latest=history.latest,
                worker=self.config.worker_label,
            )
            client.reply("subscribed", channel=channel, recovered=False, offset=history.latest)
            last = history.latest
        client.settled(channel)
        for offset, frame in pending:
            if is_after(offset, last):
                client.offer(frame)
                last = offset
        if is_after(last, feed.offset):
            client.recovered_up_to(channel, last)

    async def _history(self, channel: str, since: str | None, subject: str) -> History:
        """The channel's history after ``since``, once messages of the channel reach this
        process. It waits for a bus that is away (a Redis restart); reads that fail while it
        is there are retried with backoff for HISTORY_READ_DEADLINE, then the answer is that
        nothing could be recovered. Reads take turns: at most HISTORY_READS at once, one
        subject after another, so one subject's backlog does not hold up the others."""
        await self.bus.ready(channel)  # waiting for the bus holds no turn
        if since is not None:
            return await self._read_in_turn(channel, since, subject)
        # A join without since wants the latest offset only: the joins of a channel waiting
        # at once share one read (a wave of clients joining one channel costs Redis one read,
        # and the turns hold one waiter, not one per client). A read begun before a client
        # joined is as good: what arrives after it reaches the client live.
        shared = self._latest_reads.get(channel)
        if shared is None:
            shared = asyncio.ensure_future(self._read_in_turn(channel, None, subject))
            self._latest_reads[channel] = shared
            shared.add_done_callback(lambda done: self._forget_latest_read(channel, done))
        # Shielded: a client that leaves does not cancel the others' read.
        return await asyncio.shield(shared)

    async def _read_in_turn(self, channel: str, since: str | None, subject: str) -> History:
        async with self.reads.turn(subject):
            return await self._read_history(channel, since)

    def _forget_latest_read(self, channel: str, done: asyncio.Future[History]) -> None:
        if self._latest_reads.get(channel) is done:
            del self._latest_reads[channel]

    async def _read_history(self, channel: str, since: str | None) -> History:
        loop = asyncio.get_running_loop()
        failing_since: float | None = None
        delay = 0.05
        while True:
            try:
                await self.bus.ready(channel)
                return await self.bus.since(channel, since)
            except BusUnavailable:
                if not self.bus.connected:
                    await self.bus.wait_connected()
                    continue
            now = loop.time()
            if failing_since is None or failing_since < self.bus.connected_at:
                # Failures since the bus last connected only: the failover in between (which
                # ready() may have waited out) is not the read's fault.
                failing_since = now
            if now - failing_since >= HISTORY_READ_DEADLINE:
                self.stats.requests_refused["bus_unavailable"] += 1
                event(
                    "history unreadable",
                    channel=channel,
                    seconds=HISTORY_READ_DEADLINE,
                    worker=self.config.worker_label,
                )
                feed = self.feeds.get(channel)
                latest = feed.offset if feed is not None and feed.offset else ""
                return History(latest=latest, recovered=False)
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, 1.0)

    def leave(self, client: Client, channel: str) -> None:
        client.drop_channel(channel)
        feed = self.feeds.get(channel)
        if feed is not None:
            feed.members.discard(client)
            if not feed.members:
                del self.feeds[channel]
                self.bus.release(channel)

    def remove(self, client: Client) -> None:
        for channel in list(client.channels):
            self.leave(client, channel)
        self.clients.discard(client)

    async def publish(self, client: Client, request: protocol.Request) -> None:
        """Store and carry a client's message. With an ``id`` the client hears when it is
        stored (and a retry with the same id is stored once); a failure is always said."""
        channel = request.channel
        assert channel is not None
        key = None if request.id is None else publish_key(request.id)
        ids = _named(request.id)
        if not auth.allows(client.may_publish, channel):
            self.stats.requests_refused["not_allowed"] += 1
            client.reply("error", reason="not allowed", channel=channel, **ids)
            return
        head = protocol.message_head(channel, request.data, client.subject)
        size = len(head) if head.isascii() else len(head.encode())
        if size + MESSAGE_TAIL_BYTES > self.config.max_publish_bytes:
            # Echo may be larger (max_message_bytes): what is stored for everyone is bounded.
            self.stats.requests_refused["too_big"] += 1
            reason = f"not published: over max_publish_bytes={self.config.max_publish_bytes}"
            client.reply("error", reason=reason, channel=channel, **ids)
            return
        try:
            offset = await self.bus.publish(channel, head, client.subject, key)
        except BusUnavailable as error:
            self.stats.requests_refused["bus_unavailable"] += 1
            client.reply(
                "error", reason=f"not published: {error}", channel=channel, retry=True, **ids
            )
            return
        except PublishRefused as error:
            self.stats.requests_refused["limit"] += 1
            client.reply("error", reason=f"not published: {error}", channel=channel, **ids)
            return
        except NotConfirmed as error:
            self.stats.requests_refused["not_confirmed"] += 1
            client.reply(
                "error", reason=f"not confirmed: {error}", channel=channel, retry=True, **ids
            )
            return
        if request.id is not None:
            client.reply("published", id=request.id, offset=offset)

    def deliver(self, channel: str, run: list[tuple[str, str]]) -> None:
        feed = self.feeds.get(channel)
        if feed is None:
            return
        if feed.buffer is not None:
            feed.buffer.extend(run)
            return
        self._fan_out(feed, channel, run)

    def _fan_out(self, feed: Feed, channel: str, run: list[tuple[str, str]]) -> None:
        """Write a run of the channel's messages, in order, to every member: each client's
        share in one write. Under load one read from the bus holds several messages, and one
        write a client instead of one a message spares this process, HAProxy and the client
        a system call and a TLS record each."""
        fresh = []
        last = feed.offset
        for message in run:
            # A catch-up read may overlap the live messages: what was delivered is skipped.
            if is_after(message[0], last):
                fresh.append(message)
                last = message[0]
        if not fresh:
            return
        feed.offset = last
        frames = [text_frame(frame.encode()) for _, frame in fresh]
        joined = frames[0] if len(frames) == 1 else b"".join(frames)
        count = len(frames)
        written = 0
        for client in tuple(feed.members):
            if client.pending is None and client.sent_up_to is None:
                if client.write(joined):
                    written += count
                continue
            start = client.first_owed(channel, fresh)
            if start < count and client.write(b"".join(frames[start:])):
                written += count - start
        self.stats.delivered["message"] += written

    def resync(self, channels: list[str]) -> None:
        """The bus is back after an outage: catch each served channel up from history."""
        for channel in channels:
            feed = self.feeds.get(channel)
            if feed is None or feed.buffer is not None:
                continue
            feed.buffer = []
            task = asyncio.get_running_loop().create_task(self._catch_up(channel, feed))
            self._catching_up.add(task)
            task.add_done_callback(self._catching_up.discard)

    async def _catch_up(self, channel: str, feed: Feed) -> None:
        history = await self._history(channel, feed.offset, CATCH_UP) if feed.offset else None
        buffered, feed.buffer = feed.buffer or [], None
        if self.feeds.get(channel) is not feed:
            return
        if history is not None and history.recovered:
            self._fan_out(feed, channel, history.missed)
        elif history is not None:
            # The history no longer reaches back to what this process last delivered: say so
            # to every live client, which refetches its state, as after its own subscribe.
            latest = history.latest
            notice = text_frame(
                protocol.encode("subscribed", channel=channel, recovered=False, offset=latest)
            )
            for client in feed.members:
                if client.waiting(channel) is None:
                    client.send_frame(notice, "subscribed")
            feed.offset = history.latest
            self.stats.history_lost += 1
            event("history lost", channel=channel, worker=self.config.worker_label)
        self._fan_out(feed, channel, buffered)

    def gauges(self) -> dict[str, float]:
        """The live figures the metrics report beside the counters."""
        return {
            "connections": len(self.clients),
            "channels": len(self.feeds),
            "bus_connected": 1 if not self.config.redis_url or self.bus.connected else 0,
            "bus_messages": self.bus.received,
            "draining": 1 if self.draining is not None else 0,
            "history_reads_waiting": self.reads.waiting,
        }

    def health(self) -> dict[str, object]:
        if not self.config.redis_url:
            redis_state = "disabled"
        else:
            redis_state = "connected" if self.bus.connected else "disconnected"
        return {
            "status": "ok" if redis_state != "disconnected" else "degraded",
            "redis": redis_state,
            "worker": self.config.worker_label,
            "connections": len(self.clients),
            "channels": len(self.feeds),
            "bus_messages": self.bus.received,
            "draining": self.draining is not None,
        }

    async def drain(self) -> None:
        """Close every client with 1012 at an even pace over ``drain_seconds``, so that their
        reconnections reach the other instances as a trickle, not a herd. Clients that
        arrived meanwhile are closed at the end of the window."""
        seconds = self.config.drain_seconds
        clients = list(self.clients)
        # The masters' canaries are probes, not a crowd to pace: closed at once, they stay
        # away while this process drains and restarts (hostside/canary.py), so a drain
        # waits for no one but clients.
        canaries = [c for c in clients if c.may_subscribe == auth.CANARY_CHANNELS]
        for canary in canaries:
            self._restart_close(canary, "drain")
        clients = [c for c in clients if c.may_subscribe != auth.CANARY_CHANNELS]
        event("drain", clients=len(clients), seconds=seconds, worker=self.config.worker_label)
        busiest = await self._close_paced(clients, seconds, "drain")
        latecomers = [client for client in self.clients if not client.closing]
        for latecomer in latecomers:
            self._restart_close(latecomer, "drain")
        event(
            "drained",
            clients=len(clients),
            latecomers=len(latecomers),
            busiest_second=busiest,
            worker=self.config.worker_label,
        )

    def clients_via(self, address: str) -> list[Client]:
        """The clients whose connection comes from ``address`` (the master that proxies
        them)."""
        return [
            client
            for client in self.clients
            if (client.transport.get_extra_info("peername") or ("",))[0] == address
        ]

    async def shed(self, count: int, seconds: float, among: list[Client] | None = None) -> None:
        """Close ``count`` clients (of ``among``, else any) with 1012 over ``seconds``, so
        that they reconnect elsewhere: to emptier instances (the rebalancer asks), or through
        another master (a planned move of the front door)."""
        clients = [c for c in (self.clients if among is None else among) if not c.closing]
        random.shuffle(clients)
        busiest = await self._close_paced(clients[:count], seconds, "rebalance")
        event("shed", clients=min(count, len(clients)), busiest_second=busiest)

    async def _close_paced(self, clients: list[Client], seconds: float, reason: str) -> int:
        """Close these clients with 1012 evenly over ``seconds`` (``reason``: drain or
        rebalance); returns the most closed in any one second."""
        moments = await paced(
            len(clients), seconds, lambda index: self._restart_close(clients[index], reason)
        )
        return busiest_second(moments)

    def _restart_close(self, client: Client, reason: str) -> None:
        if not client.closing:
            self.stats.closes[reason] += 1
            client.close(CLOSE_SERVICE_RESTART, "service restart: reconnect")


def _named(request_id: str | int | None) -> dict[str, str | int]:
    """The fields that name the request an answer is for: its id, when it had one."""
    return {} if request_id is None else {"id": request_id}
