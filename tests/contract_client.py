"""Clients that follow wssfleet's client contract (README, 'The client contract'; the demo
page's app.js does the same), and record what they saw, for the continuity tests.

- closed with 1001, 1006 or 1012: reconnect after a random delay in [0, FIRST_DELAY] s;
- a failed attempt: wait a random delay in [0, min(BACKOFF_MAX, BACKOFF_BASE * 2**n)] s;
- closed with 1008 or a 4xxx code: do not retry.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import random
import resource
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidHandshake

FIRST_DELAY = 1.0
BACKOFF_BASE = 0.5
BACKOFF_MAX = 10.0
RETRY_AFTER = {1001, 1006, 1012}


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


async def follow_contract(
    connect: Callable[[], Awaitable[ClientConnection]], seen: Seen, stop: asyncio.Event
) -> None:
    failures = 0
    while not stop.is_set():
        try:
            ws = await connect()
            welcome = json.loads(await asyncio.wait_for(ws.recv(), 15))
        except (OSError, InvalidHandshake, TimeoutError, ConnectionClosed) as error:
            seen.refusals.append((time.monotonic(), type(error).__name__))
            failures += 1
            await _pause(stop, random.uniform(0, min(BACKOFF_MAX, BACKOFF_BASE * 2**failures)))
            continue
        failures = 0
        seen.connects.append((time.monotonic(), welcome["worker"]))
        stopping = asyncio.ensure_future(stop.wait())
        closed = asyncio.ensure_future(ws.wait_closed())
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
        await _pause(stop, random.uniform(0, FIRST_DELAY))


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
