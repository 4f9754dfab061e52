"""wssfleet's client contract for asyncio applications.

A ``Client`` keeps one WebSocket to the fleet open for as long as it is used, and does what
the contract asks so that deploys, renewals and lost hosts go unnoticed:

- closed with 1001 or 1006 (a restart, a lost path): reconnect after a random delay in
  [0, first_delay] s; with 1012 (a drain, a rebalance, a planned move of the front door: the
  fleet paces those closes itself) after one in [0, restart_delay] s; a failed attempt: wait a
  random delay in
  [0, min(backoff_max, backoff_base * 2**n)] s; with several URLs (DNS mode: every master's
  address), each attempt tries the next;
- closed with 1008 or a 4xxx code, or a handshake answered 401 or 403: stop, and say why
  (``ClientClosed``);
- nothing heard for the welcome's ``heartbeat`` + ``heartbeat_grace`` s: the path is dead
  (a master gone); drop it and reconnect as after 1006;
- the socket's TCP keepalive probes an idle path every ``path_probe`` s (the master's kernel
  answers them: no frame, nothing for the fleet to process). After the front door moved,
  the new holder answers a probe with a reset, so the client learns at once; a path that
  answers nothing is dead after two probes unanswered. Either way: reconnect as after 1006;
- subscriptions come back with ``since`` = the last offset received: nothing published
  meanwhile is missed, nothing is delivered twice;
- a publish carries an id and is sent again, same id, until the fleet acknowledges it
  (after an error reply that says ``retry``, on each new connection, and after
  ``reply_timeout`` s without an answer); the fleet stores it once. A publish refused for
  good (not allowed, too large, over a limit) fails at once with ``PublishRefused``;
- a subscribe refused (not allowed, too many channels) ends its subscription with
  ``SubscriptionRefused``;
- with ``token`` a function: the token is renewed over the open connection before it expires
  (``refresh_before`` s ahead, at most half its remaining life), and a connection closed
  with 4001 (token expired) reconnects with a new one. With a fixed token, 4001 stops.

    async with Client("wss://ws.example.com/ws", token=fetch_token) as client:
        async with client.subscribe("lobby") as lobby:
            offset = await client.publish("lobby", {"text": "hello"})
            async for message in lobby:
                print(message.sender, message.data)

``token`` is a string or a function (plain or async) asked again for each connection, so an
application's backend can hand out short-lived tokens (docs/tokens.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import json
import random
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import ConnectionClosed, InvalidHandshake, InvalidStatus

RETRY_AFTER = frozenset({1001, 1006, 1012})
# The fleet spreads its 1012 closes over time itself (drain_seconds, rebalance_rate): a short
# delay of the client's own is enough, and keeps it without a connection well under a second.
SERVICE_RESTART = 1012
# The token expired on the open connection: a new one reconnects (when one can be asked for).
TOKEN_EXPIRED = 4001
REFRESH_ID = "refresh"
SUBSCRIBE_ID = "subscribe:"
# A refresh the fleet refused is tried again this much later, while the token lasts.
REFRESH_RETRY_SECONDS = 5.0
# Handshakes refused for who the client is, not for a passing trouble: not retried.
REFUSED_STATUSES = frozenset({401, 403})
# Keepalive probes a path may leave unanswered before it counts as dead (probe_path).
PROBES_UNANSWERED = 2

Token = str | Callable[[], str] | Callable[[], Awaitable[str]]


def probe_path(sock: socket.socket | None, every: float) -> None:
    """TCP keepalive on ``sock``: a probe after ``every`` s without a packet, then every
    ``every`` s; two unanswered (or a reset) end the connection. Unacknowledged data ends it
    as soon (TCP_USER_TIMEOUT): a publish sent into a dead path is not retransmitted for
    minutes. Where the platform has no such options, the heartbeat alone decides."""
    if sock is None or sock.type != socket.SOCK_STREAM:
        return
    seconds = max(1, round(every))
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    for option, value in (
        ("TCP_KEEPIDLE", seconds),
        ("TCP_KEEPINTVL", seconds),
        ("TCP_KEEPCNT", PROBES_UNANSWERED),
        ("TCP_USER_TIMEOUT", 1000 * seconds * (1 + PROBES_UNANSWERED)),
    ):
        if hasattr(socket, option):
            sock.setsockopt(socket.IPPROTO_TCP, getattr(socket, option), value)


class ClientClosed(Exception):
    """The fleet closed the connection for good (1008, a 4xxx code, a refused token), or the
    client was closed: what waits on it gets this."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(f"{code} {reason}".strip())
        self.code = code
        self.reason = reason


