"""A drain's pace: even over its window, and never more than its share in any second, even
when the event loop stalls in the middle of it."""

from __future__ import annotations

import asyncio
import time

from wssfleet.pacing import busiest_second, most_per_second, paced


def drain(count: int, seconds: float, stall_at: int | None = None) -> list[float]:
    def act(index: int) -> None:
        # A busy event loop: one callback holds it, as a burst of handshakes would.
        if index == stall_at:
            time.sleep(0.4)

    return asyncio.run(paced(count, seconds, act))


def test_a_drain_spreads_its_closes_evenly_over_its_window():
    moments = drain(60, 2)
    assert len(moments) == 60
    assert moments[-1] - moments[0] > 1.5, moments
    assert busiest_second(moments) <= most_per_second(60, 2)


def test_a_stalled_event_loop_makes_the_drain_late_not_a_herd():
    # After a 0.4 s stall, the even schedule alone would close 0.4 s worth at once, and
    # the second around it would hold 1.4 shares.
    moments = drain(100, 2, stall_at=20)
    assert len(moments) == 100
    assert busiest_second(moments) <= most_per_second(100, 2), moments


def test_an_empty_drain_still_waits_out_its_window():
    # Clients that arrive while a process drains are closed at the end of the window.
    started = time.monotonic()
    assert drain(0, 0.5) == []
    assert time.monotonic() - started >= 0.5


def test_the_share_per_second_rounds_up_with_room_for_a_second_edge():
    assert most_per_second(332, 10) == 35
    assert most_per_second(40, 2) == 21
    assert most_per_second(5, 0) == 5
