"""One service process: its hub and routes, the dispatch of each client's messages, and
the listeners (the service port, the metrics port) until a signal stops it.

Routes: ``GET /healthz``, ``GET /`` (demo page), ``GET /app.js``, and the WebSocket
endpoint ``/ws`` or ``/ws/<channel>`` (routes.py).
"""

from __future__ import annotations

import asyncio
import collections
import logging
import signal
import ssl
from collections.abc import Callable, Coroutine

from picows import WSAutoPingStrategy, WSUpgradeRequest
from picows.picows import WSProtocol

from wssfleet import auth, metrics, protocol
from wssfleet.client import PAUSED_FOR_ANSWERS, Client
from wssfleet.config import ServiceConfig as Config
from wssfleet.connection import Upgrade
from wssfleet.events import event, log
from wssfleet.hub import Hub
from wssfleet.protocol import (
    CLOSE_GOING_AWAY,
    CLOSE_INTERNAL_ERROR,
    CLOSE_TOO_BIG,
    CLOSE_TOO_MANY_CONNECTIONS,
    CLOSE_UNSUPPORTED,
)
from wssfleet.routes import Address, Answer, Routes

# A client whose answers wait (publishes to a slow Redis) and that keeps sending: past this
# many queued messages its socket is not read until the queue is back down to the low mark.
INBOX_HIGH, INBOX_LOW = 16, 4
# A client has this long to send its upgrade request after connecting (websockets' default).
HANDSHAKE_SECONDS = 10.0
# Each connection's read buffer starts this small (picows' least) and doubles as frames
# need: memory per idle connection is what limits a worker (picows' default is 16 KiB).
READ_BUFFER_BYTES = 2048
# Connections the kernel queues for accept: a reconnect storm opens thousands within a second,
# and asyncio's default of 100 drops the SYNs past it, each retried a second later or more
# (HAProxy's connect then waits). The kernel caps it at net.core.somaxconn (4096 on Debian).
LISTEN_BACKLOG = 4096
# What picows logs goes through an adapter, not a Logger: given a Logger, picows makes a
# child Logger for every connection (memory per connection, and work per handshake).
PICOWS_LOG = logging.LoggerAdapter(logging.getLogger("picows.server"))


