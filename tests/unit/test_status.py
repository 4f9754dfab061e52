"""`wssfleet status`: what counts as a problem (exit 1), and the JSON document scripts read.
The lab tests run it against real hosts; here the report is built by hand."""

from __future__ import annotations

import copy
import json
from datetime import UTC, datetime, timedelta

import pytest

from wssfleet_control.status import problems, render

HEALTHY = {
    "hosts": [
        {
            "name": "master",
            "address": "10.0.0.10",
            "roles": ["master", "redis", "sentinel", "monitoring"],
            "reachable": True,
            "units": {"haproxy": "running", "wssfleet-firewall": "exited"},
        },
        {
            "name": "worker1",
            "address": "10.0.0.11",
            "roles": ["workers", "sentinel"],
            "reachable": True,
            "units": {"wssfleet@8001": "running"},
        },
    ],
    "front_door": {"mode": "floating", "address": "10.0.0.100", "holders": ["master"]},
    "redis": {
        "primary": "master",
        "sentinels": 3,
        "sentinels_answering": 3,
        "quorum": "OK 3 usable Sentinels",
        "replicas": [
            {"name": "master2", "state": "online", "bytes_behind": 0, "last_ack_seconds": 0}
        ],
    },
    "domains": ["wss.example.org"],
    "certificates": {
        "master": {"not_after": "Mar  1 00:00:00 2027 GMT", "issuer": "R3", "sha256": "ab" * 32},
        "master2": {"not_after": "Mar  1 00:00:00 2027 GMT", "issuer": "R3", "sha256": "ab" * 32},
    },
    "renewal": {"last_success": 1, "last_attempt": 1.0, "next_renewal": 2.0},
    "instances": {"worker1": {"8001": "cfa1499c75e1", "8002": "stopped"}},
    "apps": {
        "chat": {
            "route": "wss.example.org/chat",
            "instances": [
                {
                    "host": "worker1",
                    "port": 8111,
                    "release": "6d30c8b3ee34",
                    "haproxy": "UP",
                    "sessions": 4,
                },
                {
                    "host": "worker2",
                    "port": 8111,
                    "release": "6d30c8b3ee34",
                    "haproxy": "UP",
                    "sessions": 0,
                },
            ],
        }
    },
    "drained": {"master": [], "master2": []},
    "live": {
        "source": "master",
        "instances": {"worker1-8001": {"connections": 3.0}},
        "targets": [
            {
                "job": "wssfleet",
                "instance": "worker1:9001",
                "host": "worker1",
                "health": "up",
                "error": "",
            }
        ],
        "alerts": [
            {
                "name": "WssfleetWatchdog",
                "state": "firing",
                "labels": {"severity": "none"},
                "summary": "the alerting pipeline works",
                "runbook": "docs/runbooks.md#wssfleetwatchdog",
            },
            {
                "name": "WssfleetFrontDoorMoved",
                "state": "firing",
                "labels": {"severity": "warning"},
                "summary": "moved",
                "runbook": "docs/runbooks.md#wssfleetfrontdoormoved",
            },
        ],
    },
    "connections": None,
}


def broken(change) -> dict:
    report = copy.deepcopy(HEALTHY)
    change(report)
    return report


def test_a_healthy_fleet_has_no_problem_and_a_warning_is_shown_not_counted():
    assert problems(HEALTHY) == []
    text = render({**HEALTHY, "problems": []})
    assert "front door: 10.0.0.100 held by master\n" in text
    assert "Redis: primary master (3 of 3 Sentinels answer; OK 3 usable Sentinels)" in text
    assert (
        "FIRING WssfleetFrontDoorMoved: moved "
        "(what to do: docs/runbooks.md#wssfleetfrontdoormoved)" in text
    )
    assert "problems" not in text
    assert "instances on worker1: 8001 cfa1499c75e1, 8002 stopped" in text
    assert (
        "app chat (wss.example.org/chat): worker1:8111 6d30c8b3ee34 UP (4 open), "
        "worker2:8111 6d30c8b3ee34 UP (0 open)" in text
    )
    # The watchdog always fires, on purpose: neither a problem nor shown.
    assert "alerts: 1 firing" in text and "Watchdog" not in text


@pytest.mark.parametrize(
    ("change", "named"),
    [
        (lambda r: r["hosts"][1].update(reachable=False, units={}), "worker1: does not answer"),
        (lambda r: r["hosts"][0]["units"].update(haproxy="failed"), "master: haproxy is failed"),
        (lambda r: r["front_door"].update(holders=[]), "held by no master"),
        (lambda r: r["front_door"].update(holders=["master", "master2"]), "master and master2"),
        (lambda r: r["redis"].update(primary=None), "Redis: no Sentinel answers"),
        (lambda r: r["redis"].update(replicas=[]), "Redis: no replica online"),
        (lambda r: r["certificates"].update(master2=None), "master2: its certificate"),
        (lambda r: r["certificates"]["master2"].update(sha256="cd" * 32), "different certificates"),
        (lambda r: r["renewal"].update(last_success=0), "the last certificate renewal failed"),
        (lambda r: r.update(live=None), "Prometheus answers on no monitoring host"),
        (lambda r: r["live"]["targets"][0].update(health="down"), "target down: wssfleet"),
        (
            lambda r: r["live"]["alerts"][1].update(labels={"severity": "critical"}),
            "alert firing: WssfleetFrontDoorMoved",
        ),
        (
            lambda r: r["instances"]["worker1"].update({"8002": "0123456789ab"}),
            "instances run different releases (cfa1499c75e1 on worker1/8001; 0123456789ab on "
            "worker1/8002): a rollout stopped half way?",
        ),
        (
            lambda r: r["apps"]["chat"]["instances"][1].update(release="stopped"),
            "app chat on worker2:8111 is stopped",
        ),
        (
            lambda r: r["apps"]["chat"]["instances"][0].update(haproxy="DOWN"),
            "app chat on worker1:8111 fails its health check (HAProxy: DOWN)",
        ),
        (
            lambda r: r["apps"]["chat"]["instances"][0].update(release="0123456789ab"),
            "app chat's instances run different releases (0123456789ab, 6d30c8b3ee34)",
        ),
        (
            lambda r: r["drained"].update(master2=["worker1"]),
            "worker1 is out of rotation on master2 (drained): `make ready WORKER=worker1`",
        ),
    ],
)
def test_each_problem_is_named(change, named):
    report = broken(change)
    found = problems(report)
    assert len(found) == 1 and named in found[0], found
    assert f"problems (1):\n  {found[0]}" in render({**report, "problems": found})


def test_the_json_document_round_trips():
    report = {**HEALTHY, "problems": problems(HEALTHY)}
    assert json.loads(json.dumps(report)) == report


def openssl_date(days_from_now: float) -> str:
    moment = datetime.now(UTC) + timedelta(days=days_from_now)
    return moment.strftime("%b %d %H:%M:%S %Y GMT")


@pytest.mark.parametrize("source", ["files", "private_ca"])
def test_a_provided_certificate_is_a_problem_14_days_before_it_expires(source):
    report = copy.deepcopy(HEALTHY)
    report.update(certificate_source=source, renewal=None)
    for served in report["certificates"].values():
        served["not_after"] = openssl_date(15)
    assert problems(report) == []
    text = render({**report, "problems": []})
    assert f"; source {source}):" in text and "  renewal: " in text, text
    assert "next planned renewal" not in text
    report["certificates"]["master2"]["not_after"] = openssl_date(13)
    [found] = problems(report)
    assert found.startswith("master2: the certificate expires in 13.0 days"), found
    assert f"certificate_source={source}: " in found
