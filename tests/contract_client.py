"""Clients that follow wssfleet's client contract (docs/continuity.md, 'The client
contract'; the demo page's app.js does the same), and record what they saw, for the
continuity tests.

- closed with 1001 or 1006: reconnect after a random delay in [0, FIRST_DELAY] s; with 1012
  (which the service paces itself: a drain, a rebalance, a planned move of the front door)
  after one in [0, RESTART_DELAY] s;
- a failed attempt: wait a random delay in [0, min(BACKOFF_MAX, BACKOFF_BASE * 2**n)] s;
- closed with 1008 or a 4xxx code: do not retry;
- a subscriber comes back with ``since`` = the last offset it received;
- nothing received for the welcome's ``heartbeat`` + HEARTBEAT_GRACE seconds: the path is dead
  (a master gone, a NAT that forgot it): drop the connection and reconnect as after 1006;
- TCP keepalive probes an idle path every PATH_PROBE_SECONDS; a reset (the front door moved
  to another master) or two probes unanswered end it: reconnect as after 1006;
- a publisher publishes with an ``id`` and sends the same message again, same id, until it is
  acknowledged (after an error reply, or on a new connection after a reconnection or after
  REPLY_TIMEOUT s without an answer).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import resource
import socket
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

from wssfleet.protocol import HEARTBEAT_GRACE

FIRST_DELAY = 1.0
RESTART_DELAY = 0.25
BACKOFF_BASE = 0.5
BACKOFF_MAX = 10.0
RETRY_AFTER = {1001, 1006, 1012}
# A publisher that hears nothing back for this long takes the path for dead.
REPLY_TIMEOUT = 10.0
PATH_PROBE_SECONDS = 1
PATH_PROBES_UNANSWERED = 2


def probe_path(ws: ClientConnection) -> None:
    """TCP keepalive on the connection's socket, as the contract asks (Linux options)."""
    sock = ws.transport.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE, PATH_PROBE_SECONDS)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL, PATH_PROBE_SECONDS)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT, PATH_PROBES_UNANSWERED)
    unacknowledged_ms = 1000 * PATH_PROBE_SECONDS * (1 + PATH_PROBES_UNANSWERED)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT, unacknowledged_ms)


@dataclass
class Seen:
    """What one client saw, in monotonic seconds."""

    connects: list[tuple[float, str]] = field(default_factory=list)
    closes: list[tuple[float, int, str]] = field(default_factory=list)
    refusals: list[tuple[float, str]] = field(default_factory=list)

    def offline_spans(self, until: float) -> list[float]:
        """How long the client was without a connection after each close."""
        spans = []
        for closed_at, _, _ in self.closes:
            later = [at for at, _ in self.connects if at >= closed_at]
            spans.append((min(later) if later else until) - closed_at)
        return spans


async def _pause(stop: asyncio.Event, seconds: float) -> None:
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), seconds)


# Uses a connection until it closes; given how long a silence means a dead path (None: no
# silence does).
Session = Callable[[ClientConnection, float | None], Awaitable[None]]


async def frames(ws: ClientConnection, silence: float | None):
    """Each frame until the connection closes. One silent for ``silence`` seconds is dropped
    without a close handshake (a dead path would not answer it): the contract reconnects."""
    while True:
        try:
            yield await asyncio.wait_for(ws.recv(), silence)
        except TimeoutError:
            ws.transport.abort()
            return
        except ConnectionClosed:
            return


async def listen(ws: ClientConnection, silence: float | None) -> None:
    """A client that only stays connected still reads what it is sent (heartbeats)."""
    async for _ in frames(ws, silence):
        pass


async def follow_contract(
    connect: Callable[[], Awaitable[ClientConnection]],
    seen: Seen,
    stop: asyncio.Event,
    session: Session | None = None,
) -> None:
    """Stay connected by the contract; ``session`` uses each connection until it closes."""
    failures = 0
    while not stop.is_set():
        try:
            ws = await connect()
            probe_path(ws)
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 15))
        except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as error:
            seen.refusals.append((time.monotonic(), type(error).__name__))
            failures += 1
            await _pause(stop, random.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2**failures)))
            continue
        failures = 0
        seen.connects.append((time.monotonic(), welcome["worker"]))
        # A server from before heartbeats says nothing of them: no silence means a dead path.
        heartbeat = welcome.get("heartbeat")
        silence = heartbeat + HEARTBEAT_GRACE if heartbeat else None
        stopping = asyncio.ensure_future(stop.wait())
        closed = asyncio.ensure_future((session or listen)(ws, silence))
        await asyncio.wait({stopping, closed}, return_when=asyncio.FIRST_COMPLETED)
        if stop.is_set():
            closed.cancel()
            await ws.close()
            return
        stopping.cancel()
        code = ws.protocol.close_rcvd.code if ws.protocol.close_rcvd else 1006
        seen.closes.append((time.monotonic(), code, welcome["worker"]))
        if code not in RETRY_AFTER:
            return
        await _pause(stop, random.uniform(0, RESTART_DELAY if code == 1012 else FIRST_DELAY))


