"""Observability end to end: Prometheus on the master scrapes the real fleet, its alerts fire
when an instance stops or a renewal fails (read from Prometheus's API), and the metrics ports
answer the monitoring host only."""

from __future__ import annotations

import asyncio
import json
import shlex
import socket
import time
from urllib.parse import urlsplit

import pytest

from tests.e2e.conftest import run
from tests.lab_fleet import REPO, deploy, derived_inventory, make, wssfleet
from wssfleet_control import commands
from wssfleet_control.hostside.layout import (
    CANARY_METRICS_PORT,
    HAPROXY_METRICS_PORT,
    NODE_EXPORTER_PORT,
    PROMETHEUS_PORT,
    PROMETHEUS_QUERY_HELPER,
    REDIS_EXPORTER_PORT,
    instance_unit,
    server_name,
)
from wssfleet_control.settings import seconds_of

pytestmark = pytest.mark.timeout(600)

# A rule's "for", then at most a scrape interval to see it and an evaluation interval to judge
# it (both prometheus_scrape_interval), and a few seconds for this test's own polling.
POLL_SECONDS = 2
SLACK_SECONDS = 5
INSTANCE_DOWN_FOR = 30
BLOCK_TABLE = "wssfleet_test_block_acme"
CAN_CONNECT = """
import socket, sys
try:
    socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=3).close()
    print("open")
except OSError as error:
    print("closed", error)
"""


def prometheus(lab, *arguments: str, monitoring=None):
    monitoring = monitoring or lab.fleet.monitoring
    command = " ".join(shlex.quote(part) for part in arguments)
    result = lab.on(
        monitoring.name,
        f"python3 {PROMETHEUS_QUERY_HELPER} {monitoring.address}:{PROMETHEUS_PORT} {command}",
    )
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def alert_states(lab, name: str) -> list[dict]:
    return [alert for alert in prometheus(lab, "alerts") if alert["name"] == name]


def wait_for(condition, seconds: float, what: str):
    """Poll ``condition`` until it returns something true; returns (value, seconds taken)."""
    started = time.monotonic()
    while True:
        value = condition()
        if value:
            return value, time.monotonic() - started
        if time.monotonic() - started > seconds:
            raise AssertionError(f"{what}: not within {seconds:.0f} s")
        time.sleep(POLL_SECONDS)


def interval(lab) -> float:
    return seconds_of(lab.fleet.settings.prometheus_scrape_interval)


def test_a_stopped_instance_fires_instance_down_within_the_rules_time(lab):
    worker = lab.fleet.workers[0]
    port = lab.ports(worker.name)[-1]
    server = server_name(worker.name, port)
    up = f'up{{job="wssfleet", server="{server}"}}'

    def scraped_up():
        return any(sample["value"][1] == "1" for sample in prometheus(lab, "query", up))

    wait_for(scraped_up, 4 * interval(lab), f"{server} scraped")
    stopped = lab.on(worker.name, f"systemctl stop {instance_unit(port)}")
    assert stopped.returncode == 0, stopped.stderr
    try:

        def firing():
            return any(
                alert["state"] == "firing" and alert["labels"].get("server") == server
                for alert in alert_states(lab, "WssfleetInstanceDown")
            )

        bound = INSTANCE_DOWN_FOR + 2 * interval(lab) + SLACK_SECONDS
        _, took = wait_for(firing, bound, f"WssfleetInstanceDown for {server}")
        # Not before the rule's "for": a scrape or two missed is no alert.
        assert took >= INSTANCE_DOWN_FOR, took
        print(f"WssfleetInstanceDown fired {took:.0f} s after the stop (bound {bound:.0f} s)")
    finally:
        lab.on(worker.name, f"systemctl start {instance_unit(port)}")

    def resolved():
        return scraped_up() and not any(
            alert["labels"].get("server") == server
            for alert in alert_states(lab, "WssfleetInstanceDown")
        )

    wait_for(resolved, 4 * interval(lab) + SLACK_SECONDS, f"{server} back and its alert gone")


