"""The message plane's guarantee, in the lab: 400 subscribers on 4 channels come back with
``since`` after every reconnection, 4 publishers publish with ids and retry until acknowledged,
and through each fault every acknowledged message reaches every subscriber exactly once and in
order, with no history ever reported lost.

Faults: an instance SIGKILLed, a rolling release, an HAProxy reload, a certificate renewal,
Redis restarted, Redis stopped for 15 s. Clients run on this machine from an extra address on
the lab bridge; each load is bounded in clients and seconds.
"""

from __future__ import annotations

import time

import pytest

from tests.e2e.crowd import CHANNELS, PER_CHANNEL, through
from tests.lab_fleet import deploy, derived_inventory, edited, restarted, wssfleet
from wssfleet_control import commands
from wssfleet_control.checkout import REPO

pytestmark = pytest.mark.timeout(420)


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
    redis_host = lab.redis_primary()

    def restart():
        result = lab.on(redis_host, "systemctl restart redis-server")
        assert result.returncode == 0, result.stderr

    summary = through(lab, source_address(25), restart)
    assert summary["reconnections"] == 0


def test_redis_down_for_15_s_refuses_publishes_aloud_and_loses_no_message(lab, source_address):
    redis_host = lab.redis_primary()

    def outage():
        assert lab.on(redis_host, "systemctl stop redis-server").returncode == 0
        time.sleep(15)
        assert lab.on(redis_host, "systemctl start redis-server").returncode == 0

    summary = through(lab, source_address(26), outage)
    # Publishing during the outage was refused with a reason, then retried and delivered.
    assert summary["refused publishes"] > 0
    assert summary["reconnections"] == 0
