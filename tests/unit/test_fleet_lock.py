"""The fleet lock and audit log, their shell run for real against a directory per master (the
edge stubbed: the session runs each command locally instead of over SSH)."""

from __future__ import annotations

import json
import subprocess
from types import SimpleNamespace

import pytest

from tests.unit.helpers import PEBBLE
from wssfleet_control import fleet_lock
from wssfleet_control.deployment import DeployError
from wssfleet_control.hostside import layout
from wssfleet_control.settings import resolve


class LocalMasters:
    """Masters whose state directories are directories here; ``down`` do not answer."""

    def __init__(self, root, names=("m1", "m2"), down=()) -> None:
        self.root = root
        masters = [SimpleNamespace(name=name) for name in names]
        self.fleet = SimpleNamespace(masters=masters, settings=resolve(PEBBLE))
        self.unreachable = list(down)

    def connect(self, every_host: bool = True) -> None:
        pass

    def on(self, name: str, command: str):
        state = str(self.root / name)
        done = subprocess.run(
            ["bash", "-c", command.replace(layout.STATE, state)], capture_output=True, text=True
        )
        return SimpleNamespace(ok=done.returncode == 0, stdout=done.stdout, stderr=done.stderr)

    def lock_file(self, name: str):
        return self.root / name / "fleet.lock"


@pytest.fixture
def masters(tmp_path, monkeypatch):
    monkeypatch.setattr(layout, "STATE", "/nonexistent/wssfleet-state")
    monkeypatch.setattr(layout, "FLEET_LOCK", f"{layout.STATE}/fleet.lock")
    monkeypatch.setattr(layout, "AUDIT_LOG", f"{layout.STATE}/audit.log")
    return LocalMasters(tmp_path)


def test_a_second_run_is_refused_naming_the_first_then_takes_it_once_it_ends(masters):
    first = fleet_lock.FleetLock(masters, "deploy")
    first.acquire()
    assert first.taken == ["m1", "m2"]
    second = fleet_lock.FleetLock(masters, "drain worker1")
    with pytest.raises(DeployError) as refused:
        second.acquire()
    message = str(refused.value)
    assert "the fleet lock is held on m1 by" in message and "`wssfleet deploy` since" in message
    assert "wssfleet lock release" in message
    first.finish("ok", "abc123")
    assert not masters.lock_file("m1").exists() and not masters.lock_file("m2").exists()
    second.acquire()
    second.finish("failed: worker1 is not a worker")
    _, runs = fleet_lock.audit(masters, 10)
    assert [(run["command"], run["outcome"]) for run in runs] == [
        ("deploy", "ok"),
        ("drain worker1", "failed: worker1 is not a worker"),
    ]
    assert runs[0]["release"] == "abc123" and runs[0]["commit"] and "who" in runs[0]
    assert "dirty" in runs[0] and len(runs[0]["settings"]) == 12


def test_a_run_stopped_at_a_later_master_leaves_no_lock_at_the_earlier_ones(masters):
    stale = fleet_lock.FleetLock(masters, "deploy")
    masters.unreachable = ["m1"]  # it locked m2 alone while m1 was down, then died
    stale.acquire()
    masters.unreachable = []
    racing = fleet_lock.FleetLock(masters, "rollback")
    with pytest.raises(DeployError, match="held on m2"):
        racing.acquire()
    assert not masters.lock_file("m1").exists(), "the refused run kept its lock on m1"
    released = fleet_lock.force_release(masters)
    assert released["m1"] is None and released["m2"]["command"] == "deploy"
    assert not masters.lock_file("m2").exists()
    _, runs = fleet_lock.audit(masters, 10)
    assert runs[-1]["command"] == "lock release"
    assert "removed the lock of" in runs[-1]["outcome"]


def test_no_master_answering_is_said(masters):
    masters.unreachable = ["m1", "m2"]
    with pytest.raises(DeployError, match="no master answers over SSH"):
        fleet_lock.FleetLock(masters, "deploy").acquire()


def test_the_audit_log_keeps_its_last_lines(masters, monkeypatch):
    monkeypatch.setattr(fleet_lock, "AUDIT_LINES", 3)
    for number in range(5):
        lock = fleet_lock.FleetLock(masters, f"ready worker{number}")
        lock.acquire()
        lock.finish("ok")
    lines = (masters.root / "m1" / "audit.log").read_text().splitlines()
    assert [json.loads(line)["command"] for line in lines] == [
        "ready worker2",
        "ready worker3",
        "ready worker4",
    ]
    assert oct((masters.root / "m1" / "audit.log").stat().st_mode & 0o777) == "0o600"