class Service:
    """The handler of one process's WebSockets, bound to its Config, Hub and Routes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.hub = Hub(config)
        self.routes = Routes(config, self.hub)

    def route(self, request: WSUpgradeRequest, address: Address) -> Answer:
        return self.routes.route(self, request, address)

    def opened(self, client: Client, upgrade: Upgrade) -> None:
        subject = client.subject
        subjects = self.hub.subjects
        if subjects[subject] >= self.config.connections_per_subject:
            self.hub.stats.handshakes_refused["subject_connections"] += 1
            event("reject", reason="too many connections", sub=subject, peer=upgrade.peer)
            client.refused = True
            client.close(CLOSE_TOO_MANY_CONNECTIONS, "too many connections for this subject")
            return
        client.pinged = self.hub.ticked
        client.counted = True
        self.hub.clients.add(client)
        subjects[subject] += 1
        self.hub.stats.connections_opened += 1
        first_channel = upgrade.first_channel
        event("connect", sub=subject, peer=upgrade.peer, channels=[first_channel])
        client.reply(
            "welcome",
            worker=self.config.worker_label,
            channels=[first_channel] if first_channel else [],
            sub=subject,
            heartbeat=self.config.heartbeat_interval,
            expires=int(client.expires),
        )
        if first_channel:
            # Frames that come meanwhile are answered after this join, in order.
            join = self.hub.join(client, first_channel, upgrade.since)
            if join is not None:
                client.answering = asyncio.create_task(self._answer_in_order(client, join))

    def closed(self, client: Client) -> None:
        if not client.counted:
            return
        client.counted = False
        answering = client.answering
        if answering is not None:
            # Nobody is left to hear the answer: a join still reading history, or a publish
            # waiting on Redis, stops here.
            answering.cancel()
        self.hub.remove(client)
        subject = client.subject
        subjects = self.hub.subjects
        subjects[subject] -= 1
        if not subjects[subject]:
            del subjects[subject]
        code = client.close_code
        if code == CLOSE_TOO_BIG:
            self.hub.stats.drops["too_big"] += 1
        event("disconnect", sub=subject, peer=client.peer, code=code)

    def received(self, client: Client, message: str | bytes) -> None:
        """Answer one message of a client as it is parsed, unless an earlier one still waits
        for its answer: then it queues behind it, and a long queue stops reading the socket."""
        if client.refused:
            return
        if client.answering is not None:
            if client.inbox is None:
                client.inbox = collections.deque()
            client.inbox.append(message)
            if len(client.inbox) > INBOX_HIGH:
                client.hold(PAUSED_FOR_ANSWERS)
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
                if len(inbox) <= INBOX_LOW:
                    client.release(PAUSED_FOR_ANSWERS)
                waiting = self._answer(client, message)
        except Exception:
            self._fail_internal(client)
        finally:
            client.answering = None

    def _fail_internal(self, client: Client) -> None:
        """A bug in answering one client closes that client with 1011 and nobody else."""
        log.exception("answering %s failed", client.subject)
        client.refuse(CLOSE_INTERNAL_ERROR, "")

    def _answer(self, client: Client, message: str | bytes) -> Coroutine[None, None, None] | None:
        """Answer one message, or return what has to be awaited to answer it (a publish is
        answered once stored, a subscribe after its recovery)."""
        if isinstance(message, bytes):
            self.hub.stats.drops["unsupported"] += 1
            client.refuse(CLOSE_UNSUPPORTED, "binary frames are not supported")
            return None
        stats = self.hub.stats
        # The rate limit comes before the JSON is parsed: a client over it costs no parse (so
        # its error cannot name the request: docs/protocol.md).
        if not client.take_token():
            stats.drops["rate_limit"] += 1
            client.reply("error", reason="rate limited: message dropped")
            return None
        if not message:
            # A client's path probe (docs/protocol.md): it makes a path that went dead answer
            # with a reset. Counted against the rate above; nothing to parse or answer.
            return None
        try:
            request = protocol.parse(message)
        except protocol.ProtocolError as error:
            stats.received["invalid"] += 1
            ids = {} if error.id is None else {"id": error.id}
            client.reply("error", reason=str(error), **ids)
            return None
        stats.received[request.type] += 1
        if request.type == "echo":
            client.reply("echo", data=request.data)
        elif request.type == "subscribe":
            assert request.channel is not None
            return self.hub.join(client, request.channel, request.since, request.id)
        elif request.type == "unsubscribe":
            assert request.channel is not None
            self.hub.leave(client, request.channel)
            client.reply("unsubscribed", channel=request.channel)
        elif request.type == "refresh":
            self._refresh(client, request)
        else:
            return self.hub.publish(client, request)
        return None

    def _refresh(self, client: Client, request: protocol.Request) -> None:
        """A fresher token for the same subject: the connection lives on to its expiry, with
        its grants. Channels it no longer grants are left, each with an unsubscribed."""
        ids = {} if request.id is None else {"id": request.id}
        try:
            grant = self.routes.verify(request.data)
        except auth.TokenError as error:
            self.hub.stats.requests_refused["token"] += 1
            client.reply("error", reason=f"refresh refused: {error}", **ids)
            return
        if grant.subject != client.subject:
            self.hub.stats.requests_refused["token"] += 1
            client.reply("error", reason="refresh refused: the token is for another subject", **ids)
            return
        client.granted(grant, self.config)
        for channel in [c for c in client.channels if not auth.allows(client.may_subscribe, c)]:
            self.hub.leave(client, channel)
            client.reply("unsubscribed", channel=channel, reason="not allowed")
        event("refresh", sub=client.subject, expires=int(grant.expires))
        client.reply("refreshed", expires=int(grant.expires), **ids)


async def serve_until_stopped(config: Config, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then close every client with 1001 and return."""
    service = Service(config)
    service.hub.start()
    loop = asyncio.get_running_loop()
    route = service.route  # one bound method for every connection, not one each
    server = await loop.create_server(
        lambda: RoutedProtocol(route, config.max_message_bytes),
        config.bind,
        config.port,
        ssl=_tls_context(config),
        backlog=LISTEN_BACKLOG,
    )
    metrics_server = None
    if config.metrics_port is not None:
        respond = metrics.responder(metrics.registry(service.hub.stats, service.hub.gauges))
        metrics_server = await loop.create_server(
            lambda: RoutedProtocol(
                lambda request, address: respond(request), config.max_message_bytes
            ),
            config.bind,
            config.metrics_port,
        )
    stopping = asyncio.Event()
    _stop_on_signals(stopping, service.hub)
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
    await stopping.wait()
    server.close()
    if metrics_server is not None:
        metrics_server.close()
    await _close_every_client(service.hub)
    await service.hub.stop()
    event("stopped", worker=config.worker_label)