class PublishRefused(Exception):
    """The fleet refused a publish for good (not allowed, too large, over a limit): sending it
    again would be refused again. ``reason`` is the fleet's."""

    def __init__(self, channel: str, reason: str) -> None:
        super().__init__(f"{channel}: {reason}")
        self.channel = channel
        self.reason = reason


class SubscriptionRefused(PublishRefused):
    """The fleet refused a subscribe (not allowed, too many channels)."""


@dataclass(frozen=True)
class Message:
    """One message of a subscription, in the order the channel carried them. ``gap`` is True
    for a marker instead: the history no longer held what was missed while disconnected
    (reload the application's state)."""

    channel: str
    data: Any = None
    sender: str = ""
    offset: str = ""
    gap: bool = False


class Subscription:
    """The messages of one channel: ``async for message in subscription``."""

    def __init__(self, client: Client, channel: str) -> None:
        self.client = client
        self.channel = channel
        # The last offset received: a new connection asks for what came after it.
        self.offset: str | None = None
        self._queue: asyncio.Queue[Message | ClientClosed | SubscriptionRefused] = asyncio.Queue()

    def __aiter__(self) -> AsyncIterator[Message]:
        return self

    async def __anext__(self) -> Message:
        item = await self._queue.get()
        if isinstance(item, ClientClosed):
            raise StopAsyncIteration
        if isinstance(item, SubscriptionRefused):
            raise item
        return item

    async def get(self, timeout: float | None = None) -> Message:
        """The next message (TimeoutError after ``timeout`` s; ClientClosed when the client
        closed; SubscriptionRefused when the fleet refused the subscribe)."""
        item = await asyncio.wait_for(self._queue.get(), timeout)
        if isinstance(item, ClientClosed | SubscriptionRefused):
            raise item
        return item

    async def __aenter__(self) -> Subscription:
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.client.unsubscribe(self.channel)

    def _deliver(self, frame: dict) -> None:
        offset = frame.get("offset", "")
        if offset and offset == self.offset:
            return  # already delivered (a resubscription's overlap)
        self.offset = offset or self.offset
        self._queue.put_nowait(
            Message(self.channel, frame.get("data"), frame.get("from", ""), offset)
        )


@dataclass
class _Publish:
    channel: str
    data: Any
    acknowledged: asyncio.Future[str]
    sent_at: float | None = None


