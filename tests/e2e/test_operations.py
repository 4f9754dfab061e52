"""Day-two operations on the deployed lab: status at a glance, rolling restarts."""

from __future__ import annotations

import time

import pytest

from tests.lab_fleet import changed, deploy, derived_inventory, make

pytestmark = pytest.mark.timeout(900)

ROLLING = (
    "WebSocket service | Ensure running instances serve the current release (one host at a time)"
)


def test_status_shows_hosts_services_certificate_and_connections(lab):
    result = make("status")
    assert result.returncode == 0, result.stderr
    output = result.stdout
    for node in lab.fleet.nodes:
        assert node.name in output
    assert "haproxy=running" in output and "redis-server=running" in output
    assert f"wssfleet@{lab.fleet.settings.worker_base_port}=running" in output
    assert "expires" in output and "Pebble" in output
    assert output.count("(UP)") == sum(
        int(lab.on(worker.name, "nproc").stdout) for worker in lab.fleet.workers
    )


def started_at(lab, worker: str) -> list[int]:
    """Monotonic start times (µs) of a worker's instances; the lab's hosts share one kernel
    clock, so times on different hosts compare."""
    ports = lab.fleet.worker_ports(int(lab.on(worker, "nproc").stdout))
    units = " ".join(f"wssfleet@{port}" for port in ports)
    output = lab.on(
        worker, f"systemctl show -p ActiveEnterTimestampMonotonic --value {units}"
    ).stdout
    return sorted(int(value) for value in output.split())


def test_new_service_settings_restart_one_worker_host_at_a_time(lab, tmp_path):
    first, second = (worker.name for worker in lab.fleet.workers[:2])
    code, statuses, output = deploy(derived_inventory(tmp_path, messages_per_second=60))
    try:
        assert code == 0, output[-3000:]
        assert (ROLLING, first) in changed(statuses) and (ROLLING, second) in changed(statuses)
        assert not [key for key in changed(statuses) if key[1] == lab.fleet.master.name]
        # Whichever host goes first, the other restarts only after all of its instances
        # are back: the two restart windows do not overlap.
        earlier, later = sorted((started_at(lab, first), started_at(lab, second)))
        assert max(earlier) < min(later)
    finally:
        code, _, output = deploy()
    assert code == 0, output[-3000:]


def test_connection_rate_limit_refuses_a_flooding_source(lab, tmp_path):
    import socket
    import ssl

    code, _, output = deploy(derived_inventory(tmp_path, haproxy_connection_rate_limit=5))
    try:
        assert code == 0, output[-3000:]
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
        code, _, output = deploy()
    assert code == 0, output[-3000:]


def test_a_new_release_ships_wheels_and_rolls_the_workers(lab):
    # A different build timestamp makes a different wheel: to the deploy, a new release.
    code, statuses, output = deploy(env={"SOURCE_DATE_EPOCH": "1700000000"})
    try:
        assert code == 0, output[-3000:]
        for worker in lab.fleet.workers:
            for operation in (
                "WebSocket service | Ensure the release's wheels are on the host",
                "WebSocket service | Ensure the release is installed in the virtualenv",
                ROLLING,
            ):
                assert (operation, worker.name) in changed(statuses), (operation, worker.name)
        assert not [key for key in changed(statuses) if key[1] == lab.fleet.master.name]
        health = lab.on(
            lab.fleet.workers[0].name,
            f"python3 -c 'import urllib.request; print(urllib.request.urlopen("
            f'"http://{lab.fleet.workers[0].address}:{lab.fleet.settings.worker_base_port}'
            "/healthz\").read().decode())'",
        )
        assert '"status": "ok"' in health.stdout
    finally:
        code, _, output = deploy()
    assert code == 0, output[-3000:]


def test_adding_a_worker_extends_the_backend_and_the_redis_firewall(lab, tmp_path):
    added = lab.fleet.workers[-1]
    code, _, output = deploy(derived_inventory(tmp_path, workers=len(lab.fleet.workers) - 1))
    assert code == 0, output[-3000:]
    assert f"server {added.name}-" not in lab.on("master", "cat /etc/haproxy/haproxy.cfg").stdout
    assert added.address not in lab.on("master", "nft list table inet wssfleet").stdout

    code, _, output = deploy()
    assert code == 0, output[-3000:]
    assert f"server {added.name}-" in lab.on("master", "cat /etc/haproxy/haproxy.cfg").stdout
    assert added.address in lab.on("master", "nft list table inet wssfleet").stdout
    # HAProxy's health checks bring the new servers UP within a few check intervals.
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        status = make("status").stdout
        line = next(
            line
            for line in status.splitlines()
            if line.strip().startswith(added.name) and "(" in line and ":" in line.split()[1]
        )
        if "DOWN" not in line and "UP" in line:
            break
        time.sleep(2)
    assert "DOWN" not in line and "UP" in line, line
