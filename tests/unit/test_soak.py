"""The soak's checker (tests/soak.py): what it counts as lost, repeated or out of order, its
latency percentiles, its memory drift and its verdict, on histories made up here. The soak
itself runs against the lab (`make soak`)."""

from __future__ import annotations

import asyncio

import pytest

from tests.contract_client import Publisher
from tests.soak import Latencies, Sample, SoakInbox, bucket_of, bucket_value, memory_drift, verdict


def inbox() -> SoakInbox:
    publisher = Publisher(lambda: asyncio.sleep(0), "c", 0.2)
    publisher.first_sent = [10.0 + n for n in range(10)]
    return SoakInbox("c", publisher, Latencies(0.0), answered=True)


def test_messages_in_order_are_counted_and_their_latency_kept():
    seen = inbox()
    for n in range(3):
        seen.heard(n, f"e1:100-{n}", 10.05 + n)
    assert (seen.expected, seen.missed, seen.repeated, seen.offsets_back) == (3, 0, 0, 0)
    assert seen.latencies.count(lambda _s: True) == 3
    [p50] = seen.latencies.percentiles(lambda _s: True, 0.5)
    assert p50 == pytest.approx(0.05, rel=0.06)


def test_a_missing_a_repeated_and_a_backward_message_are_each_counted():
    seen = inbox()
    seen.heard(0, "e1:100-0", 10.0)
    seen.heard(2, "e1:100-2", 12.0)  # 1 never came
    seen.heard(2, "e1:100-2", 12.1)  # again, and its offset does not grow
    seen.heard(3, "e1:100-1", 13.0)  # an offset going back
    assert (seen.missed, seen.repeated, seen.offsets_back, seen.expected) == (1, 1, 2, 4)
    assert seen.notes[0] == "messages 1..1 never came"
    # A new life of the channel's history is no step back.
    seen.heard(4, "e2:5-0", 14.0)
    assert seen.offsets_back == 2


def test_latency_buckets_are_within_5_percent_and_split_by_second():
    for seconds in (0.0002, 0.0031, 0.05, 1.7, 30.0):
        assert seconds <= bucket_value(bucket_of(seconds)) <= seconds * 1.051
    latencies = Latencies(100.0)
    for n in range(100):
        latencies.add(100.5, 0.010)  # second 0
        latencies.add(101.5, 0.010 if n < 98 else 2.0)  # second 1: 2 % slow
    assert latencies.percentiles(lambda s: s == 0, 0.99)[0] == pytest.approx(0.010, rel=0.06)
    p50, p99 = latencies.percentiles(lambda s: s == 1, 0.5, 0.99)
    assert p50 == pytest.approx(0.010, rel=0.06) and p99 == pytest.approx(2.0, rel=0.06)
    assert latencies.percentiles(lambda s: s == 7, 0.5) == [None]


def test_memory_drift_counts_from_15_minutes_into_each_process_life():
    samples = [
        # From the start: 100 MiB at 15 minutes, then 104 (4 %).
        *(Sample(at, "w1", "wssfleet@8001.service", 7, 102400, 20) for at in (0, 900)),
        Sample(1800, "w1", "wssfleet@8001.service", 7, 106496, 22),
        # Restarted at 1,000 s: judged from 1,900 s on (120 → 150: 25 %).
        Sample(1000, "w1", "wssfleet@8002.service", 9, 50000, 20),
        Sample(1900, "w1", "wssfleet@8002.service", 9, 120000, 20),
        Sample(2000, "w1", "wssfleet@8002.service", 9, 150000, 20),
        # Too short a life to judge.
        Sample(1500, "m", "haproxy.service", 5, 9000, 30),
    ]
    drift = {p["unit"]: p for p in memory_drift(samples, 0.0)}
    assert set(drift) == {"wssfleet@8001.service", "wssfleet@8002.service"}
    assert drift["wssfleet@8001.service"]["rss_drift"] == pytest.approx(0.04, abs=0.001)
    assert drift["wssfleet@8001.service"]["files_max"] == 22
    assert drift["wssfleet@8002.service"]["rss_drift"] == pytest.approx(0.25, abs=0.001)


def test_the_verdict_holds_each_bound_of_issue_36():
    result = {
        "faults": 41,
        "lost": 0,
        "repeated": 0,
        "offsets_back": 0,
        "hidden_gaps": 0,
        "latency_outside_faults": [0.02, 0.15, 0.3],
        "memory": [{"rss_drift": 0.03}],
    }
    assert all(holds for _, _, holds in verdict(result, 7200))
    broken = {**result, "faults": 39, "lost": 1, "latency_outside_faults": [0.02, 0.25, 0.3]}
    broken["memory"] = [{"rss_drift": 0.06}]
    assert not any(holds for _, _, holds in verdict(broken, 7200))