async def _close_every_client(hub: Hub) -> None:
    """Close every client with 1001 and wait until each has answered or been dropped (each
    connection drops its peer ``close_timeout`` after its close frame)."""
    clients = list(hub.clients)
    for client in clients:
        client.close(CLOSE_GOING_AWAY, "")
    await asyncio.gather(
        *(client.ws.wait_disconnected() for client in clients), return_exceptions=True
    )


# The one HTTP/1.0 request a process answers (RoutedProtocol): a load balancer's health check.
HEALTH_CHECK_HTTP10 = b"GET /healthz HTTP/1.0\r\n"


class RoutedProtocol(WSProtocol):
    """picows' server protocol, with the peer's address known to the router: picows gives
    its listener factory only the request.

    It also bounds the read buffer. picows doubles a connection's buffer whenever one read
    leaves it over 90 % full, and never shrinks it: a client that keeps sending small frames
    faster than one read takes grew it to 4 MiB. Here a read brings at most what keeps the
    buffer under that mark, unless the frame being read already fills it: the buffer grows
    only for a frame that needs the room (at most max_message_bytes and its header, so at
    most about twice that). ``read_size`` follows picows' own size (2.3.1's rule, which
    tests/unit/test_hostile_frames.py checks through the process's memory).

    And it answers a health check in HTTP/1.0, which picows refuses with 400: HAProxy's
    default ``option httpchk`` sends ``GET /healthz HTTP/1.0`` (no Host), so a load balancer
    configured the common way would mark every instance down. Only that exact request line is
    read as HTTP/1.1 (same length, mended in place before picows parses it) and answered like
    any /healthz; any other HTTP/1.0 request, an upgrade included, is still refused (RFC 6455
    asks for HTTP/1.1)."""

    __slots__ = ("address", "first_read", "held", "read_size", "router")

    def __init__(
        self,
        router: Callable[[WSUpgradeRequest, Address], Answer],
        max_frame_size: int,
    ) -> None:
        self.router = router
        self.address: Address = None
        super().__init__(
            None,  # host and port: a client's
            None,  # path: a client's
            False,  # the server side
            self._route,
            PICOWS_LOG,
            True,  # a failure in our listener closes that connection with 1011
            HANDSHAKE_SECONDS,
            False,  # no auto ping: Hub.keep_alive pings every client
            20.0,
            20.0,
            WSAutoPingStrategy.PING_WHEN_IDLE,
            False,  # pings are answered by Connection.on_ping, within the client's bounds
            max_frame_size,
            None,  # extra headers: a client's
            READ_BUFFER_BYTES,
        )

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.address = transport.get_extra_info("peername")
        self.read_size = self.held = 0
        self.first_read = None
        super().connection_made(transport)

    def get_buffer(self, size_hint: int) -> memoryview:
        view = super().get_buffer(size_hint)
        if self.address is not None and self.held == 0:
            # Before the request is routed, its first read: it starts the buffer.
            self.first_read = view
        free = len(view)
        size = self.read_size
        if not size:
            size = self.read_size = free  # the first read: nothing is held yet
        held = self.held = size - free
        room = min(size * 9 // 10, size - 257) - held
        return view[:room] if room > 0 else view

    def buffer_updated(self, nbytes: int) -> None:
        if self.first_read is not None:
            first, self.first_read = self.first_read, None
            length = len(HEALTH_CHECK_HTTP10)
            if nbytes >= length and first[:length] == HEALTH_CHECK_HTTP10:
                first[length - 5 : length - 2] = b"1.1"
        filled, size = self.held + nbytes, self.read_size
        if 100 * filled >= 91 * size or size - filled <= 256:
            self.read_size = size * 2
        super().buffer_updated(nbytes)

    def _route(self, request: WSUpgradeRequest) -> Answer:
        # The address is the router's alone: an open connection does not keep it.
        address, self.address = self.address, None
        return self.router(request, address)


def _tls_context(config: Config) -> ssl.SSLContext | None:
    """TLS for the service port when the deployment encrypts traffic between its hosts."""
    if not config.tls_certificate_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.tls_certificate_file, config.tls_key_file)
    return context


def _stop_on_signals(stopping: asyncio.Event, hub: Hub) -> None:
    """SIGTERM and SIGINT: close every client with 1001 at once and stop. SIGUSR1: drain
    (the rollout asks for it before a planned restart)."""
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stopping.set)

    def drain() -> None:
        if hub.draining is None:
            hub.draining = asyncio.create_task(hub.drain())

    loop.add_signal_handler(signal.SIGUSR1, drain)
