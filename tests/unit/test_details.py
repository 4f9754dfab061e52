"""`wssfleet details` as an operator reads it: each worker's releases, each instance's
release, age, settings and HAProxy state, and what could not be looked at."""

import re
import time

from wssfleet_control.details import render


def report(**worker2) -> dict:
    started = time.time() - 600
    seen = {"master": {"status": "UP", "connections": 12}, "master2": None}
    builtin = {
        "current": "bbbbbbbbbbbb",
        "installed": ["aaaaaaaaaaaa", "bbbbbbbbbbbb"],
        "instances": [
            {
                "port": 8001,
                "active": True,
                "release": "bbbbbbbbbbbb",
                "since": started,
                "stale": False,
                "haproxy": seen,
            },
            {
                "port": 8002,
                "active": True,
                "release": "aaaaaaaaaaaa",
                "since": started,
                "stale": True,
                "haproxy": {"master": {"status": "DRAIN", "connections": 0}, "master2": None},
            },
            {
                "port": 8003,
                "active": False,
                "release": None,
                "since": None,
                "stale": False,
                "haproxy": {"master": None, "master2": None},
            },
        ],
    }
    chat = {
        "current": "cccccccccccc",
        "installed": ["cccccccccccc"],
        "instances": [
            {
                "port": 8111,
                "active": True,
                "release": "cccccccccccc",
                "since": started,
                "stale": False,
                "haproxy": seen,
            },
        ],
    }
    return {
        "workers": {
            "worker1": {"reachable": True, **builtin,
                        "apps": {"wssfleet": builtin, "chat": chat}},
            "worker2": {"reachable": False, **worker2},
        },
        "masters_unreachable": ["master2"],
    }  # fmt: skip


def test_each_instance_shows_its_release_age_settings_and_haproxys_view():
    lines = render(report()).splitlines()
    assert lines[0] == (
        "worker1: current release bbbbbbbbbbbb; installed: aaaaaaaaaaaa, bbbbbbbbbbbb"
    )
    assert lines[1].split() == ["instance", "release", "running", "since", "settings", "master",
                                "master2"]  # fmt: skip
    first, second, third = lines[2:5]
    assert first.split()[:2] == ["8001", "bbbbbbbbbbbb"] and "(10 min ago)" in first
    assert re.split(r"\s{2,}", first.strip())[-2:] == ["UP, 12 open", "?"]
    assert "OLDER than the host's" in second and "DRAIN, 0 open" in second
    assert third.split()[:3] == ["8003", "-", "STOPPED"]


def test_each_app_on_a_worker_shows_its_own_releases_and_instances():
    lines = render(report()).splitlines()
    heading = lines.index(
        "worker1, app chat: current release cccccccccccc; installed: cccccccccccc"
    )
    assert lines[heading + 2].split()[:2] == ["8111", "cccccccccccc"]


def test_what_could_not_be_looked_at_is_said():
    text = render(report())
    assert "worker2: does not answer over SSH" in text
    assert "master2: does not answer: its HAProxy's view is missing above" in text