def test_a_failed_renewal_fires_its_alert_and_shows_in_status_until_one_succeeds(lab):
    master = lab.fleet.master
    acme = urlsplit(lab.described["acme_directory"])
    # The ACME server becomes unreachable from the master: certbot fails as on a real outage.
    block = (
        f"nft add table inet {BLOCK_TABLE} && "
        f"nft add chain inet {BLOCK_TABLE} output "
        "'{ type filter hook output priority 0; }' && "
        f"nft add rule inet {BLOCK_TABLE} output ip daddr {acme.hostname} "
        f"tcp dport {acme.port} reject with tcp reset"
    )
    assert lab.on(master.name, block).returncode == 0

    def firing():
        return any(
            alert["state"] == "firing"
            for alert in alert_states(lab, "WssfleetCertificateRenewalFailed")
        )

    try:
        failed = wssfleet("renew", "-i", "inventory/lab.py", timeout=300)
        assert failed.returncode != 0, failed.stdout
        assert "the renewal failed" in failed.stderr
        bound = 2 * interval(lab) + SLACK_SECONDS
        _, took = wait_for(firing, bound, "WssfleetCertificateRenewalFailed")
        print(f"WssfleetCertificateRenewalFailed fired {took:.0f} s after the failed run")
        status = wssfleet("status")  # its own exit code (make says 2 for any)
        assert "last renewal run:" in status.stdout and "FAILED" in status.stdout, status.stdout
        assert "FIRING WssfleetCertificateRenewalFailed" in status.stdout, status.stdout
        # With its runbook (runbook_base_url unset in the lab: the repository's path).
        assert "(what to do: docs/runbooks.md#wssfleetcertificaterenewalfailed)" in status.stdout
        assert status.returncode == 1, status.stderr
        assert "  the last certificate renewal failed" in status.stdout, status.stdout
    finally:
        lab.on(master.name, f"nft delete table inet {BLOCK_TABLE}")
    renewed = wssfleet("renew", "-i", "inventory/lab.py", timeout=300)
    assert renewed.returncode == 0, renewed.stdout + renewed.stderr
    wait_for(lambda: not firing(), 2 * interval(lab) + SLACK_SECONDS, "the alert cleared")
    assert "succeeded" in make("status").stdout


def can_connect(lab, source: str, address: str, port: int) -> bool:
    result = lab.on(source, f"python3 -c {shlex.quote(CAN_CONNECT)} {address} {port}")
    assert result.returncode == 0, result.stderr
    return result.stdout.startswith("open")


def test_metrics_ports_answer_the_monitoring_host_and_nobody_else(lab):
    fleet = lab.fleet
    worker, other = fleet.workers[0], fleet.workers[1]
    metrics_port = fleet.settings.metrics_port(lab.ports(worker.name)[0])
    inside = [
        (worker.address, metrics_port),
        (worker.address, NODE_EXPORTER_PORT),
        (fleet.master.address, HAPROXY_METRICS_PORT),
        (fleet.redis.address, REDIS_EXPORTER_PORT),
        (fleet.masters[-1].address, CANARY_METRICS_PORT),
    ]
    for address, port in inside:
        assert can_connect(lab, fleet.monitoring.name, address, port), (address, port)
    # Another worker of the fleet is not the monitoring host: refused like anyone else.
    for address, port in inside[:2]:
        assert not can_connect(lab, other.name, address, port), (address, port)
    # From outside the fleet (this machine, on the lab bridge): nothing, Prometheus included.
    for address, port in [*inside, (fleet.monitoring.address, PROMETHEUS_PORT)]:
        assert not _reachable_from_here(address, port), (address, port)


def _reachable_from_here(address: str, port: int) -> bool:
    try:
        socket.create_connection((address, port), timeout=3).close()
    except OSError:
        return False
    return True


def test_prometheus_counts_the_connections_clients_hold(lab):
    clients = 6
    query = "sum(wssfleet_connections)"

    def total() -> float:
        return sum(float(sample["value"][1]) for sample in prometheus(lab, "query", query))

    async def scenario():
        before = await asyncio.to_thread(total)
        opened = [await lab.connect(subject=f"counted{n}") for n in range(clients)]

        def counted():
            return total() >= before + clients - 0.5 or None

        try:
            await asyncio.to_thread(wait_for, counted, 3 * interval(lab), "connections counted")
        finally:
            for ws in opened:
                await ws.close()

    # Whatever else holds connections, the six of this test show up within a few scrapes.
    run(scenario(), timeout=120)


def test_status_falls_back_to_haproxy_when_prometheus_does_not_answer(lab):
    # Every monitoring host's: status asks the next one when one does not answer.
    monitors = lab.fleet.monitors
    for monitoring in monitors:
        assert lab.on(monitoring.name, "systemctl stop prometheus").returncode == 0
    try:
        status = wssfleet("status")  # its own exit code (make says 2 for any)
    finally:
        for monitoring in monitors:
            lab.on(monitoring.name, "systemctl start prometheus")
    # No Prometheus to read alerts from is a problem in itself: status says so, and exits 1.
    assert status.returncode == 1, status.stderr
    assert "  Prometheus answers on no monitoring host" in status.stdout, status.stdout
    assert "Prometheus did not answer" in status.stdout, status.stdout
    assert "open connections per worker instance (HAProxy runtime API)" in status.stdout
    assert status.stdout.count("(UP)") == sum(len(lab.ports(w.name)) for w in lab.fleet.workers)
    wait_for(prometheus_sees_every_target_up, 90, "Prometheus back, every target scraped")


