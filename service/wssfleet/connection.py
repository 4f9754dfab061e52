"""A WebSocket connection on picows: the protocol's rules above its frame parser.

picows parses frames, unmasks them and answers pings in compiled code, and it keeps no task
per connection: each frame comes to ``on_ws_frame`` as it is parsed. It leaves the rules of a
message to its listener, so this class applies them as websockets did: reassembly of
fragmented messages within ``max_message_bytes`` (1009) and ``MAX_FRAGMENTS``, UTF-8 (1007),
no reserved bits without an extension (1002), and the close handshake, with the peer given
``close_timeout`` to answer a close before the socket is dropped.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from http import HTTPStatus
from typing import TYPE_CHECKING, Protocol

from multidict import CIMultiDict
from picows import (
    WSCloseCode,
    WSFrame,
    WSListener,
    WSMsgType,
    WSTransport,
    WSUpgradeResponse,
    WSUpgradeResponseWithListener,
)

if TYPE_CHECKING:
    from wssfleet.auth import Grant

Message = str | bytes

# websockets' bound on the frames of one message (its WEBSOCKETS_MAX_FRAGMENTS default):
# without one, a client could send a message as a million one-byte frames.
MAX_FRAGMENTS = 4096
# The close code when the connection ended without a close frame either way (RFC 6455, 7.1.5).
CLOSED_ABNORMALLY = 1006
SERVER = "wssfleet"
# What an open connection's request and response keep once the upgrade is checked: nothing of
# their own (the path holds the client's token besides).
RELEASED_HEADERS: CIMultiDict[str] = CIMultiDict()
RELEASED_BYTES = b""


def http_response(
    status: HTTPStatus,
    body: bytes,
    content_type: str = "text/plain; charset=utf-8",
    headers: dict[str, str] | None = None,
) -> WSUpgradeResponseWithListener:
    """A plain HTTP answer instead of an upgrade; picows sends it with Connection: close."""
    response = WSUpgradeResponse.create_ok_response(
        body, {"Server": SERVER, "Content-Type": content_type, **(headers or {})}
    )
    response.status = status
    return WSUpgradeResponseWithListener(response, None)


class Upgrade:
    """What the checks before an upgrade found: the token's grant, the channel of the path
    (or ''), the offset to recover from, and the peer as logs name it."""

    __slots__ = ("first_channel", "grant", "peer", "since")

    def __init__(self, grant: Grant, first_channel: str, since: str | None, peer: str) -> None:
        self.grant = grant
        self.first_channel = first_channel
        self.since = since
        self.peer = peer


class Handler(Protocol):
    """What a process does with its connections (node.Service)."""

    def opened(self, connection: Connection, upgrade: Upgrade) -> None: ...
    def received(self, connection: Connection, message: Message) -> None: ...
    def closed(self, connection: Connection) -> None: ...


@dataclass(frozen=True, slots=True)
class ConnectionLimits:
    """A process's bounds on each of its connections, one object that all of them share: the
    largest message in bytes, and the seconds a peer has to answer our close frame."""

    max_size: int
    close_timeout: float


class Fragments:
    """A fragmented message so far: its kind, its size and its parts."""

    __slots__ = ("kind", "parts", "size")

    def __init__(self, kind: WSMsgType, first: bytes) -> None:
        self.kind = kind
        self.parts = [first]
        self.size = len(first)


class Connection(WSListener):
    """One upgraded connection, with what the checks before it found (``upgrade``, handed on
    when it opens and not kept). ``handler`` hears of its opening, each complete message (a
    ``str`` for text, ``bytes`` for binary, in order) and its end."""

    # Slots: memory per connection is what limits a worker.
    __slots__ = (
        "closer",
        "fragments",
        "handler",
        "limits",
        "peer",
        "transport",
        "upgrade",
        "ws",
    )

    def __init__(self, handler: Handler, upgrade: Upgrade, limits: ConnectionLimits) -> None:
        self.handler = handler
        self.upgrade: Upgrade | None = upgrade
        self.peer = upgrade.peer
        self.limits = limits
        self.fragments: Fragments | None = None
        # The timer that hangs up on a peer that does not answer our close frame.
        self.closer: asyncio.TimerHandle | None = None

    def on_ws_connected(self, transport: WSTransport) -> None:
        self.ws = transport
        self.transport = transport.underlying_transport
        # The upgrade was checked and is never read again, but picows keeps the request and the
        # response for the connection's life: about 1.5 KiB a connection, the token included.
        request, response = transport.request, transport.response
        request.headers = response.headers = RELEASED_HEADERS
        request.method = request.path = request.version = response.version = RELEASED_BYTES
        upgrade, self.upgrade = self.upgrade, None
        assert upgrade is not None, "picows opens a connection once"
        self.handler.opened(self, upgrade)

    def on_ws_frame(self, transport: WSTransport, frame: WSFrame) -> None:
        kind = frame.msg_type
        if kind is WSMsgType.CLOSE:
            self._answer_close(frame)
            return
        if transport.is_close_frame_sent:
            return  # closing: nothing the peer sends after our close is answered
        if frame.rsv1 or frame.rsv2 or frame.rsv3:
            self.fail(WSCloseCode.PROTOCOL_ERROR, "reserved bits must be 0")
            return
        if kind is WSMsgType.TEXT or kind is WSMsgType.BINARY:
            if self.fragments is not None:
                self.fail(WSCloseCode.PROTOCOL_ERROR, "expected a continuation frame")
            elif not frame.fin:
                self.fragments = Fragments(kind, frame.get_payload_as_bytes())
            elif kind is WSMsgType.TEXT:
                try:
                    text = frame.get_payload_as_utf8_text()
                except UnicodeDecodeError as error:
                    self._invalid_text(error)
                    return
                self.handler.received(self, text)
            else:
                self.handler.received(self, frame.get_payload_as_bytes())
        elif kind is WSMsgType.CONTINUATION:
            self._continue(frame)
        elif kind is WSMsgType.PING:
            self.on_ping(frame.get_payload_as_bytes())
        elif kind is WSMsgType.PONG:
            self.on_pong()

    def on_ping(self, payload: bytes) -> None:
        """A ping came: answered here, not in picows, so that the answer is written where the
        send buffer's bound applies (Client counts it against the client's rate too)."""
        self.ws.send_pong(payload)

    def on_pong(self) -> None:
        """A pong came (Client keeps the keepalive's state)."""

    def _continue(self, frame: WSFrame) -> None:
        fragments = self.fragments
        if fragments is None:
            self.fail(WSCloseCode.PROTOCOL_ERROR, "unexpected continuation frame")
            return
        fragments.size += frame.payload_size
        max_size = self.limits.max_size
        if fragments.size > max_size:
            self.fail(WSCloseCode.MESSAGE_TOO_BIG, f"message over {max_size} bytes")
            return
        fragments.parts.append(frame.get_payload_as_bytes())
        if len(fragments.parts) > MAX_FRAGMENTS:
            self.fail(WSCloseCode.MESSAGE_TOO_BIG, "too many fragments")
            return
        if not frame.fin:
            return
        data, self.fragments = b"".join(fragments.parts), None
        if fragments.kind is WSMsgType.BINARY:
            self.handler.received(self, data)
            return
        try:
            text = str(data, "utf-8")
        except UnicodeDecodeError as error:
            self._invalid_text(error)
            return
        self.handler.received(self, text)

    def _invalid_text(self, error: UnicodeDecodeError) -> None:
        self.fail(WSCloseCode.INVALID_TEXT, f"{error.reason} at position {error.start}")

    def _answer_close(self, frame: WSFrame) -> None:
        """The peer closes: echo its code if ours is not sent yet, then hang up (the server
        closes the TCP connection first, RFC 6455 7.1.1)."""
        ws = self.ws
        if not ws.is_close_frame_sent:
            code = frame.get_close_code()
            if code == WSCloseCode.NO_INFO:
                ws.send_close()
            else:
                ws.send_close(code, frame.get_close_message())
        ws.disconnect()

    def on_ws_disconnected(self, transport: WSTransport) -> None:
        if self.closer is not None:
            self.closer.cancel()
            self.closer = None
        self.handler.closed(self)

    @property
    def closing(self) -> bool:
        """Our close frame is sent (or the connection is gone)."""
        return self.ws.is_close_frame_sent or self.ws.is_disconnected

    def close(self, code: int, reason: str) -> None:
        """Start the close handshake: the peer has ``close_timeout`` to answer before the
        socket is dropped. Nothing is sent after the close frame."""
        if self.closing:
            return
        self.ws.send_close(WSCloseCode(code), reason.encode())
        self.closer = asyncio.get_running_loop().call_later(self.limits.close_timeout, self._abort)

    def _abort(self) -> None:
        """The close handshake's deadline: drop the connection, unsent data and all (a peer
        that does not read would hold a graceful close open)."""
        self.closer = None
        self.ws.disconnect(graceful=False)

    def fail(self, code: int, reason: str) -> None:
        """Close for a broken rule, as websockets does: the close frame and the end of our
        side of the stream at once; what the peer still sends is read and dropped until it
        closes (hanging up on a peer that is sending would reset the connection, and the
        peer would lose the close frame)."""
        self.fragments = None
        self.close(code, reason)
        if self.transport.can_write_eof():
            self.transport.write_eof()

    def hang_up(self, code: int, reason: str) -> None:
        """Close a peer that no longer answers: the close frame, then drop the connection
        without waiting for its send buffer to drain."""
        self.close(code, reason)
        self.ws.disconnect(graceful=False)

    @property
    def close_code(self) -> int:
        """The code of the close frame sent, else of the one received, else 1006."""
        handshake = self.ws.close_handshake
        if handshake is None:
            return CLOSED_ABNORMALLY
        frame = handshake.sent or handshake.recv
        return CLOSED_ABNORMALLY if frame is None else int(frame.code)
