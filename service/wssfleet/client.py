"""One WebSocket client of a process: what it may do, what it is sent, and its bounds."""

from __future__ import annotations

import asyncio
import collections
import struct
import time
from dataclasses import dataclass

from wssfleet import metrics, protocol
from wssfleet.auth import Grant
from wssfleet.broker import is_after
from wssfleet.config import ServiceConfig as Config
from wssfleet.connection import Connection, ConnectionLimits, Handler, Upgrade
from wssfleet.events import event
from wssfleet.protocol import CLOSE_POLICY, CLOSE_SERVICE_RESTART


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


def pong_frame(payload: bytes) -> bytes:
    """The unmasked pong that answers a ping's ``payload`` (at most 125 bytes: picows refuses
    a longer control frame with 1002)."""
    return bytes((0x8A, len(payload))) + payload


# Why a client's socket is not read (Client.paused, a bit each): its answers queue behind one
# that waits (node.INBOX_HIGH), or its send buffer is over the transport's high-water mark
# (back-pressure: a client that does not read is not read either).
PAUSED_FOR_ANSWERS = 1
PAUSED_FOR_WRITES = 2


@dataclass(frozen=True, slots=True)
class ClientLimits(ConnectionLimits):
    """A process's bounds on each client, shared by all of them: besides a connection's, the
    bytes its send buffer may hold and the messages a second it may send."""

    backlog: int
    rate: int
    # Live messages a channel's recovery may hold while it reads history: the channel's
    # history holds no more, so a recovery further behind than that is stale.
    recovery_backlog: int

    @classmethod
    def of(cls, config: Config) -> ClientLimits:
        return cls(
            max_size=config.max_message_bytes,
            close_timeout=min(config.shutdown_timeout, 10.0),
            backlog=config.send_buffer_bytes,
            rate=config.messages_per_second,
            recovery_backlog=config.history_size,
        )