def prometheus_sees_every_target_up() -> bool:
    live = json.loads(wssfleet("status", "--json").stdout)["live"]
    return live is not None and all(target["health"] == "up" for target in live["targets"])


def test_a_monitoring_group_moves_prometheus_and_the_firewall_follows(lab, tmp_path):
    fleet = lab.fleet
    elsewhere = fleet.workers[-1]
    first = fleet.workers[0]
    instance = (first.address, fleet.settings.metrics_port(lab.ports(first.name)[0]))
    code, _, log = deploy(derived_inventory(tmp_path, monitoring=elsewhere.name))
    try:
        assert code == 0, log[-3000:]
        master_prometheus = lab.on(fleet.master.name, "systemctl is-active prometheus")
        assert master_prometheus.stdout.strip() == "inactive", master_prometheus.stdout

        # Every instance, every host's node_exporter, each master's HAProxy and canary, each
        # Redis, Prometheus itself, and each instance of an app that serves metrics.
        expected = (
            sum(len(lab.ports(w.name)) for w in fleet.workers)
            + len(fleet.nodes)
            + 2 * len(fleet.masters)
            + len(fleet.redis_nodes)
            + 1
            + sum(
                len(app.ports()) * len(fleet.app_workers(name))
                for name, app in fleet.settings.apps.items()
                if app.metrics_path
            )
        )

        def all_up():
            targets = prometheus(lab, "summary", monitoring=elsewhere)["targets"]
            return len(targets) == expected and all(t["health"] == "up" for t in targets)

        wait_for(all_up, 6 * interval(lab), f"every target up in {elsewhere.name}'s Prometheus")
        # The metrics ports now answer the new monitoring host, and no longer the master.
        assert can_connect(lab, elsewhere.name, *instance)
        assert not can_connect(lab, fleet.master.name, *instance)
    finally:
        code, _, log = deploy()
        assert code == 0, log[-3000:]
    assert lab.on(fleet.master.name, "systemctl is-active prometheus").stdout.strip() == "active"
    assert lab.on(elsewhere.name, "systemctl is-active prometheus").stdout.strip() == "inactive"

    # Back as it was, every target scraped again by the master's Prometheus (tests after this
    # one read the figures: `status` once saw 4 of 15 targets up here).
    def all_up_on_the_master():
        targets = prometheus(lab, "summary")["targets"]
        return len(targets) == expected and all(t["health"] == "up" for t in targets)

    wait_for(all_up_on_the_master, 6 * interval(lab), "every target up in the master's Prometheus")


def test_every_panel_of_the_grafana_dashboard_has_data_in_the_labs_prometheus(lab):
    dashboard = json.loads((REPO / "docs" / "grafana" / "wssfleet.json").read_text())
    queries = [
        (panel["title"], target["expr"])
        for panel in dashboard["panels"]
        for target in panel["targets"]
    ]

    def empty() -> list[str]:
        # The helper exits non-zero (failing the test) on a query Prometheus refuses.
        return [f"{title}: {expr}" for title, expr in queries if not prometheus(lab, "query", expr)]

    async def with_traffic() -> list[str]:
        # A client echoing, so the rates over the last minute have something to count
        # whatever ran before this test; until every panel has data, or 60 s.
        async with await lab.connect() as ws:
            deadline = time.monotonic() + 60
            while True:
                for _ in range(10):
                    await ws.send(json.dumps({"type": "echo", "data": "panel"}))
                    await ws.recv()
                    await asyncio.sleep(0.2)
                missing = await asyncio.to_thread(empty)
                if not missing or time.monotonic() > deadline:
                    return missing

    missing = run(with_traffic(), timeout=120)
    assert not missing, "panels without data:\n" + "\n".join(missing)