class Crowd:
    """Many contract-following clients at once."""

    def __init__(self, connect: Callable[[], Awaitable[ClientConnection]], size: int) -> None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, min(hard, 4 * size + 256)), hard))
        self.connect = connect
        self.seen = [Seen() for _ in range(size)]
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self.tasks = [
            asyncio.create_task(follow_contract(self.connect, seen, self.stop))
            for seen in self.seen
        ]

    def connected(self) -> int:
        """Clients whose last event is a connect."""
        return sum(
            1
            for seen in self.seen
            if seen.connects and (not seen.closes or seen.connects[-1][0] >= seen.closes[-1][0])
        )

    async def until_connected(self, count: int, seconds: float) -> float:
        started = time.monotonic()
        while self.connected() < count and time.monotonic() - started < seconds:
            await asyncio.sleep(0.1)
        return time.monotonic() - started

    def where(self) -> dict[str, int]:
        """Connected clients per instance (worker label)."""
        counts: dict[str, int] = defaultdict(int)
        for seen in self.seen:
            if seen.connects and (not seen.closes or seen.connects[-1][0] >= seen.closes[-1][0]):
                counts[seen.connects[-1][1]] += 1
        return dict(counts)

    async def finish(self) -> float:
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)
        return time.monotonic()

    def refusals(self) -> list[tuple[float, str]]:
        return [refusal for seen in self.seen for refusal in seen.refusals]

    def closes(self) -> list[tuple[float, int, str]]:
        return sorted(close for seen in self.seen for close in seen.closes)

    def longest_offline(self, until: float) -> float:
        return max((span for seen in self.seen for span in seen.offline_spans(until)), default=0)


def busiest_second(moments: list[float]) -> int:
    """The most events in any one-second window."""
    moments = sorted(moments)
    return max(
        (sum(1 for other in moments if moment <= other < moment + 1) for moment in moments),
        default=0,
    )


def drain_bound(clients: int, drain_seconds: int) -> int:
    return math.ceil(clients / drain_seconds) + 1


@dataclass
class Inbox:
    """What a subscriber received on its channel, in order."""

    channel: str
    offset: str = ""
    received: list[tuple[int, str]] = field(default_factory=list)
    answers: list[dict] = field(default_factory=list)
    # The offset the last connection asked to resume after, and when it connected.
    asked: tuple[str, float] = ("", 0.0)

    @property
    def path(self) -> str:
        """Where to connect: the channel, and after the first time, since the last offset
        (empty if the channel was empty then: all of the history)."""
        self.asked = (self.offset, time.monotonic())
        return f"/ws/{self.channel}" + (f"?since={self.offset}" if self.answers else "")

    async def read(self, ws: ClientConnection, silence: float | None) -> None:
        async for text in frames(ws, silence):
            frame = json.loads(text)
            if frame["type"] == "message":
                self.received.append((frame["data"], frame["offset"]))
                self.offset = frame["offset"]
            elif frame["type"] == "subscribed":
                self.answers.append(
                    {
                        **frame,
                        "asked": self.asked[0],
                        "connected": self.asked[1],
                        "at": time.monotonic(),
                    }
                )
                if "offset" in frame:
                    # A first subscribe, or a history that no longer reaches back.
                    self.offset = frame["offset"]


