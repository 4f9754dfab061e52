"""Day-two operations on the deployed lab: status at a glance, rolling restarts."""

from __future__ import annotations

import itertools
import json
import re
import shlex
import subprocess
import time

import pytest

from tests.lab_fleet import (
    REPO,
    changed,
    deploy,
    derived_inventory,
    edited,
    make,
    restarted,
    wssfleet,
)
from wssfleet_control.hostside.layout import (
    BACKEND,
    CURRENT,
    FLEET_LOCK,
    HAPROXY_CONFIG,
    INSTANCE_PREFIX,
    RUNTIME_HELPER,
    instance_unit,
    server_name,
)

pytestmark = pytest.mark.timeout(900)


def test_status_shows_hosts_services_certificate_and_connections(lab):
    result = make("status")
    assert result.returncode == 0, result.stderr
    output = result.stdout
    for node in lab.fleet.nodes:
        assert node.name in output
    assert "haproxy=running" in output and "redis-server=running" in output
    assert f"{INSTANCE_PREFIX}{lab.fleet.settings.worker_base_port}=running" in output
    assert "expires" in output and "Pebble" in output
    assert "prometheus=running" in output and "prometheus-node-exporter=running" in output
    assert "next planned renewal:" in output and "last renewal run:" in output
    # Live figures from Prometheus: a line per instance, every target up.
    assert "live, from Prometheus on" in output, output
    instances = [
        server_name(worker.name, port)
        for worker in lab.fleet.workers
        for port in lab.ports(worker.name)
    ]
    for instance in instances:
        assert f"\n  {instance} " in output, output
    targets = re.search(r"targets: (\d+) of (\d+) up", output)
    assert targets and targets[1] == targets[2], output
    # Every app, its route (a path on the fleet's domain, or a domain of its own), and each
    # instance where it runs with its release and HAProxy's view of it.
    for name, app in lab.fleet.settings.apps.items():
        line = next(line for line in output.splitlines() if line.startswith(f"app {name} "))
        route = f"{app.domain or lab.domain}{app.path or '/'}"
        assert line.startswith(f"app {name} ({route}): "), line
        for worker in lab.fleet.app_workers(name):
            assert re.search(rf"{worker.name}:{app.port} [0-9a-f]{{12}} UP \(\d+ open\)", line)


def started_at(lab, worker: str, port: int) -> int:
    """Monotonic start time (µs) of an instance; the lab's hosts share one kernel clock, so
    times on different hosts compare."""
    output = lab.on(
        worker, f"systemctl show -p ActiveEnterTimestampMonotonic --value {instance_unit(port)}"
    ).stdout
    return int(output)


def test_new_service_settings_restart_one_instance_at_a_time(lab, tmp_path):
    code, report, log = deploy(derived_inventory(tmp_path, messages_per_second=60))
    try:
        assert code == 0, log[-3000:]
        steps = report["rollout"]["steps"]
        every_instance = [
            (worker.name, port) for worker in lab.fleet.workers for port in lab.ports(worker.name)
        ]
        assert restarted(report) == every_instance
        assert {step["reason"] for step in steps} == {"settings changed since it started"}
        assert not [key for key in changed(report) if key[1] == lab.fleet.master.name]
        # Each instance started only after the one before it answered its health check.
        starts = [started_at(lab, host, port) for host, port in every_instance]
        assert starts == sorted(starts)
        gaps = [later - earlier for earlier, later in itertools.pairwise(starts)]
        assert min(gaps) > 200_000, gaps  # µs: at least one health check apart
    finally:
        code, _, log = deploy()
    assert code == 0, log[-3000:]


def test_connection_rate_limit_refuses_a_flooding_source(lab, tmp_path):
    import socket
    import ssl

    code, _, log = deploy(derived_inventory(tmp_path, haproxy_connection_rate_limit=50))
    try:
        assert code == 0, log[-3000:]
        outcomes = []
        for _ in range(12):
            try:
                with (
                    socket.create_connection((lab.master_address, 443), timeout=5) as raw,
                    lab.tls_context().wrap_socket(raw, server_hostname=lab.domain),
                ):
                    outcomes.append("served")
            except (ssl.SSLError, ConnectionError, OSError):
                outcomes.append("refused")
        assert outcomes[:5] == ["served"] * 5
        assert outcomes[-1] == "refused"
    finally:
        code, _, log = deploy()
    assert code == 0, log[-3000:]