class Client:
    """One contract-following connection to the fleet; see the module's documentation."""

    def __init__(
        self,
        url: str | list[str],
        token: Token,
        *,
        ssl: Any = None,
        first_delay: float = 1.0,
        restart_delay: float = 0.25,
        backoff_base: float = 0.5,
        backoff_max: float = 10.0,
        heartbeat_grace: float = 5.0,
        path_probe: float | None = 1.0,
        reply_timeout: float = 10.0,
        open_timeout: float = 15.0,
        refresh_before: float = 30.0,
        on_event: Callable[[str, dict], None] | None = None,
        **connect_options: Any,
    ) -> None:
        self.urls = [url] if isinstance(url, str) else list(url)
        self.token = token
        self.first_delay = first_delay
        self.restart_delay = restart_delay
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.heartbeat_grace = heartbeat_grace
        self.path_probe = path_probe
        self.reply_timeout = reply_timeout
        self.open_timeout = open_timeout
        self.refresh_before = refresh_before
        # When (loop time) the open connection's token is renewed; None: not now.
        self._refresh_at: float | None = None
        # ("connected", welcome), ("closed", {"code", "reason"}), ("refused", {"error"}).
        self.on_event = on_event or (lambda _kind, _detail: None)
        self._connect_options = {"ssl": ssl, **connect_options} if ssl else connect_options
        self._subscriptions: dict[str, Subscription] = {}
        self._publishes: dict[str, _Publish] = {}
        self._ws: ClientConnection | None = None
        self._next_url = 0
        self._closed: ClientClosed | None = None
        self._stop = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._writes: set[asyncio.Future[None]] = set()

    async def __aenter__(self) -> Client:
        self.start()
        return self

    async def __aexit__(self, *_exc: object) -> None:
        await self.close()

    def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run())

    @property
    def connected(self) -> bool:
        return self._ws is not None

    def subscribe(self, channel: str) -> Subscription:
        """Subscribe now and on every later connection, from where it left off."""
        subscription = self._subscriptions.get(channel)
        if subscription is None:
            subscription = self._subscriptions[channel] = Subscription(self, channel)
            self._send({"type": "subscribe", "channel": channel, "id": SUBSCRIBE_ID + channel})
        return subscription

    async def unsubscribe(self, channel: str) -> None:
        if self._subscriptions.pop(channel, None) is not None:
            self._send({"type": "unsubscribe", "channel": channel})

    async def publish(self, channel: str, data: Any, id: str | None = None) -> str:
        """Publish and wait until the fleet has stored it; its offset. Sent again, same id,
        until then (stored once)."""
        if self._closed is not None:
            raise self._closed
        message_id = id or uuid.uuid4().hex
        entry = self._publishes.get(message_id)
        if entry is None:
            future = asyncio.get_running_loop().create_future()
            entry = self._publishes[message_id] = _Publish(channel, data, future)
            self._send_publish(message_id, entry)
        return await asyncio.shield(entry.acknowledged)

    async def close(self) -> None:
        self._stop.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        self._finish(ClientClosed(1000, "closed by the application"))

    # The connection loop.

    async def _run(self) -> None:
        failures = 0
        while not self._stop.is_set():
            try:
                ws, welcome = await self._open()
            except InvalidStatus as error:
                status = error.response.status_code
                self.on_event("refused", {"error": f"HTTP {status}"})
                if status in REFUSED_STATUSES:
                    self._finish(ClientClosed(4000 + status, f"handshake refused: HTTP {status}"))
                    return
                failures += 1
                await self._pause(self._backoff(failures))
                continue
            except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as error:
                self.on_event("refused", {"error": f"{type(error).__name__}: {error}"})
                failures += 1
                await self._pause(self._backoff(failures))
                continue
            failures = 0
            code, reason = await self._use(ws, welcome)
            self.on_event("closed", {"code": code, "reason": reason})
            if self._stop.is_set():
                return
            renewable = code == TOKEN_EXPIRED and callable(self.token)
            if code not in RETRY_AFTER and not renewable:
                self._finish(ClientClosed(code, reason))
                return
            delay = self.restart_delay if code == SERVICE_RESTART else self.first_delay
            await self._pause(random.uniform(0, delay))

    async def _open(self) -> tuple[ClientConnection, dict]:
        url = self.urls[self._next_url % len(self.urls)]
        self._next_url += 1
        token = self.token() if callable(self.token) else self.token
        if inspect.isawaitable(token):
            token = await token
        joiner = "&" if "?" in url else "?"
        ws = await connect(
            f"{url}{joiner}token={quote(str(token), safe='')}",
            open_timeout=self.open_timeout,
            ping_interval=None,  # the server's heartbeat says whether the path is alive
            **self._connect_options,
        )
        if self.path_probe:
            probe_path(ws.transport.get_extra_info("socket"), self.path_probe)
        try:
            welcome = json.loads(await asyncio.wait_for(ws.recv(), self.open_timeout))
        except BaseException:
            ws.transport.abort()
            raise
        return ws, welcome

    async def _use(self, ws: ClientConnection, welcome: dict) -> tuple[int, str]:
        """Use one connection until it closes (or is dropped as dead); its close code."""
        loop = asyncio.get_running_loop()
        self._ws = ws
        self.on_event("connected", welcome)
        heartbeat = welcome.get("heartbeat")
        silence = heartbeat + self.heartbeat_grace if heartbeat else None
        self._refresh_at = self._refresh_time(welcome.get("expires"))
        refreshing: asyncio.Task[None] | None = None
        for subscription in self._subscriptions.values():
            frame = {
                "type": "subscribe",
                "channel": subscription.channel,
                "id": SUBSCRIBE_ID + subscription.channel,
            }
            if subscription.offset is not None:
                frame["since"] = subscription.offset
            self._send(frame)
        for message_id, entry in self._publishes.items():
            self._send_publish(message_id, entry)
        stopping = asyncio.ensure_future(self._stop.wait())
        try:
            while True:
                waits = [silence] if silence else []
                sent = [e.sent_at for e in self._publishes.values() if e.sent_at is not None]
                if sent:
                    waits.append(min(sent) + self.reply_timeout - loop.time())
                if self._refresh_at is not None:
                    if self._refresh_at <= loop.time():
                        self._refresh_at = None
                        refreshing = asyncio.ensure_future(self._refresh())
                    else:
                        waits.append(self._refresh_at - loop.time())
                receiving = asyncio.ensure_future(ws.recv())
                done, _ = await asyncio.wait(
                    {receiving, stopping},
                    timeout=max(0.0, min(waits)) if waits else None,
                    return_when=asyncio.FIRST_COMPLETED,
                )
                if stopping in done:
                    receiving.cancel()
                    await ws.close()
                    return 1000, "closed by the application"
                if receiving not in done:
                    receiving.cancel()
                    # Nothing heard, or a publish unanswered: a dead path answers nothing.
                    overdue = sent and min(sent) + self.reply_timeout <= loop.time()
                    if self._refresh_at is not None and self._refresh_at <= loop.time():
                        continue  # the token's turn, not silence
                    if overdue or silence:
                        ws.transport.abort()
                        return 1006, "nothing heard: the connection is dead"
                    continue
                try:
                    self._heard(json.loads(receiving.result()))
                except ConnectionClosed:
                    received = ws.protocol.close_rcvd
                    return (received.code, received.reason) if received else (1006, "")
        finally:
            stopping.cancel()
            if refreshing is not None:
                refreshing.cancel()
            self._refresh_at = None
            self._ws = None
            for entry in self._publishes.values():
                entry.sent_at = None

    def _heard(self, frame: dict) -> None:
        kind = frame.get("type")
        if kind == "message":
            subscription = self._subscriptions.get(frame.get("channel", ""))
            if subscription is not None:
                subscription._deliver(frame)
        elif kind == "subscribed":
            subscription = self._subscriptions.get(frame.get("channel", ""))
            if subscription is None:
                return
            if frame.get("recovered") is False:
                subscription._queue.put_nowait(Message(subscription.channel, gap=True))
            if "offset" in frame and not frame.get("missed"):
                subscription.offset = frame["offset"]
        elif kind == "published":
            entry = self._publishes.pop(str(frame.get("id")), None)
            if entry is not None and not entry.acknowledged.done():
                entry.acknowledged.set_result(frame.get("offset", ""))
        elif kind == "refreshed":
            self._refresh_at = self._refresh_time(frame.get("expires"))
        elif kind == "error" and "id" in frame:
            self._refused(str(frame["id"]), frame)

    def _refused(self, request_id: str, frame: dict) -> None:
        """An error that names a request: a publish is sent again when the fleet says it may
        succeed (``retry``), else fails; a subscribe ends; a refresh is tried again later."""
        reason = str(frame.get("reason", ""))
        loop = asyncio.get_running_loop()
        if request_id == REFRESH_ID:
            self._refresh_at = loop.time() + REFRESH_RETRY_SECONDS
            self.on_event("refresh refused", {"reason": reason})
        elif request_id.startswith(SUBSCRIBE_ID):
            channel = request_id.removeprefix(SUBSCRIBE_ID)
            subscription = self._subscriptions.pop(channel, None)
            if subscription is not None:
                subscription._queue.put_nowait(SubscriptionRefused(channel, reason))
        elif (entry := self._publishes.get(request_id)) is not None:
            if frame.get("retry"):
                # No primary for a moment, not confirmed: again, same id.
                entry.sent_at = None
                loop.call_later(1.0, self._send_publish, request_id, entry)
            else:
                del self._publishes[request_id]
                if not entry.acknowledged.done():
                    entry.acknowledged.set_exception(PublishRefused(entry.channel, reason))

    def _refresh_time(self, expires: object) -> float | None:
        """When to renew a token that expires at ``expires`` (Unix seconds): refresh_before
        ahead, at most half its remaining life; None without a way to get a new one."""
        if not callable(self.token) or not isinstance(expires, int | float):
            return None
        remaining = expires - time.time()
        lead = min(self.refresh_before, remaining / 2)
        return asyncio.get_running_loop().time() + max(0.0, remaining - lead)

    async def _refresh(self) -> None:
        """Ask the application for a fresher token and send it over the open connection."""
        loop = asyncio.get_running_loop()
        try:
            token = self.token() if callable(self.token) else self.token
            if inspect.isawaitable(token):
                token = await token
        except Exception as error:  # the application's callback: try again later
            self.on_event("refresh refused", {"reason": f"no token: {error}"})
            self._refresh_at = loop.time() + REFRESH_RETRY_SECONDS
            return
        self._send({"type": "refresh", "token": str(token), "id": REFRESH_ID})

    # Sending.

    def _send(self, frame: dict) -> None:
        if self._ws is not None:
            writing = asyncio.ensure_future(self._write(self._ws, json.dumps(frame)))
            self._writes.add(writing)
            writing.add_done_callback(self._writes.discard)

    def _send_publish(self, message_id: str, entry: _Publish) -> None:
        if self._ws is None or self._publishes.get(message_id) is not entry:
            return
        entry.sent_at = asyncio.get_running_loop().time()
        frame = {"type": "publish", "channel": entry.channel, "data": entry.data}
        self._send({**frame, "id": message_id})

    @staticmethod
    async def _write(ws: ClientConnection, text: str) -> None:
        # A connection that closes meanwhile: the next one sends it again.
        with contextlib.suppress(ConnectionClosed):
            await ws.send(text)

    def _backoff(self, failures: int) -> float:
        return random.uniform(0, min(self.backoff_max, self.backoff_base * 2**failures))

    async def _pause(self, seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stop.wait(), seconds)

    def _finish(self, reason: ClientClosed) -> None:
        if self._closed is not None:
            return
        self._closed = reason
        for entry in self._publishes.values():
            if not entry.acknowledged.done():
                entry.acknowledged.set_exception(reason)
        for subscription in self._subscriptions.values():
            subscription._queue.put_nowait(reason)
