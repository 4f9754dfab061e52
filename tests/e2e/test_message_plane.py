"""The message plane's guarantee, in the lab: 400 subscribers on 4 channels come back with
``since`` after every reconnection, 4 publishers publish with ids and retry until acknowledged,
and through each fault every acknowledged message reaches every subscriber exactly once and in
order, with no history ever reported lost.

Faults: an instance SIGKILLed, a rolling release, an HAProxy reload, a certificate renewal,
Redis restarted, Redis stopped for 15 s. Clients run on this machine from an extra address on
the lab bridge; each load is bounded in clients and seconds.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable

import pytest

from tests.contract_client import Publisher, Subscribers
from tests.e2e.conftest import run
from tests.lab_fleet import deploy, derived_inventory, edited, restarted, wssfleet
from wssfleet_control import commands
from wssfleet_control.checkout import REPO

pytestmark = pytest.mark.timeout(420)

CHANNELS = 4
PER_CHANNEL = 100
# Each channel 5 messages a second: 20 a second in all, 2,000 deliveries a second.
INTERVAL = 0.2


def through(lab, source: str, fault: Callable[[], object], after: float = 5) -> dict:
    """Run the crowd through ``fault`` (called in a thread while messages flow), keep
    publishing ``after`` more seconds, then check every subscriber's messages."""

    # Fresh channels each run: an earlier run's history and publish ids would answer for them.
    run_id = uuid.uuid4().hex[:8]
    channels = [f"plane-{run_id}-{n}" for n in range(CHANNELS)]

    def connect(path: str, subject: str):
        return lab.connect(path, subject=subject, local_addr=(source, 0), open_timeout=15)

    async def scenario():
        subscribers = Subscribers(lambda path: connect(path, "subscriber"), channels, PER_CHANNEL)
        subscribers.start()
        await subscribers.until_subscribed(90)
        assert await subscribers.until_even(60), "the crowd never spread evenly"
        await asyncio.sleep(3)
        settled = subscribers.reconnections()
        publishers = [
            Publisher(lambda: connect("/ws", "publisher"), channel, INTERVAL)
            for channel in channels
        ]
        for publisher in publishers:
            publisher.start()
        await asyncio.sleep(3)
        started = time.monotonic()
        outcome = await asyncio.to_thread(fault)
        fault_seconds = time.monotonic() - started
        await asyncio.sleep(after)
        for publisher in publishers:
            await publisher.finish()
        last = {publisher.channel: publisher.last for publisher in publishers}
        await subscribers.until_caught_up(last, 60)
        await subscribers.finish()
        return subscribers, publishers, outcome, fault_seconds, settled

    subscribers, publishers, outcome, fault_seconds, settled = run(scenario(), timeout=400)
    assert all(inbox.answers for inbox in subscribers.inboxes), "a subscriber never subscribed"
    acked = {publisher.channel: publisher.acked for publisher in publishers}
    problems = []
    for number, inbox in enumerate(subscribers.inboxes):
        expected, received = acked[inbox.channel], inbox.received
        if received != expected:
            missing = sorted(set(expected) - set(received))
            extra = len(received) - len(set(received))
            problems.append(
                f"subscriber {number} on {inbox.channel}: {len(received)} received of "
                f"{len(expected)}, missing {[n for n, _ in missing[:5]]}, repeated {extra}"
            )
        lost = [answer for answer in inbox.answers if answer.get("recovered") is False]
        if lost:
            problems.append(f"subscriber {number}: history reported lost: {lost[0]}")
    assert problems == [], "\n".join(problems[:10])
    summary = {
        "acknowledged": sum(len(messages) for messages in acked.values()),
        "deliveries": sum(len(inbox.received) for inbox in subscribers.inboxes),
        "reconnections": subscribers.reconnections() - settled,
        "publish retries": sum(publisher.retries for publisher in publishers),
        "refused publishes": sum(len(publisher.refused) for publisher in publishers),
        "fault seconds": round(fault_seconds, 1),
        "outcome": outcome,
    }
    print(f"\n{summary}")
    assert summary["acknowledged"] >= CHANNELS * 10, "too few messages to prove anything"
    return summary


def test_a_killed_instance_loses_no_message(lab, source_address):
    worker = lab.fleet.workers[0]
    port = lab.ports(worker.name)[0]

    def kill():
        lab.on(worker.name, commands.signal_instance(port, "SIGKILL"))

    summary = through(lab, source_address(21), kill)
    # The kill reached clients: a quarter of them were on that instance.
    assert summary["reconnections"] >= PER_CHANNEL * CHANNELS // 8


def test_a_rolling_release_loses_no_message(lab, source_address):
    def release():
        with edited(
            REPO / "service/wssfleet/__init__.py",
            '__version__ = "0.1.0"',
            '__version__ = "0.1.0"  # a release made by test_message_plane',
        ):
            code, report, log = deploy()
        assert code == 0, log[-3000:]
        return len(restarted(report))

    try:
        summary = through(lab, source_address(22), release)
    finally:
        code, _, log = deploy()
        assert code == 0, log[-3000:]
    assert summary["outcome"] == 2 * len(lab.fleet.workers), "not every instance was released"
    assert summary["reconnections"] >= PER_CHANNEL * CHANNELS


def test_an_haproxy_reload_loses_no_message(lab, tmp_path, source_address):
    spread = 10
    changed = derived_inventory(tmp_path, hsts_max_age=86400, haproxy_close_spread=f"{spread}s")

    def reload():
        code, _, log = deploy(changed)
        assert code == 0, log[-3000:]

    try:
        summary = through(lab, source_address(23), reload, after=spread + 5)
    finally:
        code, _, log = deploy()
        assert code == 0, log[-3000:]
    # The reload reached the clients: the old process moved them over the spread.
    assert summary["reconnections"] >= PER_CHANNEL * CHANNELS // 2


def test_a_certificate_renewal_loses_no_message(lab, source_address):
    def renew():
        renewal = wssfleet("renew", "-i", "inventory/lab.py")
        assert renewal.returncode == 0, renewal.stdout + renewal.stderr
        assert "all renewals succeeded" in renewal.stdout + renewal.stderr

    summary = through(lab, source_address(24), renew)
    # A hot swap: no WebSocket noticed.
    assert summary["reconnections"] == 0


def test_a_redis_restart_loses_no_message(lab, source_address):
    redis_host = lab.fleet.redis.name

    def restart():
        result = lab.on(redis_host, "systemctl restart redis-server")
        assert result.returncode == 0, result.stderr

    summary = through(lab, source_address(25), restart)
    assert summary["reconnections"] == 0


def test_redis_down_for_15_s_refuses_publishes_aloud_and_loses_no_message(lab, source_address):
    redis_host = lab.fleet.redis.name

    def outage():
        assert lab.on(redis_host, "systemctl stop redis-server").returncode == 0
        time.sleep(15)
        assert lab.on(redis_host, "systemctl start redis-server").returncode == 0

    summary = through(lab, source_address(26), outage)
    # Publishing during the outage was refused with a reason, then retried and delivered.
    assert summary["refused publishes"] > 0
    assert summary["reconnections"] == 0