# What a client in no channel holds: one shared empty set instead of 216 bytes of its own.
NO_CHANNELS: frozenset[str] = frozenset()


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
        "channels",
        "checked",
        "counted",
        "expires",
        "inbox",
        "may_publish",
        "may_subscribe",
        "overflowed",
        "paused",
        "pending",
        "pinged",
        "pong_due",
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
        limits: ClientLimits,
        stats: metrics.Stats,
    ) -> None:
        super().__init__(handler, upgrade, limits)
        self.limits: ClientLimits = limits
        grant = upgrade.grant
        self.stats = stats
        self.subject = grant.subject
        self.granted(grant, config)
        self.channels: set[str] | frozenset[str] = NO_CHANNELS
        # Channels being recovered: their live messages wait here until history is sent.
        # Both maps are None while empty, as they mostly are: an empty dict is 64 bytes, and an
        # emptied one keeps its table.
        self.pending: dict[str, list[tuple[str, str]]] | None = None
        # After a recovery, the last offset sent per channel: the same message may still come
        # live (pub/sub can lag the history read), and is not sent twice.
        self.sent_up_to: dict[str, str] | None = None
        # The answer being awaited (Service._answer_in_order) and the messages behind it.
        self.answering: asyncio.Task[None] | None = None
        self.inbox: collections.deque[str | bytes] | None = None
        self.paused = 0
        self.overflowed = False
        # Closed for what it sent: nothing it sends after is answered.
        self.refused = False
        # Whether the process counts it among its clients (Service.opened decides).
        self.counted = False
        # The bucket starts full: the same as last checked at the clock's start (no float of
        # its own until the first message).
        self.allowance: float = limits.rate
        self.checked = 0.0
        # Keepalive (Hub.keep_alive): when the last ping went out, and whether its pong is due.
        self.pinged = 0.0
        self.pong_due = False
        # Whether anything was written since the heartbeat's last look (Hub.heartbeat).
        self.spoke = True

    def granted(self, grant: Grant, config: Config) -> None:
        """What the token allows (the deployment's defaults where it says nothing), and until
        when: Hub.keep_alive closes the connection then (4001), unless a refresh came."""
        self.expires = grant.expires
        self.may_subscribe = (
            grant.subscribe if grant.subscribe is not None else config.token_default_subscribe
        )
        self.may_publish = (
            grant.publish if grant.publish is not None else config.token_default_publish
        )

    def add_channel(self, channel: str) -> None:
        if isinstance(self.channels, frozenset):
            self.channels = set()
        self.channels.add(channel)

    def drop_channel(self, channel: str) -> None:
        """Forget the channel and what its recovery kept."""
        if isinstance(self.channels, set):
            self.channels.discard(channel)
            if not self.channels:
                self.channels = NO_CHANNELS
        self.settled(channel)
        self.caught_up(channel)

    def recovering(self, channel: str) -> list[tuple[str, str]]:
        """The channel's recovery begins: its live messages wait in the list returned."""
        if self.pending is None:
            self.pending = {}
        waiting = self.pending[channel] = []
        return waiting

    def waiting(self, channel: str) -> list[tuple[str, str]] | None:
        """Where the channel's live messages wait, while its recovery lasts."""
        return self.pending.get(channel) if self.pending else None

    def settled(self, channel: str) -> None:
        """The channel's recovery is over: its live messages no longer wait."""
        pending = self.pending
        if pending and pending.pop(channel, None) is not None and not pending:
            self.pending = None

    def recovered_up_to(self, channel: str, offset: str) -> None:
        """The channel's recovery sent up to ``offset``, ahead of its live messages."""
        if self.sent_up_to is None:
            self.sent_up_to = {}
        self.sent_up_to[channel] = offset

    def caught_up(self, channel: str) -> None:
        """Live messages of the channel have passed what its recovery sent."""
        sent = self.sent_up_to
        if sent and sent.pop(channel, None) is not None and not sent:
            self.sent_up_to = None

    def first_owed(self, channel: str, run: list[tuple[str, str]]) -> int:
        """Of a live run of the channel's messages, the index of the first this client is
        owed, ``len(run)`` for none: while its recovery lasts they wait (kept here), and
        after it those the recovery sent already are skipped."""
        pending = self.pending.get(channel) if self.pending else None
        if pending is not None:
            if len(pending) + len(run) > self.limits.recovery_backlog:
                self.recovery_fell_behind(channel)
            else:
                pending.extend(run)
            return len(run)
        sent = self.sent_up_to.get(channel) if self.sent_up_to else None
        if sent is None:
            return 0
        start = 0
        while start < len(run) and not is_after(run[start][0], sent):
            start += 1
        if start < len(run):
            self.caught_up(channel)
        return start

    def recovery_fell_behind(self, channel: str) -> None:
        """More live messages came during the channel's recovery than its history holds: what
        was kept is dropped, and the client is told to come back (1012), recovering from its
        last offset on a fresh turn."""
        self.settled(channel)
        if not self.closing:
            self.stats.closes["recovery_backlog"] += 1
            event("recovery_backlog", sub=self.subject, channel=channel)
            self.close(CLOSE_SERVICE_RESTART, "recovery fell behind: reconnect")

    def on_ping(self, payload: bytes) -> None:
        if self.take_control_frame():
            self.write(pong_frame(payload))

    def on_pong(self) -> None:
        if self.take_control_frame():
            self.pong_due = False

    def take_control_frame(self) -> bool:
        """A ping or pong from the client costs its rate like a message, and may overdraw it
        by one second's worth (a library's keepalive ping on top of a full-rate stream is
        answered); a client past that floods, and is closed with 1008."""
        now = time.monotonic()
        rate = self.limits.rate
        self.allowance = min(rate, self.allowance + (now - self.checked) * rate) - 1
        self.checked = now
        if self.allowance >= -rate:
            return True
        if not self.refused:
            self.stats.drops["rate_limit"] += 1
            self.stats.closes["control_flood"] += 1
            event("control_flood", sub=self.subject)
            self.refuse(CLOSE_POLICY, "too many control frames")
        return False

    def hold(self, reason: int) -> None:
        """Stop reading the socket for ``reason`` (a PAUSED_* bit)."""
        if not self.paused:
            self.transport.pause_reading()
        self.paused |= reason

    def release(self, reason: int) -> None:
        """``reason`` no longer holds the socket; it is read again when no other does."""
        if self.paused & reason:
            self.paused &= ~reason
            if not self.paused:
                self.transport.resume_reading()

    def pause_writing(self) -> None:
        # The transport's buffer is over its high-water mark: read nothing more from a client
        # that does not read, so that what it sends cannot make us write more.
        if not self.closing:
            self.hold(PAUSED_FOR_WRITES)

    def resume_writing(self) -> None:
        self.release(PAUSED_FOR_WRITES)

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
        if transport.get_write_buffer_size() > self.limits.backlog:
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
            self.paused = 0
            self.transport.resume_reading()
        self.refused = True
        self.close(code, reason)

    def reply(self, kind: str, **fields: object) -> None:
        """Send an answer of type ``kind``."""
        self.send_frame(text_frame(protocol.encode(kind, **fields)), kind)

    def take_token(self) -> bool:
        """Token bucket: ``rate`` messages a second, bursts up to one second's worth."""
        now = time.monotonic()
        rate = self.limits.rate
        self.allowance = min(rate, self.allowance + (now - self.checked) * rate)
        self.checked = now
        if self.allowance < 1:
            return False
        self.allowance -= 1
        return True
