"""One WebSocket client of a process: what it may do, what it is sent, and its bounds."""

from __future__ import annotations

import asyncio
import collections
import struct
import time

from wssfleet import metrics, protocol
from wssfleet.config import ServiceConfig as Config
from wssfleet.connection import Connection, Handler, Upgrade
from wssfleet.events import event
from wssfleet.protocol import (
    CLOSE_POLICY,
)


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


class Client(Connection):
    """One WebSocket client: its subscriptions, its send backlog bound and rate budget.

    Frames go straight to the connection's transport, instead of through a queue and a writer
    task per client: no task switch per frame, and one serialized frame serves every
    subscriber. The transport's buffer is the backlog, bounded in bytes
    (``send_buffer_bytes``); a client that lets it grow past that is closed.
    """

    # Memory per connection is the figure that limits a worker: no per-instance __dict__.
    __slots__ = (
        "allowance",
        "answering",
        "backlog_limit",
        "channels",
        "checked",
        "counted",
        "inbox",
        "may_publish",
        "may_subscribe",
        "overflowed",
        "paused",
        "pending",
        "pinged",
        "pong_due",
        "rate",
        "refused",
        "sent_up_to",
        "spoke",
        "stats",
        "subject",
    )

    def __init__(
        self,
        handler: Handler,
        upgrade: Upgrade,
        config: Config,
        stats: metrics.Stats,
    ) -> None:
        super().__init__(
            handler,
            upgrade,
            max_size=config.max_message_bytes,
            close_timeout=min(config.shutdown_timeout, 10.0),
        )
        grant = upgrade.grant
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
        # Closed for what it sent: nothing it sends after is answered.
        self.refused = False
        # Whether the process counts it among its clients (Service.opened decides).
        self.counted = False
        self.rate = config.messages_per_second
        self.allowance = float(config.messages_per_second)
        self.checked = time.monotonic()
        # Keepalive (Hub.keep_alive): when the last ping went out, and whether its pong is due.
        self.pinged = 0.0
        self.pong_due = False
        # Whether anything was written since the heartbeat's last look (Hub.heartbeat).
        self.spoke = True

    def on_pong(self) -> None:
        self.pong_due = False

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
        if self.closing:
            return False  # the close frame is the last thing it gets
        if self.overflowed:
            self.stats.drops["queue_overflow"] += 1
            return False
        transport = self.transport
        if transport.get_write_buffer_size() > self.backlog_limit:
            self.overflowed = True
            self.stats.drops["queue_overflow"] += 1
            self.stats.closes["overflow"] += 1
            event("overflow", sub=self.subject, buffered=transport.get_write_buffer_size())
            self.close(CLOSE_POLICY, "send queue overflow")
            return False
        transport.write(frame)
        self.spoke = True
        return True

    def refuse(self, code: int, reason: str) -> None:
        """Close this client for what it sent: nothing it sent after is answered, and its
        socket is read again (a paused one could not hear the client's close frame)."""
        if self.inbox:
            self.inbox.clear()
        if self.paused:
            self.paused = False
            self.transport.resume_reading()
        self.refused = True
        self.close(code, reason)

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