class Subscribers:
    """Contract-following subscribers, ``per_channel`` on each channel."""

    def __init__(
        self,
        connect: Callable[[str], Awaitable[ClientConnection]],
        channels: list[str],
        per_channel: int,
    ) -> None:
        self.inboxes = [Inbox(channel) for channel in channels for _ in range(per_channel)]
        self.seen = [Seen() for _ in self.inboxes]
        self.connect = connect
        self.stop = asyncio.Event()
        self.tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        for inbox, seen in zip(self.inboxes, self.seen, strict=True):
            self.tasks.append(
                asyncio.create_task(
                    follow_contract(
                        lambda inbox=inbox: self.connect(inbox.path), seen, self.stop, inbox.read
                    )
                )
            )

    async def until_subscribed(self, seconds: float) -> None:
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if all(inbox.answers for inbox in self.inboxes):
                return
            await asyncio.sleep(0.1)

    async def until_even(self, seconds: float) -> bool:
        """Wait until every instance holds its share within 20% (as the rebalancer keeps
        it), so that what follows is not mixed up with rebalancing."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            counts: dict[str, int] = defaultdict(int)
            for seen in self.seen:
                if seen.connects:
                    counts[seen.connects[-1][1]] += 1
            mean = len(self.seen) / max(len(counts), 1)
            if counts and all(abs(count - mean) <= 0.2 * mean for count in counts.values()):
                return True
            await asyncio.sleep(0.5)
        return False

    async def until_caught_up(self, last: dict[str, str], seconds: float) -> None:
        """Wait until every inbox holds its channel's last acknowledged offset."""
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline:
            if all(inbox.offset >= last.get(inbox.channel, "") for inbox in self.inboxes):
                return
            await asyncio.sleep(0.2)

    async def finish(self) -> None:
        self.stop.set()
        await asyncio.gather(*self.tasks, return_exceptions=True)

    def reconnections(self) -> int:
        return sum(len(seen.closes) for seen in self.seen)


class Publisher:
    """Publishes 0, 1, 2, … to its channel every ``interval`` s, each until acknowledged."""

    def __init__(
        self, connect: Callable[[], Awaitable[ClientConnection]], channel: str, interval: float
    ) -> None:
        self.connect = connect
        self.channel = channel
        self.interval = interval
        self.acked: list[tuple[int, str]] = []
        # When each was acknowledged (monotonic seconds).
        self.acked_at: list[float] = []
        # When each was first sent (monotonic seconds): what its delivery latency counts from.
        self.first_sent: list[float] = []
        self.refused: list[str] = []
        self.retries = 0
        self.seen = Seen()
        self.stopping = False
        self.in_flight = False
        self.idle = asyncio.Event()
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self.task = asyncio.create_task(
            follow_contract(self.connect, self.seen, self.done, self._publish)
        )

    async def _publish(self, ws: ClientConnection, _silence: float | None) -> None:
        # A reply that does not come within 10 s is asked again: that bounds a dead path.
        with contextlib.suppress(ConnectionClosed):
            while True:
                # Only between acknowledged messages: one in flight may be stored already.
                if self.stopping and not self.in_flight:
                    self.idle.set()
                    await ws.wait_closed()
                    return
                number = len(self.acked)
                frame = {
                    "type": "publish",
                    "channel": self.channel,
                    "data": number,
                    "id": f"{self.channel}-{number}",
                }
                self.in_flight = True
                if number == len(self.first_sent):
                    self.first_sent.append(time.monotonic())
                await ws.send(json.dumps(frame))
                try:
                    reply = await asyncio.wait_for(self._reply(ws, frame["id"]), REPLY_TIMEOUT)
                except TimeoutError:
                    # No answer: the path may be dead (a master gone). Drop it and send the
                    # message again, same id, on a new connection.
                    self.retries += 1
                    ws.transport.abort()
                    return
                if reply["type"] == "published":
                    self.acked.append((number, reply["offset"]))
                    self.acked_at.append(time.monotonic())
                    self.in_flight = False
                    await _pause(self.done, self.interval)
                else:
                    self.refused.append(reply["reason"])
                    self.retries += 1
                    await asyncio.sleep(0.2)

    @staticmethod
    async def _reply(ws: ClientConnection, message_id: str) -> dict:
        while True:
            reply = json.loads(await ws.recv())
            if reply.get("id") == message_id:
                return reply

    async def finish(self, seconds: float = 30) -> None:
        """Stop once the message in flight is acknowledged."""
        self.stopping = True
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.idle.wait(), seconds)
        self.done.set()
        if self.task is not None:
            await asyncio.gather(self.task, return_exceptions=True)

    @property
    def last(self) -> str:
        return self.acked[-1][1] if self.acked else ""
