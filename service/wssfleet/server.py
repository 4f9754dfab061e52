"""One service process: HTTP routes, the checks before the upgrade, and the WebSocket hub.

Routes: ``GET /healthz``, ``GET /`` (demo page), ``GET /app.js``, and the WebSocket
endpoint ``/ws`` or ``/ws/<channel>``. Origin and token are checked before the upgrade,
so a refused client never holds a WebSocket.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import hmac
import json
import logging
import math
import random
import signal
import ssl
import struct
import time
from collections.abc import Callable, Coroutine
from http import HTTPStatus
from importlib import resources
from json.encoder import encode_basestring_ascii
from urllib.parse import parse_qs

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.datastructures import Headers
from websockets.exceptions import ConnectionClosed
from websockets.frames import CloseCode
from websockets.http11 import Request, Response
from websockets.protocol import State

from wssfleet import auth, metrics, protocol
from wssfleet.broker import (
    Bus,
    BusUnavailable,
    History,
    Limits,
    MemoryBus,
    PublishRefused,
    RedisBus,
    is_after,
)
from wssfleet.connection import Connection
from wssfleet.settings import ServiceConfig as Config

log = logging.getLogger("wssfleet")

CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
# A token subject already holds connections_per_subject connections on this process; like
# every 4xxx code, the client contract does not retry it.
CLOSE_TOO_MANY_CONNECTIONS = 4029
# Service Restart: the client reconnects (after a short random delay) and lands elsewhere.
CLOSE_SERVICE_RESTART = 1012
# How often a drain closes its next share of clients: fine enough that no second closes
# more than its share (most_per_second).
DRAIN_TICK = 0.05
# A client whose answers wait (publishes to a slow Redis) and that keeps sending: past this
# many queued messages its socket is not read until the queue is back down to the low mark.
INBOX_HIGH, INBOX_LOW = 16, 4
# Recoveries (subscribes with since) reading history at once in one process, and how long
# reads that fail are retried before the client hears that nothing could be recovered.
HISTORY_READS = 4
HISTORY_READ_DEADLINE = 5.0
# What the bus appends to a stored message's head: its offset (at most 80 characters) and '"}'.
MESSAGE_TAIL_BYTES = 82

STATIC = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/app.js": ("app.js", "text/javascript; charset=utf-8"),
}
PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'none'; script-src 'self'; style-src 'self' 'unsafe-inline'; "
        "connect-src 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "Cache-Control": "no-cache",
}


class AmbiguousRequest(Exception):
    """A request that repeats a header the service decides on: refused with 400."""


def single_header(headers: Headers, name: str) -> str | None:
    """A header the service decides on (Origin, Authorization): one value or none. Two are
    ambiguous, since a proxy and the service could each read another one, and are refused."""
    values = headers.get_all(name)
    if len(values) > 1:
        raise AmbiguousRequest(f"repeated {name} header")
    return values[0] if values else None


def forwarded_for(headers: Headers) -> str | None:
    """The client's address as the nearest proxy (HAProxy) saw it: the last value of the
    last X-Forwarded-For. HAProxy replaces whatever a client sent with one value of its own;
    a chain of proxies appends, and only the last one's word is not the client's."""
    values = headers.get_all("X-Forwarded-For")
    if not values:
        return None
    return values[-1].rpartition(",")[2].strip() or None


def event(name: str, **fields: object) -> None:
    """Log one structured line; callers never pass a token."""
    log.info(name, extra={"fields": fields})


def text_frame(payload: bytes) -> bytes:
    """UTF-8 ``payload`` as one unmasked WebSocket text frame (RFC 6455, 5.2: FIN and the text
    opcode, then the length in 7, 16 or 64 bits), ready for any client's socket: a fan-out
    frames a message once for all its subscribers."""
    length = len(payload)
    if length < 126:
        return bytes((0x81, length)) + payload
    if length < 2**16:
        return struct.pack("!BBH", 0x81, 126, length) + payload
    return struct.pack("!BBQ", 0x81, 127, length) + payload


def publish_key(message_id: str | int) -> str:
    """A publish id as its idempotency key names it: its JSON text, as json.dumps writes it
    (keys stored by an earlier release must still match), without json.dumps's per-call work."""
    if isinstance(message_id, str):
        return encode_basestring_ascii(message_id)
    return str(message_id)


