"""One service process: its hub and routes, the dispatch of each client's messages, and
the listeners (the service port, the metrics port) until a signal stops it.

Routes: ``GET /healthz``, ``GET /`` (demo page), ``GET /app.js``, and the WebSocket
endpoint ``/ws`` or ``/ws/<channel>`` (routes.py).
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import signal
import ssl
from collections.abc import Coroutine

from websockets.asyncio.server import Server, ServerConnection, serve
from websockets.frames import CloseCode

from wssfleet import metrics, protocol
from wssfleet.client import Client
from wssfleet.config import ServiceConfig as Config
from wssfleet.connection import Connection
from wssfleet.events import event, log
from wssfleet.hub import Hub
from wssfleet.protocol import (
    CLOSE_POLICY,
    CLOSE_TOO_BIG,
    CLOSE_TOO_MANY_CONNECTIONS,
    CLOSE_UNSUPPORTED,
)
from wssfleet.routes import Routes, peer

# A client whose answers wait (publishes to a slow Redis) and that keeps sending: past this
# many queued messages its socket is not read until the queue is back down to the low mark.
INBOX_HIGH, INBOX_LOW = 16, 4


class Service:
    """The handler of one process's WebSockets, bound to its Config, Hub and Routes."""

    def __init__(self, config: Config) -> None:
        self.config = config
        self.hub = Hub(config)
        self.routes = Routes(config, self.hub)

    async def handle(self, ws: Connection) -> None:
        grant = ws.grant
        assert grant is not None  # process_request set it, or there was no upgrade
        subject = grant.subject
        subjects = self.hub.subjects
        if subjects[subject] >= self.config.connections_per_subject:
            self.hub.stats.handshakes_refused["subject_connections"] += 1
            event("reject", reason="too many connections", sub=subject, peer=peer(ws))
            await ws.close(CLOSE_TOO_MANY_CONNECTIONS, "too many connections for this subject")
            return
        client = Client(ws, grant, self.config, self.hub.stats)
        first_channel = ws.first_channel
        # Counted only inside the block that uncounts it: whatever fails, nothing leaks.
        self.hub.clients.add(client)
        subjects[subject] += 1
        try:
            self.hub.stats.connections_opened += 1
            event("connect", sub=subject, peer=peer(ws), channels=[first_channel])
            client.reply(
                "welcome",
                worker=self.config.worker_label,
                channels=[first_channel] if first_channel else [],
                sub=subject,
                heartbeat=self.config.heartbeat_interval,
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
            event("disconnect", sub=subject, peer=peer(ws), code=code)

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
    def _close_code(ws: ServerConnection) -> int | None:
        sent, received = ws.protocol.close_sent, ws.protocol.close_rcvd
        frame = sent or received
        return frame.code if frame is not None else 1006


async def serve_until_stopped(config: Config, ready: asyncio.Event | None = None) -> None:
    """Serve until SIGTERM or SIGINT, then close every client with 1001 and return."""
    service = Service(config)
    service.hub.start()
    async with (
        serve(
            service.handle,
            config.bind,
            config.port,
            process_request=service.routes.process_request,
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
                    # A scraper's kept-alive connection must not hold a stopping process for
                    # the library's default 10 s (each instance of a rollout would wait).
                    close_timeout=1.0,
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