def test_a_service_change_ships_a_release_and_rolls_every_instance_onto_it(lab):
    old = deploy()[1]["release"]
    with edited(
        REPO / "service" / "wssfleet" / "protocol.py",
        '"""The message protocol',
        '"""(a new release) The message protocol',
    ):
        code, report, log = deploy()
    try:
        assert code == 0, log[-3000:]
        new = report["release"]
        assert new != old
        for worker in lab.fleet.workers:
            for operation in (
                f"WebSocket service | Ensure release {new}'s wheels are on the host",
                f"WebSocket service | Ensure release {new} is installed",
            ):
                assert (operation, worker.name) in changed(report), (operation, worker.name)
        assert not [key for key in changed(report) if key[1] == lab.fleet.master.name]
        steps = report["rollout"]["steps"]
        assert len(steps) == 2 * len(lab.fleet.workers)
        assert {(step["reason"], step["outcome"]) for step in steps} == {
            (f"runs release {old}", "done")
        }
        worker = lab.fleet.workers[0]
        assert lab.on(worker.name, f"readlink {CURRENT}").stdout.strip().endswith(new)
        # --to a release no worker keeps: refused, naming what each keeps; nothing moves.
        unknown = wssfleet("rollback", "--to", "0123456789ab")
        assert unknown.returncode == 1, unknown.stderr[-2000:]
        assert "release 0123456789ab is not installed everywhere" in unknown.stderr
        assert f"{worker.name} keeps " in unknown.stderr and old in unknown.stderr
        assert lab.on(worker.name, f"readlink {CURRENT}").stdout.strip().endswith(new)
    finally:
        # `make rollback`: every instance back on the release before, drained one at a time.
        rolled = wssfleet("rollback", "--json")
    report = json.loads(rolled.stdout)
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    assert report["release"] == old
    steps = report["rollout"]["steps"]
    assert len(steps) == 2 * len(lab.fleet.workers)
    assert {(step["reason"], step["outcome"]) for step in steps} == {
        (f"runs release {new}", "done")
    }
    # Each instance says when it begins, before the drain's wait, and when it is done.
    for step in steps:
        begun = f"[{step['host']}] instance {step['port']}: runs release {new}: moving its clients"
        done = f"[{step['host']}] instance {step['port']}: runs release {new} -> restarted"
        assert rolled.stderr.index(begun) < rolled.stderr.index(done), rolled.stderr[-3000:]
    # The checkout is the old release again: a deploy has nothing to restart.
    code, report, log = deploy()
    assert code == 0, log[-3000:]
    assert report["release"] == old
    assert restarted(report) == []


def reloads(lab) -> int:
    runtime = f"python3 {RUNTIME_HELPER} reloads"
    return int(lab.on(lab.fleet.master.name, runtime).stdout)


def test_adding_a_worker_extends_the_backend_and_the_redis_firewall(lab, tmp_path):
    added = lab.fleet.workers[-1]
    reloads_before = reloads(lab)
    code, _, log = deploy(derived_inventory(tmp_path, workers=len(lab.fleet.workers) - 1))
    assert code == 0, log[-3000:]
    assert reloads(lab) == reloads_before, "removing a worker reloaded HAProxy"
    assert f"server {added.name}-" not in lab.on("master", f"cat {HAPROXY_CONFIG}").stdout
    assert added.address not in lab.on("master", "nft list table inet wssfleet").stdout

    code, _, log = deploy()
    assert code == 0, log[-3000:]
    assert reloads(lab) == reloads_before, "adding a worker reloaded HAProxy"
    assert f"server {added.name}-" in lab.on("master", f"cat {HAPROXY_CONFIG}").stdout
    assert added.address in lab.on("master", "nft list table inet wssfleet").stdout
    # HAProxy's health checks bring the new servers UP within a few check intervals.
    deadline = time.monotonic() + 30
    while True:
        servers = json.loads(lab.on("master", f"python3 {RUNTIME_HELPER} servers").stdout)
        states = [
            server["status"]
            for server in servers
            if server["backend"] == BACKEND and server["server"].startswith(f"{added.name}-")
        ]
        if (states and set(states) == {"UP"}) or time.monotonic() > deadline:
            break
        time.sleep(2)
    assert states and set(states) == {"UP"}, states