class Client:
    """One WebSocket client: its subscriptions, its send backlog bound and rate budget.

    Frames go straight to the connection's transport, as websockets' own ``broadcast`` does,
    instead of through a queue and a writer task per client: no task switch per frame, and one
    serialized frame serves every subscriber. The transport's buffer is the backlog, bounded
    in bytes (``send_buffer_bytes``); a client that lets it grow past that is closed.
    """

    # Memory per connection is the figure that limits a worker: no per-instance __dict__.
    __slots__ = (
        "allowance",
        "answering",
        "backlog_limit",
        "channels",
        "checked",
        "closing",
        "inbox",
        "may_publish",
        "may_subscribe",
        "overflowed",
        "paused",
        "pending",
        "pinged",
        "pong",
        "rate",
        "sent_up_to",
        "stats",
        "subject",
        "transport",
        "ws",
        "ws_protocol",
    )

    def __init__(
        self, ws: Connection, grant: auth.Grant, config: Config, stats: metrics.Stats
    ) -> None:
        self.ws = ws
        # Read for every frame sent: kept here rather than looked up through ws each time.
        self.ws_protocol = ws.protocol
        self.transport = ws.transport
        self.stats = stats
        self.subject = grant.subject
        # What the token allows, or the deployment's defaults where it says nothing.
        self.may_subscribe = (
            grant.subscribe if grant.subscribe is not None else config.token_default_subscribe
        )
        self.may_publish = (
            grant.publish if grant.publish is not None else config.token_default_publish
        )
        self.channels: set[str] = set()
        # Channels being recovered: their live messages wait here until history is sent.
        self.pending: dict[str, list[tuple[str, str]]] = {}
        # After a recovery, the last offset sent per channel: the same message may still come
        # live (pub/sub can lag the history read), and is not sent twice.
        self.sent_up_to: dict[str, str] = {}
        self.backlog_limit = config.send_buffer_bytes
        # The answer being awaited (Service._answer_in_order) and the messages behind it.
        self.answering: asyncio.Task[None] | None = None
        self.inbox: collections.deque[str | bytes] | None = None
        self.paused = False
        self.overflowed = False
        self.closing: asyncio.Task[None] | None = None
        self.rate = config.messages_per_second
        self.allowance = float(config.messages_per_second)
        self.checked = time.monotonic()
        # Keepalive (Hub.keep_alive): when the last ping went out, and its pong if awaited.
        self.pinged = asyncio.get_running_loop().time()
        self.pong: asyncio.Future[float] | None = None

    def offer(self, text: str, kind: str = "message") -> None:
        """Send a frame (``kind``: its type, for the metrics)."""
        self.send_frame(text_frame(text.encode()), kind)

    def send_frame(self, frame: bytes, kind: str = "message") -> bool:
        """Write a serialized frame and count it as a ``kind``; True if it was written."""
        if self.write(frame):
            self.stats.delivered[kind] += 1
            return True
        return False

    def write(self, frame: bytes) -> bool:
        """Write a serialized frame, uncounted (a fan-out counts its frames once); a client
        that cannot keep up is closed instead of buffered. True if it was written."""
        if self.ws_protocol.state is not State.OPEN:
            return False  # closing: the close frame is the last thing it gets
        if self.overflowed:
            self.stats.drops["queue_overflow"] += 1
            return False
        transport = self.transport
        if transport.get_write_buffer_size() > self.backlog_limit:
            self.overflowed = True
            self.stats.drops["queue_overflow"] += 1
            self.stats.closes["overflow"] += 1
            event("overflow", sub=self.subject, buffered=transport.get_write_buffer_size())
            self.closing = asyncio.create_task(self.ws.close(CLOSE_POLICY, "send queue overflow"))
            return False
        transport.write(frame)
        return True

    def refuse(self, code: int, reason: str) -> None:
        """Close this client for what it sent: nothing it sent after is answered, and its
        socket is read again (a paused one could not hear the client's close frame)."""
        if self.inbox:
            self.inbox.clear()
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        self.ws.attach(_ignore)
        self.closing = asyncio.create_task(self.ws.close(code, reason))

    def reply(self, kind: str, **fields: object) -> None:
        """Send an answer of type ``kind``."""
        self.send_frame(text_frame(protocol.encode(kind, **fields)), kind)

    def take_token(self) -> bool:
        """Token bucket: ``rate`` messages a second, bursts up to one second's worth."""
        now = time.monotonic()
        self.allowance = min(self.rate, self.allowance + (now - self.checked) * self.rate)
        self.checked = now
        if self.allowance < 1:
            return False
        self.allowance -= 1
        return True


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
        limits = Limits(
            history_size=config.history_size,
            history_ttl=config.history_ttl,
            history_max_bytes=config.history_max_bytes,
            max_publish_bytes=min(config.max_publish_bytes, config.max_message_bytes),
            history_channels=config.history_channels,
            history_channels_per_subject=config.history_channels_per_subject,
            publish_ids_per_subject=config.publish_ids_per_subject,
        )
        self.bus: Bus = (
            RedisBus(config.redis_url, limits, config.worker_label)
            if config.redis_url
            else MemoryBus(limits)
        )
        self.draining: asyncio.Task[None] | None = None
        self.shedding: asyncio.Task[None] | None = None
        self._catching_up: set[asyncio.Task[None]] = set()
        self._recoveries = asyncio.Semaphore(HISTORY_READS)
        self._keeping_alive: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.bus.start(self.deliver, self.resync)
        self._keeping_alive = asyncio.get_running_loop().create_task(self.keep_alive())

    async def stop(self) -> None:
        if self._keeping_alive is not None:
            self._keeping_alive.cancel()
        await self.bus.stop()

    async def keep_alive(self) -> None:
        """One keepalive for every client instead of a task per connection (websockets'
        own): each client is pinged ``ping_interval`` after its last ping, and dropped with
        1011 when the pong has not come ``ping_timeout`` after the ping."""
        interval, timeout = self.config.ping_interval, self.config.ping_timeout
        tick = min(1.0, interval / 2, timeout / 2)
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(tick)
            now = loop.time()
            for client in tuple(self.clients):
                ws = client.ws
                if client.closing is not None or ws.protocol.state is not State.OPEN:
                    continue
                if client.pong is not None and not client.pong.done():
                    if now - client.pinged > timeout:
                        client.closing = loop.create_task(_drop_unresponsive(ws))
                    continue
                if now - client.pinged >= interval:
                    client.pinged = now
                    with contextlib.suppress(ConnectionClosed):
                        client.pong = await ws.ping()

    async def join(self, client: Client, channel: str, since: str | None) -> None:
        """Subscribe a client and answer it: from the channel's latest offset, or (``since``)
        with every message after that offset first, then the live ones, none twice."""
        if not auth.allows(client.may_subscribe, channel):
            self.stats.requests_refused["not_allowed"] += 1
            client.reply("error", reason="not allowed", channel=channel)
            return
        if channel in client.channels:
            feed = self.feeds[channel]
            client.reply("subscribed", channel=channel, offset=feed.offset or "")
            return
        if len(client.channels) >= protocol.MAX_CHANNELS_PER_CLIENT:
            self.stats.requests_refused["too_many_channels"] += 1
            client.reply("error", reason=f"at most {protocol.MAX_CHANNELS_PER_CLIENT} channels")
            return
        feed = self.feeds.get(channel)
        if feed is None:
            feed = self.feeds[channel] = Feed()
            self.bus.want(channel)
        pending: list[tuple[str, str]] = []
        client.channels.add(channel)
        client.pending[channel] = pending
        feed.members.add(client)
        history = await self._history(channel, since)
        if client.pending.get(channel) is not pending:
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
            client.reply("subscribed", channel=channel, recovered=False, offset=history.latest)
            last = history.latest
        del client.pending[channel]
        for offset, frame in pending:
            if is_after(offset, last):
                client.offer(frame)
                last = offset
        if is_after(last, feed.offset):
            client.sent_up_to[channel] = last

    async def _history(self, channel: str, since: str | None) -> History:
        """The channel's history after ``since``, once messages of the channel reach this
        process. It waits for a bus that is away (a Redis restart); reads that fail while it
        is there are retried with backoff for HISTORY_READ_DEADLINE, then the answer is that
        nothing could be recovered. Recoveries take turns: at most HISTORY_READS at once."""
        if since is None:
            return await self._read_history(channel, since)
        async with self._recoveries:
            return await self._read_history(channel, since)

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
                    failing_since = None
                    await self.bus.wait_connected()
                    continue
            now = loop.time()
            failing_since = now if failing_since is None else failing_since
            if now - failing_since >= HISTORY_READ_DEADLINE:
                self.stats.requests_refused["bus_unavailable"] += 1
                feed = self.feeds.get(channel)
                latest = feed.offset if feed is not None and feed.offset else ""
                return History(latest=latest, recovered=False)
            await asyncio.sleep(random.uniform(delay / 2, delay))
            delay = min(delay * 2, 1.0)

    def leave(self, client: Client, channel: str) -> None:
        client.channels.discard(channel)
        client.pending.pop(channel, None)
        client.sent_up_to.pop(channel, None)
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
        ids = {} if request.id is None else {"id": request.id}
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
            client.reply("error", reason=f"not published: {error}", **ids)
            return
        except PublishRefused as error:
            self.stats.requests_refused["limit"] += 1
            client.reply("error", reason=f"not published: {error}", channel=channel, **ids)
            return
        if request.id is not None:
            client.reply("published", id=request.id, offset=offset)

    def deliver(self, channel: str, offset: str, frame: str) -> None:
        feed = self.feeds.get(channel)
        if feed is None:
            return
        if feed.buffer is not None:
            feed.buffer.append((offset, frame))
            return
        self._fan_out(feed, channel, offset, frame)

    def _fan_out(self, feed: Feed, channel: str, offset: str, frame: str) -> None:
        if not is_after(offset, feed.offset):
            return  # delivered already: a catch-up read overlapped the live messages
        feed.offset = offset
        serialized = text_frame(frame.encode())
        written = 0
        for client in tuple(feed.members):
            if client.pending:
                pending = client.pending.get(channel)
                if pending is not None:
                    pending.append((offset, frame))
                    continue
            if client.sent_up_to:
                sent = client.sent_up_to.get(channel)
                if sent is not None:
                    if not is_after(offset, sent):
                        continue
                    del client.sent_up_to[channel]
            if client.write(serialized):
                written += 1
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
        history = await self._history(channel, feed.offset) if feed.offset else None
        buffered, feed.buffer = feed.buffer or [], None
        if self.feeds.get(channel) is not feed:
            return
        if history is not None and history.recovered:
            for offset, frame in history.missed:
                self._fan_out(feed, channel, offset, frame)
        elif history is not None:
            # The history no longer reaches back to what this process last delivered: say so
            # to every live client, which refetches its state, as after its own subscribe.
            latest = history.latest
            notice = text_frame(
                protocol.encode("subscribed", channel=channel, recovered=False, offset=latest)
            )
            for client in feed.members:
                if channel not in client.pending:
                    client.send_frame(notice, "subscribed")
            feed.offset = history.latest
            self.stats.history_lost += 1
            event("history lost", channel=channel, worker=self.config.worker_label)
        for offset, frame in buffered:
            self._fan_out(feed, channel, offset, frame)

    def gauges(self) -> dict[str, float]:
        """The live figures the metrics report beside the counters."""
        return {
            "connections": len(self.clients),
            "channels": len(self.feeds),
            "bus_connected": 1 if not self.config.redis_url or self.bus.connected else 0,
            "bus_messages": self.bus.received,
            "draining": 1 if self.draining is not None else 0,
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
        event("drain", clients=len(clients), seconds=seconds, worker=self.config.worker_label)
        busiest = await self._close_paced(clients, seconds, "drain")
        latecomers = [client for client in self.clients if client.closing is None]
        for latecomer in latecomers:
            self._restart_close(latecomer, "drain")
        event(
            "drained",
            clients=len(clients),
            latecomers=len(latecomers),
            busiest_second=busiest,
            worker=self.config.worker_label,
        )

    async def shed(self, count: int, seconds: float) -> None:
        """Close ``count`` clients with 1012 over ``seconds``, so that they reconnect to
        emptier instances (the master's rebalancer asks)."""
        clients = [client for client in self.clients if client.closing is None]
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
        if client.closing is None:
            self.stats.closes[reason] += 1
            client.closing = asyncio.create_task(
                client.ws.close(CLOSE_SERVICE_RESTART, "service restart: reconnect")
            )


def most_per_second(count: int, seconds: float) -> int:
    """The most closes a paced drain of ``count`` clients over ``seconds`` makes in any one
    second: its even share, rounded up, plus one for where a second's edge falls."""
    return math.ceil(count / seconds) + 1 if seconds > 0 else count


async def paced(count: int, seconds: float, act: Callable[[int], None]) -> list[float]:
    """Call ``act(0)`` .. ``act(count - 1)`` evenly over ``seconds`` and return when each
    ran. The even schedule alone would catch up in a burst after the event loop stalls
    (a busy second of handshakes); a sliding one-second window holds every second to
    ``most_per_second`` instead, and the pace runs late rather than herd. It returns no
    sooner than ``seconds``, so that whoever waits for it gets the whole window."""
    loop = asyncio.get_running_loop()
    started = loop.time()
    limit = most_per_second(count, seconds)
    moments: list[float] = []
    while True:
        elapsed = loop.time() - started
        due = count if elapsed >= seconds else math.floor(count * elapsed / seconds)
        while len(moments) < due:
            now = loop.time()
            if len(moments) >= limit and now - moments[-limit] < 1.0:
                break
            act(len(moments))
            moments.append(now)
        if elapsed >= seconds and len(moments) == count:
            return moments
        await asyncio.sleep(DRAIN_TICK)


def busiest_second(moments: list[float]) -> int:
    """The most of these (sorted) moments that fall in any one-second window."""
    busiest, first = 0, 0
    for last, moment in enumerate(moments):
        while moment - moments[first] >= 1.0:
            first += 1
        busiest = max(busiest, last - first + 1)
    return busiest


class Service:
    """The routes and the handler of one process, bound to its Config and Hub."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.hub = Hub(config)
        self.static = {
            path: (resources.files("wssfleet.static").joinpath(name).read_bytes(), kind)
            for path, (name, kind) in STATIC.items()
        }

    def process_request(self, connection: Connection, request: Request) -> Response | None:
        # Routed on the exact path as sent: urlsplit would read '//x/healthz' as a host
        # and the path '/healthz', a route HAProxy never lets clients reach.
        path, _, query = request.path.partition("?")
        if path == "/healthz":
            return self._respond(
                connection,
                HTTPStatus.OK,
                json.dumps(self.hub.health()).encode(),
                "application/json",
            )
        if path == "/internal/shed":
            return self._shed(connection, request, query)
        if path in self.static:
            body, kind = self.static[path]
            return self._respond(connection, HTTPStatus.OK, body, kind, PAGE_HEADERS)
        channel = self._endpoint_channel(path)
        if channel is None:
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        if channel and not protocol.valid_channel(channel):
            self.hub.stats.handshakes_refused["request"] += 1
            return connection.respond(HTTPStatus.NOT_FOUND, protocol.CHANNEL_RULE + "\n")
        try:
            origin = single_header(request.headers, "Origin")
            credential = self._token(request, query)
        except AmbiguousRequest as error:
            self.hub.stats.handshakes_refused["request"] += 1
            return self._refuse(connection, request, HTTPStatus.BAD_REQUEST, str(error))
        if origin is not None and origin.rstrip("/") not in self.config.allowed_origins:
            self.hub.stats.handshakes_refused["origin"] += 1
            return self._refuse(connection, request, HTTPStatus.FORBIDDEN, "origin not allowed")
        try:
            grant = auth.verify(
                self.config.jwt_secret.get_secret_value(),
                credential,
                previous=self._previous_key(),
                max_ttl=self.config.token_max_ttl,
            )
        except auth.TokenError as error:
            self.hub.stats.handshakes_refused["token"] += 1
            response = self._refuse(connection, request, HTTPStatus.UNAUTHORIZED, str(error))
            response.headers["WWW-Authenticate"] = 'Bearer realm="wssfleet"'
            return response
        since = parse_qs(query, keep_blank_values=True).get("since", [None])[0]
        if since is not None and len(since) > protocol.MAX_OFFSET_CHARACTERS:
            self.hub.stats.handshakes_refused["request"] += 1
            return connection.respond(HTTPStatus.BAD_REQUEST, "since is too long\n")
        connection.grant = grant
        connection.first_channel = channel
        connection.since = since
        return None

    def _previous_key(self) -> str:
        """The signing key before the last rotation, while its overlap lasts: it ends at
        jwt_previous_until whether or not a deploy comes to drop the key."""
        until = self.config.jwt_previous_until
        if until and time.time() >= until:
            return ""
        return self.config.jwt_previous_secret.get_secret_value()

    def _shed(self, connection: ServerConnection, request: Request, query: str) -> Response:
        """GET /internal/shed?count=N&seconds=S, for the master's rebalancer only: it presents
        the deployment's internal key. HAProxy refuses /internal/ to clients besides, and
        whatever it forwards carries X-Forwarded-For; either way the path does not exist."""
        key = self.config.internal_key.get_secret_value()
        try:
            presented = single_header(request.headers, "Authorization") or ""
        except AmbiguousRequest:
            presented = ""
        if (
            not key
            or "X-Forwarded-For" in request.headers
            or not hmac.compare_digest(presented.encode(), f"Bearer {key}".encode())
        ):
            return connection.respond(HTTPStatus.NOT_FOUND, "not found\n")
        arguments = parse_qs(query)
        try:
            count = int(arguments["count"][0])
            seconds = float(arguments.get("seconds", ["1"])[0])
            if not (1 <= count <= 1_000_000 and 0.1 <= seconds <= 600):
                raise ValueError
        except (KeyError, ValueError):
            return connection.respond(
                HTTPStatus.BAD_REQUEST, "give count=1..1000000 and seconds=0.1..600\n"
            )
        if self.hub.shedding is not None and not self.hub.shedding.done():
            return connection.respond(HTTPStatus.CONFLICT, "already shedding\n")
        self.hub.shedding = asyncio.get_running_loop().create_task(self.hub.shed(count, seconds))
        body = json.dumps({"shedding": min(count, len(self.hub.clients))}).encode()
        return self._respond(connection, HTTPStatus.ACCEPTED, body, "application/json")

    async def handle(self, ws: Connection) -> None:
        grant = ws.grant
        assert grant is not None  # process_request set it, or there was no upgrade
        subject = grant.subject
        subjects = self.hub.subjects
        if subjects[subject] >= self.config.connections_per_subject:
            self.hub.stats.handshakes_refused["subject_connections"] += 1
            event("reject", reason="too many connections", sub=subject, peer=self._peer(ws))
            await ws.close(CLOSE_TOO_MANY_CONNECTIONS, "too many connections for this subject")
            return
        client = Client(ws, grant, self.config, self.hub.stats)
        first_channel = ws.first_channel
        # Counted only inside the block that uncounts it: whatever fails, nothing leaks.
        self.hub.clients.add(client)
        subjects[subject] += 1
        try:
            self.hub.stats.connections_opened += 1
            event("connect", sub=subject, peer=self._peer(ws), channels=[first_channel])
            client.reply(
                "welcome",
                worker=self.config.worker_label,
                channels=[first_channel] if first_channel else [],
                sub=subject,
            )
            if first_channel:
                # Frames that come meanwhile are answered after this join, in order.
                join = self.hub.join(client, first_channel, ws.since)
                client.answering = asyncio.create_task(self._answer_in_order(client, join))
            ws.attach(lambda message: self._read(client, message))
            await ws.wait_closed()
            answering = client.answering
            if answering is not None:
                # Nobody is left to hear the answer: a join still reading history, or a
                # publish waiting on Redis, stops here instead of holding the handler.
                answering.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await answering
        finally:
            self.hub.remove(client)
            subjects[subject] -= 1
            if not subjects[subject]:
                del subjects[subject]
            code = self._close_code(ws)
            if code == CLOSE_TOO_BIG:
                self.hub.stats.drops["too_big"] += 1
            event("disconnect", sub=subject, peer=self._peer(ws), code=code)

    def _read(self, client: Client, message: str | bytes) -> None:
        """Answer one message of a client as it is parsed, unless an earlier one still waits
        for its answer: then it queues behind it, and a long queue stops reading the socket
        (as websockets' own receive queue would)."""
        if client.answering is not None:
            if client.inbox is None:
                client.inbox = collections.deque()
            client.inbox.append(message)
            if len(client.inbox) > INBOX_HIGH and not client.paused:
                client.paused = True
                client.transport.pause_reading()
            return
        try:
            waiting = self._answer(client, message)
        except Exception:
            self._fail_internal(client)
            return
        if waiting is not None:
            client.answering = asyncio.create_task(self._answer_in_order(client, waiting))

    async def _answer_in_order(
        self, client: Client, waiting: Coroutine[None, None, None] | None
    ) -> None:
        """Finish the answer that waits (a publish, a join), then answer what queued behind
        it, one at a time."""
        try:
            while True:
                if waiting is not None:
                    await waiting
                inbox = client.inbox
                if not inbox:
                    return
                message = inbox.popleft()
                if client.paused and len(inbox) <= INBOX_LOW:
                    client.paused = False
                    client.transport.resume_reading()
                waiting = self._answer(client, message)
        except Exception:
            self._fail_internal(client)
        finally:
            client.answering = None

    def _fail_internal(self, client: Client) -> None:
        """A bug in answering one client closes that client with 1011 and nobody else."""
        log.exception("answering %s failed", client.subject)
        client.refuse(CloseCode.INTERNAL_ERROR, "")

    def _answer(self, client: Client, message: str | bytes) -> Coroutine[None, None, None] | None:
        """Answer one message, or return what has to be awaited to answer it (a publish is
        answered once stored, a subscribe after its recovery)."""
        if isinstance(message, bytes):
            self.hub.stats.drops["unsupported"] += 1
            client.refuse(CLOSE_UNSUPPORTED, "binary frames are not supported")
            return None
        try:
            request = protocol.parse(message)
        except protocol.ProtocolError as error:
            request = None
            problem = str(error)
        stats = self.hub.stats
        stats.received["invalid" if request is None else request.type] += 1
        if not client.take_token():
            stats.drops["rate_limit"] += 1
            ids = {} if request is None or request.id is None else {"id": request.id}
            client.reply("error", reason="rate limited: message dropped", **ids)
            return None
        if request is None:
            client.reply("error", reason=problem)
            return None
        if request.type == "echo":
            client.reply("echo", data=request.data)
        elif request.type == "subscribe":
            assert request.channel is not None
            return self.hub.join(client, request.channel, request.since)
        elif request.type == "unsubscribe":
            assert request.channel is not None
            self.hub.leave(client, request.channel)
            client.reply("unsubscribed", channel=request.channel)
        else:
            return self.hub.publish(client, request)
        return None

    @staticmethod
    def _endpoint_channel(path: str) -> str | None:
        """'' for /ws, the channel for /ws/<channel>, None for any other path."""
        if path == "/ws":
            return ""
        if path.startswith("/ws/"):
            return path[len("/ws/") :]
        return None

    @staticmethod
    def _token(request: Request, query: str) -> str | None:
        header = single_header(request.headers, "Authorization") or ""
        if header.lower().startswith("bearer "):
            return header[len("bearer ") :].strip()
        values = parse_qs(query).get("token")
        return values[0] if values else None

    @staticmethod
    def _respond(
        connection: ServerConnection,
        status: HTTPStatus,
        body: bytes,
        kind: str,
        extra: dict[str, str] | None = None,
    ) -> Response:
        response = connection.respond(status, "")
        response.body = body
        for name, value in {
            "Content-Type": kind,
            "Content-Length": str(len(body)),
            **(extra or {}),
        }.items():
            if name in response.headers:
                del response.headers[name]
            response.headers[name] = value
        return response

    def _refuse(
        self, connection: ServerConnection, request: Request, status: HTTPStatus, reason: str
    ) -> Response:
        event(
            "reject",
            status=status.value,
            reason=reason,
            path=request.path.partition("?")[0],
            peer=self._peer(connection, request.headers),
        )
        return connection.respond(status, reason + "\n")

    @staticmethod
    def _peer(connection: ServerConnection, headers: Headers | None = None) -> str:
        headers = headers if headers is not None else getattr(connection.request, "headers", None)
        forwarded = forwarded_for(headers) if headers is not None else None
        address = connection.remote_address
        direct = f"{address[0]}:{address[1]}" if address else "?"
        return f"{forwarded} via {direct}" if forwarded else direct

    @staticmethod
    def _close_code(ws: ServerConnection) -> int | None:
        sent, received = ws.protocol.close_sent, ws.protocol.close_rcvd
        frame = sent or received
        return frame.code if frame is not None else 1006


async def run(config: Config, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then close every client with 1001 and return."""
    service = Service(config)
    service.hub.start()
    async with (
        serve(
            service.handle,
            config.bind,
            config.port,
            process_request=service.process_request,
            compression=None,
            max_size=config.max_message_bytes,
            create_connection=Connection,
            ping_interval=None,  # Hub.keep_alive pings every client
            close_timeout=min(config.shutdown_timeout, 10.0),
            server_header="wssfleet",
            ssl=_tls_context(config),
        ) as server,
        contextlib.AsyncExitStack() as listeners,
    ):
        if config.metrics_port is not None:
            await listeners.enter_async_context(
                serve(
                    _never_upgraded,
                    config.bind,
                    config.metrics_port,
                    process_request=metrics.responder(
                        metrics.registry(service.hub.stats, service.hub.gauges)
                    ),
                    server_header="wssfleet",
                )
            )
        _stop_on_signals(server, service.hub)
        event(
            "listening",
            bind=config.bind,
            port=config.port,
            metrics_port=config.metrics_port,
            worker=config.worker_label,
            redis="configured" if config.redis_url else "disabled",
        )
        if ready is not None:
            ready.set()
        await server.wait_closed()
    await service.hub.stop()
    event("stopped", worker=config.worker_label)


def _tls_context(config: Config) -> ssl.SSLContext | None:
    """TLS for the service port when the deployment encrypts traffic between its hosts."""
    if not config.tls_certificate_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_certificate_file, config.tls_key_file)
    return context


async def _drop_unresponsive(ws: ServerConnection) -> None:
    """Close a client whose pong is late with 1011 and hang up at once, as websockets'
    keepalive does: a peer that does not answer pings will not answer a close either."""
    with contextlib.suppress(ConnectionClosed):
        async with ws.send_context():
            ws.protocol.fail(CloseCode.INTERNAL_ERROR, "keepalive ping timeout")


def _ignore(message: str | bytes) -> None:
    """The reader of a client being closed for what it sent: what follows is not answered."""


async def _never_upgraded(ws: ServerConnection) -> None:
    """The metrics listener answers every request before an upgrade could happen."""
    await ws.close(CLOSE_POLICY, "metrics only")


def _stop_on_signals(server: Server, hub: Hub) -> None:
    """SIGTERM and SIGINT: close every client with 1001 at once and stop. SIGUSR1: drain
    (the rollout asks for it before a planned restart)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, server.close)

    def drain() -> None:
        if hub.draining is None:
            hub.draining = asyncio.create_task(hub.drain())

    loop.add_signal_handler(signal.SIGUSR1, drain)