# Issue 36: the canary alerts within 15 s of an instance that stops delivering.
CANARY_ALERT_BOUND_SECONDS = 15
STALL_TABLE = "wssfleet_test_stall"
# On the Redis primary: every connection from the worker stays answered except the instance's
# pub/sub and history connections (named bus:… and read:… by the service), and no new one
# is: the instance's subscription goes silent, it cannot resubscribe, and it stays up.
STALL = """
import re, subprocess, sys
worker, port, redis_port = sys.argv[1], sys.argv[2], sys.argv[3]
listed = subprocess.run(sys.argv[4], shell=True, capture_output=True, text=True, check=True)
kept, cut = [], []
for line in listed.stdout.splitlines():
    address = re.search(r"addr=([0-9.]+):([0-9]+) ", line)
    name = re.search(r" name=(\\S*)", line)
    if not address or address.group(1) != worker:
        continue
    silenced = re.fullmatch(rf"(bus|read):.*:{port}", name.group(1) if name else "")
    (cut if silenced else kept).append(address.group(2))
if len(cut) != 2:
    sys.exit(f"expected the instance's bus and read connections, found {cut}")
elements = f"elements = {{ {', '.join(kept)} }}" if kept else ""
rules = f'''table inet {sys.argv[5]} {{
    set kept {{ type inet_service; {elements} }}
    chain out {{
        type filter hook output priority 0;
        ip daddr {worker} tcp sport {redis_port} tcp dport != @kept drop
    }}
}}'''
subprocess.run(["nft", "-f", "-"], input=rules, text=True, check=True)
print(" ".join(cut))
"""


def canary_figures(lab, expression: str) -> dict[tuple[str, str], float]:
    """(canary's master, instance) -> the value, for a canary metric."""
    return {
        (sample["metric"]["host"], sample["metric"]["server"]): float(sample["value"][1])
        for sample in prometheus(lab, "query", expression)
    }


def test_the_canary_alerts_within_15_s_when_one_instance_stops_delivering(lab):
    fleet = lab.fleet
    worker = fleet.workers[0]
    port = lab.ports(worker.name)[0]
    stalled = server_name(worker.name, port)
    servers = {server_name(w.name, p) for w in fleet.workers for p in lab.ports(w.name)}
    masters = {master.name for master in fleet.masters}

    def every_canary_delivering():
        subscribed = canary_figures(lab, "wssfleet_canary_subscribed")
        delivered = canary_figures(lab, "increase(wssfleet_canary_delivery_seconds_count[10s])")
        overdue = canary_figures(lab, "wssfleet_canary_overdue_seconds")
        pairs = {(master, server) for master in masters for server in servers}
        return (
            all(subscribed.get(pair) == 1 for pair in pairs)
            and all(delivered.get(pair, 0) > 0 for pair in pairs)
            and all(overdue.get(pair, 1) < 1 for pair in pairs)
        )

    # Every master's canary delivers through every instance, scraped by Prometheus.
    wait_for(every_canary_delivering, 60, "every canary delivering through every instance")
    primary = lab.redis_primary()
    redis_port = fleet.settings.redis_port
    client_list = commands.redis_admin("CLIENT", "LIST", port=redis_port)
    stall = lab.on(
        primary,
        f"python3 -c {shlex.quote(STALL)} {worker.address} {port} {redis_port} "
        f"{shlex.quote(client_list)} {STALL_TABLE}",
    )
    assert stall.returncode == 0, stall.stderr
    started = time.monotonic()
    try:

        def firing() -> set[str]:
            return {
                alert["labels"]["server"]
                for alert in alert_states(lab, "WssfleetCanaryStalled")
                if alert["state"] == "firing"
            }

        seen: set[str] = set()
        while stalled not in seen:
            took = time.monotonic() - started
            assert took <= CANARY_ALERT_BOUND_SECONDS + POLL_SECONDS, (
                f"WssfleetCanaryStalled for {stalled} not within {CANARY_ALERT_BOUND_SECONDS} s"
            )
            time.sleep(0.5)
            seen = firing()
        took = time.monotonic() - started
        assert took <= CANARY_ALERT_BOUND_SECONDS, took
        # Only the silenced instance: the others deliver on.
        assert seen == {stalled}, seen
        # Not killed: its process runs, and it still serves its health check.
        active = lab.on(worker.name, f"systemctl is-active {instance_unit(port)}")
        assert active.stdout.strip() == "active", active.stdout
        status = wssfleet("status")
        assert f"STALLED {stalled}: owes a message acknowledged" in status.stdout, status.stdout
        assert "alert firing: WssfleetCanaryStalled" in status.stdout, status.stdout
        print(
            f"WssfleetCanaryStalled fired {took:.1f} s after {stalled}'s subscription went silent"
        )
    finally:
        lab.on(primary, f"nft delete table inet {STALL_TABLE} 2>/dev/null; true")

    # Back on its own: the instance resubscribes and catches up; the alert resolves.
    def resolved():
        return every_canary_delivering() and not any(
            alert["labels"].get("server") == stalled
            for alert in alert_states(lab, "WssfleetCanaryStalled")
        )

    wait_for(resolved, 60, f"{stalled} delivering again and its alert gone")
