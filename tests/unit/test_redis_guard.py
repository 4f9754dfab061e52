"""The Redis promotion guard (wssfleet_control/hostside/redis_guard.py) against real
redis-server processes and Sentinels on loopback: a Redis the Sentinels could promote holds
what the primary held, so a primary back from a cut is never promoted over the data the new
primary acknowledged meanwhile."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from roles.redis import SENTINEL_CLIENT_USER, SENTINEL_GUARD_USER
from tests.processes import RedisServer, Replica
from tests.unit.helpers import wait_until
from tests.unit.test_sentinel import (
    GUARD_PASSWORD,
    PRIMARY_NAME,
    SENTINEL_PASSWORD,
    Sentinels,
    started_pair,
)
from wssfleet_control.checkout import REPO
from wssfleet_control.hostside.redis_guard import (
    PROMOTABLE,
    UNPROMOTABLE,
    stale_behind,
    wanted_priority,
)

GUARD = REPO / "wssfleet_control" / "hostside" / "redis_guard.py"


@pytest.mark.parametrize(
    ("replication", "current", "wanted"),
    [
        ({"role": "master"}, PROMOTABLE, UNPROMOTABLE),
        ({"role": "slave", "master_link_status": "up", "master_sync_in_progress": "0"}, 0, 100),
        ({"role": "slave", "master_link_status": "down", "master_sync_in_progress": "1"}, 100, 0),
        # The primary lost: the replica that was in step stays promotable...
        ({"role": "slave", "master_link_status": "down", "master_sync_in_progress": "0"}, 100, 100),
        # ...and one that never was stays not.
        ({"role": "slave", "master_link_status": "down", "master_sync_in_progress": "0"}, 0, 0),
    ],
)
def test_the_priority_follows_the_role_and_the_copy(replication, current, wanted):
    assert wanted_priority(replication, current) == wanted


ME, OTHER = "10.0.0.1 6379", "10.0.0.2 6379"


@pytest.mark.parametrize(
    ("views", "promoted_lately", "history_known", "follows"),
    [
        ([(OTHER, True), (OTHER, True), None], False, True, OTHER),
        # Just promoted here: the Sentinels still name the old primary for a moment.
        ([(OTHER, False), (OTHER, False), (OTHER, False)], True, True, None),
        # Just started, no promotion seen: only if the Sentinels see the other one up.
        ([(OTHER, False), (OTHER, False), (ME, True)], False, False, None),
        ([(OTHER, True), (OTHER, True), (ME, True)], False, False, OTHER),
        # No majority of all three names another, or they name this one.
        ([(OTHER, True), None, None], False, True, None),
        ([(ME, True), (ME, True), (OTHER, True)], False, True, None),
    ],
)
def test_a_primary_follows_the_one_a_majority_of_sentinels_name(
    views, promoted_lately, history_known, follows
):
    assert stale_behind(views, ME, promoted_lately, history_known) == follows


class Deployed(RedisServer):
    """As redis.conf starts Redis with several redis hosts: not promotable, and able to
    replicate whichever the Sentinels make primary."""

    def listening(self) -> list[str]:
        return [
            *super().listening(),
            "--replica-priority", "0",
            "--masteruser", "wssfleet-admin",
            "--masterauth", self.admin_password,
        ]  # fmt: skip


class DeployedReplica(Replica):
    def listening(self) -> list[str]:
        return [*super().listening(), "--replica-priority", "0"]


def priority(server: RedisServer) -> int:
    (value,) = server.cli("CONFIG", "GET", "replica-priority").values()
    return int(value)


@contextlib.contextmanager
def guarding(server: RedisServer, sentinels: Sentinels, directory: Path):
    """redis_guard.py watching ``server``, as wssfleet-redis-guard.service runs it."""
    password_file = directory / f"guard-{server.port}.auth"
    password_file.write_text(server.admin_password + "\n")
    sentinel_password_file = directory / "sentinel-client.auth"
    sentinel_password_file.write_text(GUARD_PASSWORD + "\n")
    log = directory / f"guard-{server.port}.log"
    with log.open("w") as output:
        guard = subprocess.Popen(
            [sys.executable, str(GUARD), "--port", str(server.port), "--user", "wssfleet-admin",
             "--password-file", str(password_file), "--address", "127.0.0.1",
             "--primary-name", PRIMARY_NAME, "--sentinel-user", SENTINEL_GUARD_USER,
             "--sentinel-password-file", str(sentinel_password_file), "--interval", "0.2",
             *(f"--sentinel=127.0.0.1:{port}" for port in sentinels.ports)],
            stdout=output, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        yield log
    finally:
        guard.terminate()
        guard.wait(timeout=10)


def sentinels_naming(sentinels: Sentinels, server: RedisServer) -> int:
    """How many of the Sentinels name ``server`` as the primary."""
    import redis

    naming = 0
    for port in sentinels.ports:
        asking = redis.Redis(
            port=port, username=SENTINEL_CLIENT_USER, password=SENTINEL_PASSWORD, socket_timeout=1
        )
        with asking, contextlib.suppress(redis.ConnectionError, redis.TimeoutError):
            answer = asking.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", PRIMARY_NAME)
            naming += int(answer[1]) == server.port
    return naming


def test_a_primary_back_from_a_cut_is_not_promoted_over_what_the_new_one_acknowledged(tmp_path):
    first, second = started_pair(tmp_path, Deployed, DeployedReplica)
    # As deployed (redis_failover_after: 1.5 s).
    sentinels = Sentinels(tmp_path, first, down_after_ms=1500)
    try:
        with (
            guarding(first, sentinels, tmp_path) as first_log,
            guarding(second, sentinels, tmp_path) as second_log,
        ):
            wait_until(lambda: priority(second) == PROMOTABLE, 20, "the replica in step", 0.2)
            assert priority(first) == UNPROMOTABLE
            # The primary cut (frozen): the Sentinels promote the replica, which acknowledges
            # a write the old primary never saw.
            os.kill(first.process.pid, signal.SIGSTOP)
            try:
                wait_until(
                    lambda: sentinels_naming(sentinels, second) == 3, 30, "the failover", 0.2
                )
                wait_until(lambda: second.cli("ROLE")[0] == b"master", 10, "promoted", 0.2)
                second.cli("SET", "wssfleet:acknowledged", "after the failover")
                assert second.cli("WAIT", "0", "0") == 0  # no replica has it: only here
            finally:
                os.kill(first.process.pid, signal.SIGCONT)
            # The old primary answers again, still calling itself primary, and the new one is
            # cut at once: the only Redis left to promote is the one back from the cut, which
            # lacks the acknowledged write. Its guard makes it a replica of the new one (the
            # Sentinels would take about 10 s), which it cannot copy while that one is cut.
            os.kill(second.process.pid, signal.SIGSTOP)
            try:
                wait_until(
                    lambda: "stale primary made a replica" in first_log.read_text(), 3, "demoted"
                )
                stale_since = time.monotonic()
                while time.monotonic() < stale_since + 12:
                    assert priority(first) == UNPROMOTABLE
                    assert sentinels_naming(sentinels, first) == 0, "the stale primary promoted"
                    time.sleep(0.5)
            finally:
                os.kill(second.process.pid, signal.SIGCONT)
            # The new primary back: the old one copies it, and only then may be promoted.
            wait_until(lambda: first.cli("ROLE")[0] == b"slave", 60, "the old primary a replica")
            wait_until(lambda: priority(first) == PROMOTABLE, 30, "the old primary in step", 0.2)
            assert first.cli("GET", "wssfleet:acknowledged") == b"after the failover"
            assert sentinels_naming(sentinels, second) == 3
        assert '"to": 0' in second_log.read_text()  # it was lowered once it was primary
    finally:
        sentinels.stop()
        second.stop()
        first.stop()