def test_one_run_at_a_time_holds_the_fleet_lock_and_every_run_is_audited(lab):
    worker = lab.fleet.workers[-1].name
    head = subprocess.run(
        ["git", "-C", str(REPO), "rev-parse", "--short=12", "HEAD"], capture_output=True, text=True
    ).stdout.strip()
    drained = wssfleet("drain", worker)
    assert drained.returncode == 0, drained.stderr[-2000:]
    left = lab.on(lab.fleet.master.name, f"test -e {FLEET_LOCK}")
    assert left.returncode != 0, "the drain left its lock"
    # A drained worker is a problem status names, with what to do, until it is ready again.
    flagged = wssfleet("status", "--json")
    assert flagged.returncode == 1, flagged.stderr[-2000:]
    problems = json.loads(flagged.stdout)["problems"]
    assert f"{worker} is out of rotation on {lab.fleet.master.name} (drained): `make ready " in (
        " ".join(problems)
    ), problems
    # `details` shows what runs where: each instance on the current release, since when,
    # and the drained worker's instances drained on every master's HAProxy.
    shown = wssfleet("details", "--json")
    assert shown.returncode == 0, shown.stderr[-2000:]
    workers = json.loads(shown.stdout)["workers"]
    assert workers.keys() == {node.name for node in lab.fleet.workers}
    # So for every app (the built-in service and each of `apps`) on each worker.
    for name, seen in workers.items():
        assert seen["apps"].keys() == {"wssfleet", *lab.fleet.apps_on(name)}, seen["apps"]
        for app in seen["apps"].values():
            assert app["current"] in app["installed"], app
            for instance in app["instances"]:
                assert instance["active"] and instance["release"] == app["current"], instance
                assert time.time() - 86400 < instance["since"] < time.time(), instance
                statuses = {master["status"] for master in instance["haproxy"].values()}
                assert statuses == ({"DRAIN"} if name == worker else {"UP"}), (name, instance)
    # Another operator's run holds the lock (a record as a live run leaves it): every
    # locked command stops and names it; `lock status` shows it.
    other = {"who": "alice", "machine": "laptop", "command": "deploy", "since": 1, "id": "x"}
    for master in lab.fleet.masters:
        lab.on(master.name, f"echo {shlex.quote(json.dumps(other))} > {FLEET_LOCK}")
    code, report, log = deploy()
    assert code == 1, log[-2000:]
    (error,) = report["errors"]
    assert f"held on {lab.fleet.master.name} by alice on laptop (`wssfleet deploy`" in error
    refused = wssfleet("ready", worker)
    assert refused.returncode == 1 and "alice on laptop" in refused.stderr, refused.stderr
    status = wssfleet("lock", "status")
    assert "alice on laptop" in status.stdout, status.stdout + status.stderr
    # That run died: `lock release` removes its lock, and says whose it was.
    released = wssfleet("lock", "release")
    assert released.returncode == 0 and "removed the lock of alice on laptop" in released.stdout
    back = wssfleet("ready", worker)
    assert back.returncode == 0, back.stderr[-2000:]
    runs = json.loads(wssfleet("audit", "--json", "-n", "4").stdout)["runs"]
    # Only runs that held the lock are audited (the refused ones did not).
    assert [run["command"] for run in runs[-3:]] == [
        f"drain {worker}",
        "lock release",
        f"ready {worker}",
    ], runs
    assert all(run["commit"] == head for run in runs[-3:]), runs
    assert runs[-3]["outcome"] == "ok" and runs[-1]["outcome"] == "ok", runs


def test_check_hosts_looks_at_every_host_before_a_deploy_would(lab):
    looked = wssfleet("check", "--hosts", "--json")
    assert looked.returncode == 0, looked.stdout[-2000:] + looked.stderr[-2000:]
    findings = {
        (finding["subject"], finding["check"]): finding
        for finding in json.loads(looked.stdout)["findings"]
    }
    for node in lab.fleet.nodes:
        for check in ("ssh", "root", "debian"):
            assert findings[(node.name, check)]["outcome"] == "ok", findings[(node.name, check)]
        assert "Debian 1" in findings[(node.name, "debian")]["detail"]
    # The lab's domain is in no DNS this machine asks: said, and not a problem.
    assert findings[(lab.domain, "dns")]["outcome"] == "warning", findings
    masters = [master.name for master in lab.fleet.masters]
    for master in masters if len(masters) > 1 else []:
        assert findings[(master, "port 80")]["outcome"] == "ok", findings[(master, "port 80")]


def test_logs_merge_the_journals_of_a_role_and_ssh_reaches_a_host(lab):
    workers = [worker.name for worker in lab.fleet.workers]
    merged = wssfleet("logs", "workers", "--since", "-3h")
    assert merged.returncode == 0, merged.stderr[-2000:]
    lines = merged.stdout.splitlines()
    assert {line.split()[0] for line in lines} == set(workers), lines[:5]
    stamps = [line.split()[1] for line in lines]
    assert stamps == sorted(stamps), "not merged in time order"
    assert any(INSTANCE_PREFIX in line for line in lines), lines[:5]
    there = wssfleet("ssh", workers[0], "cat", "/etc/hostname")
    assert there.returncode == 0 and workers[0] in there.stdout, there.stdout + there.stderr
