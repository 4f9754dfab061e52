"""A planned move of the front door, as the control machine runs it (front_door_move.py), on
hosts that answer as told: each step in order, the handover always undone, and a clear error
when the move cannot start or does not finish. The lab test runs it for real under 400
clients (tests/e2e/test_high_availability.py)."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from wssfleet_control import front_door_move
from wssfleet_control.inventory import from_groups

VIP = "10.0.0.100"


@dataclass
class Result:
    """What Session.on returns (engine.py, not imported: it brings pyinfra and gevent)."""

    ok: bool
    stdout: str
    stderr: str


def two_masters(front_door: str = f"{VIP}/24"):
    common = {
        "wssfleet_inventory": __file__,
        "wssfleet": {
            "domain": "wss.example.test",
            "acme_server": "https://127.0.0.1:14000/dir",
            "front_door_address": front_door,
            "drain_seconds": 1,
        },
    }
    return from_groups(
        {
            "master": [
                {"name": "m1", "data": {"ssh_hostname": "10.0.0.1", **common}},
                {"name": "m2", "data": {"ssh_hostname": "10.0.0.2", **common}},
            ],
            "workers": [{"name": "w1", "data": {"ssh_hostname": "10.0.0.11", **common}}],
        }
    )


class Hosts:
    """Answers each command as a pair of masters would; the front door moves when its
    holder releases it (unless ``stuck``)."""

    def __init__(self, fleet, holder: str = "m1", stuck: bool = False, sessions=(3, 1, 0)):
        self.fleet = fleet
        self.holder = holder
        self.stuck = stuck
        self.sessions = list(sessions)
        self.ran: list[tuple[str, str]] = []

    def on(self, name: str, command: str, timeout: int = 120) -> Result:
        words = command.split()
        self.ran.append((name, " ".join(words[2:4]) if "front_door_handover" in command else ""))
        if words[:3] == ["ip", "-4", "-o"]:
            held = name == self.holder
            return Result(True, f"2: eth0 inet {VIP}/24 scope global\n" if held else "", "")
        if "front_door_handover" in command:
            step = words[2]
            if step == "release" and not self.stuck:
                self.holder = next(m.name for m in self.fleet.masters if m.name != name)
            if step == "sessions":
                left = self.sessions.pop(0) if len(self.sessions) > 1 else self.sessions[0]
                return Result(True, json.dumps({"sessions": left}), "")
            return Result(True, "{}", "")
        return Result(True, "", "")  # HAProxy answers

    def steps(self) -> list[tuple[str, str]]:
        return [(name, step) for name, step in self.ran if step and "sessions" not in step]


def test_the_holder_hands_over_sheds_and_everything_is_undone(monkeypatch):
    monkeypatch.setattr(front_door_move.time, "sleep", lambda _seconds: None)
    hosts = Hosts(two_masters())
    moved = front_door_move.move(hosts, say=lambda _line: None)
    assert (moved.away_from, moved.to, moved.sessions_left) == ("m1", "m2", 0)
    assert "moved from m1 to m2" in moved.said() and "m1 holds no client" in moved.said()
    assert hosts.steps() == [
        ("m2", f"forward {VIP}"),
        ("m1", f"release {VIP}"),
        ("m1", "shed 10.0.0.1"),
        ("m1", f"end {VIP}"),
        ("m2", f"end {VIP}"),
    ]


def test_a_master_that_does_not_take_over_stops_the_move_and_undoes_it(monkeypatch):
    clock = iter(range(0, 1000, 3))
    monkeypatch.setattr(front_door_move.time, "monotonic", lambda: next(clock))
    monkeypatch.setattr(front_door_move.time, "sleep", lambda _seconds: None)
    hosts = Hosts(two_masters(), stuck=True)
    with pytest.raises(front_door_move.MoveError, match="m2 did not take the front door"):
        front_door_move.move(hosts, say=lambda _line: None)
    assert hosts.steps()[-2:] == [("m1", f"end {VIP}"), ("m2", f"end {VIP}")]


@pytest.mark.parametrize(
    ("fleet", "holder", "arguments", "error"),
    [
        (two_masters(""), "m1", {}, "no floating front door"),
        (two_masters(), "", {}, "held by no master"),
        (two_masters(), "m1", {"to": "m9"}, "m9 is not a master of this inventory"),
        (two_masters(), "m1", {"to": "m1"}, "m1 cannot take the front door from itself"),
    ],
)
def test_a_move_that_cannot_start_says_why_and_touches_nothing(fleet, holder, arguments, error):
    hosts = Hosts(fleet, holder=holder)
    with pytest.raises(front_door_move.MoveError, match=error):
        front_door_move.move(hosts, **arguments, say=lambda _line: None)
    assert hosts.steps() == []


def test_draining_a_master_without_the_front_door_only_waits_for_its_stragglers(monkeypatch):
    monkeypatch.setattr(front_door_move.time, "sleep", lambda _seconds: None)
    hosts = Hosts(two_masters(), sessions=(2, 0))
    moved = front_door_move.move(hosts, away_from="m2", say=lambda _line: None)
    assert (moved.away_from, moved.to, moved.sessions_left) == ("m2", "m1", 0)
    assert "m2 did not hold the front door (m1 does)" in moved.said()
    # --json: the same facts, a field each.
    report = moved.report()
    assert (report["from"], report["to"], report["sessions_left"]) == ("m2", "m1", 0)
    assert report["address_moved_after_seconds"] == -1 and report["empty_after_seconds"] >= 0
    assert hosts.steps() == []
