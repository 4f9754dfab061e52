"""Closing many clients evenly over a window (a drain, a rebalance), never herding them."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable

# How often a drain closes its next share of clients: fine enough that no second closes
# more than its share (most_per_second).
DRAIN_TICK = 0.05


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
