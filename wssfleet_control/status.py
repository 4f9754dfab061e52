"""`wssfleet status`: the fleet at a glance. Live figures (connections, message rates, targets,
firing alerts) come from the fleet's Prometheus; when it does not answer, from a snapshot of
HAProxy's runtime API. The certificate's dates come from every master, its renewal record from
the first; with several masters, which one holds the front door and which Redis the Sentinels
name the primary, with each replica's lag."""

from __future__ import annotations

import json
import time
from collections import defaultdict
from datetime import UTC, datetime

from wssfleet_control import commands
from wssfleet_control.engine import Session
from wssfleet_control.hostside.layout import (
    BACKEND,
    INSTANCE_PREFIX,
    PROMETHEUS_PORT,
    REBALANCER_UNIT,
)
from wssfleet_control.inventory import Node


def units_of(session: Session, node: Node) -> list[str]:
    roles = session.fleet.roles_of(node.name)
    units = ["wssfleet-firewall.service"]
    units.append("prometheus-node-exporter.service")
    if "master" in roles:
        units += ["haproxy.service", REBALANCER_UNIT, "cron.service"]
        if session.fleet.front_door:
            units.append("keepalived.service")
    if "redis" in roles:
        units += ["redis-server.service", "prometheus-redis-exporter.service"]
    if "sentinel" in roles:
        units.append("redis-sentinel.service")
    if "monitoring" in roles:
        units.append("prometheus.service")
    if "workers" in roles:
        units.append(f"{INSTANCE_PREFIX}*")
    return units


def service_states(session: Session, node: Node) -> str:
    result = session.on(node.name, commands.unit_states(units_of(session, node)))
    if not result.ok:
        return f"unreachable ({result.stderr.strip()[:60]})"
    states = [
        f"{unit['unit'].removesuffix('.service')}={unit['sub']}"
        for unit in json.loads(result.stdout or "[]")
    ]
    return " ".join(states) or "no units"


def certificate_expiry(session: Session, master: Node) -> str:
    result = session.on(master.name, commands.certificate_identity())
    if not result.ok:
        return "none (unreachable or no certificate)"
    fields = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    fingerprint = fields.get("sha256 Fingerprint", "?").replace(":", "")[:16].lower()
    return (
        f"{fields.get('notAfter', '?')} ({fields.get('issuer', '?').strip()}, "
        f"sha256 {fingerprint}…)"
    )


def front_door(session: Session) -> str:
    """Which master holds the floating address now, or how clients find the masters."""
    fleet = session.fleet
    if len(fleet.masters) < 2:
        return ""
    if not fleet.front_door:
        addresses = ", ".join(master.address for master in fleet.masters)
        return f"DNS mode: the domain resolves to every master ({addresses})"
    holders = [
        master.name
        for master in fleet.masters
        if session.on(master.name, commands.holds_address(fleet.front_door), timeout=10).stdout
    ]
    held = " and ".join(holders) if holders else "NO master"
    warning = "" if len(holders) == 1 else "  <-- check keepalived"
    return f"{fleet.front_door} held by {held}{warning}"


def redis_replication(session: Session) -> list[str]:
    """The primary the Sentinels name, their quorum, and each replica's link and lag."""
    fleet = session.fleet
    if not fleet.sentinels:
        return []
    port, tls = fleet.settings.redis_sentinel_port, fleet.settings.internal_tls
    named, quorum = [], ""
    for sentinel in fleet.sentinels:
        answer = session.on(sentinel.name, commands.sentinel_primary(port, tls), timeout=10)
        if answer.ok and answer.stdout.split():
            named.append(answer.stdout.split()[0])
        if not quorum:
            checked = session.on(sentinel.name, commands.sentinel_quorum(port, tls), timeout=10)
            quorum = checked.stdout.strip() if checked.ok else ""
    if not named:
        return ["Redis: no Sentinel answers"]
    address = max(set(named), key=named.count)
    primary = fleet.node_at(address)
    lines = [
        f"Redis: primary {primary.name} ({len(named)} of {len(fleet.sentinels)} Sentinels "
        f"answer; {quorum or 'quorum unknown'})"
    ]
    info = session.on(primary.name, commands.redis_replication(fleet.settings.redis_port, tls))
    fields = dict(line.strip().split(":", 1) for line in info.stdout.splitlines() if ":" in line)
    own = int(fields.get("master_repl_offset", 0) or 0)
    for key, value in sorted(fields.items()):
        if key.startswith("slave") and key[5:].isdigit():
            replica = dict(part.split("=", 1) for part in value.split(","))
            behind = own - int(replica.get("offset", 0))
            name = next(
                (node.name for node in fleet.nodes if node.address == replica.get("ip")),
                replica.get("ip", "?"),
            )
            lines.append(
                f"  replica {name}: {replica.get('state', '?')}, {behind} bytes behind, "
                f"last ack {replica.get('lag', '?')} s ago"
            )
    if len(lines) == 1:
        lines.append("  NO replica: an acknowledged message is on one node only")
    return lines


def connections(session: Session) -> dict[str, str]:
    """Open connections per backend server, from HAProxy's runtime API."""
    result = session.on(session.fleet.master.name, commands.backend_servers())
    if not result.ok:
        return {}
    return {
        server["server"]: f"{server['sessions']} ({server['status']})"
        for server in json.loads(result.stdout)
        if server["backend"] == BACKEND
    }


def renewal(session: Session) -> dict[str, float] | None:
    """The certificate's dates and the renewal job's record, from the master."""
    result = session.on(session.fleet.master.name, commands.certificate_record())
    if not result.ok:
        return None
    return json.loads(result.stdout)


def live_figures(session: Session) -> tuple[str, dict] | None:
    """The first monitoring host that answers, and its Prometheus's summary (targets,
    alerts, per-instance figures); None when none answers."""
    for monitoring in session.fleet.monitors:
        result = session.on(
            monitoring.name, commands.prometheus_summary(monitoring.address, PROMETHEUS_PORT)
        )
        if result.ok:
            return monitoring.name, json.loads(result.stdout)
    return None


RENEWAL_RULES = {
    "ari": "the CA's renewal information (ARI)",
    "lifetime": "certbot's lifetime rule",
    "renew_before_expiry": "renew_before_expiry in certbot's renewal config",
}


def when(seconds: float | None) -> str:
    if seconds is None:
        return "never"
    moment = datetime.fromtimestamp(seconds, UTC)
    return f"{moment:%Y-%m-%d %H:%M:%S} UTC ({relative(seconds - time.time())})"


def relative(seconds: float) -> str:
    """'in 3.2 days', '5 min ago': a unit that suits 90-day and 6-day certificates alike."""
    size = abs(seconds)
    amount = (
        f"{size / 86400:.1f} days"
        if size >= 2 * 86400
        else f"{size / 3600:.1f} h"
        if size >= 2 * 3600
        else f"{size / 60:.0f} min"
    )
    return f"in {amount}" if seconds >= 0 else f"{amount} ago"


def show(session: Session) -> int:
    fleet = session.fleet
    table = [("host", "address", "roles", "services")]
    for node in fleet.nodes:
        roles = "+".join(fleet.roles_of(node.name))
        table.append((node.name, node.address, roles, service_states(session, node)))
    widths = [max(len(row[column]) for row in table) for column in range(3)]
    for row in table:
        print(
            "  ".join(value.ljust(width) for value, width in zip(row[:3], widths, strict=True))
            + "  "
            + row[3]
        )
    door = front_door(session)
    if door:
        print(f"\nfront door: {door}")
    for line in redis_replication(session):
        print(line)
    names = ", ".join(fleet.settings.domains)
    print(f"\ncertificate ({names}):")
    for master in fleet.masters:
        print(f"  on {master.name}: expires {certificate_expiry(session, master)}")
    record = renewal(session)
    if record is not None:
        result = {1: "succeeded", 0: "FAILED"}.get(int(record.get("last_success", -1)), "-")
        rule = RENEWAL_RULES.get(str(record.get("renewal_rule")), "no certificate")
        print(f"  next planned renewal: {when(record.get('next_renewal'))}, from {rule}")
        print(f"  last renewal run:     {when(record.get('last_attempt'))}, {result}")
    live = live_figures(session)
    if live is None:
        print("\nPrometheus did not answer: open connections from HAProxy's runtime API instead")
        _show_snapshot(session)
        return 0
    _show_live(*live)
    return 0


def _show_live(monitoring: str, figures: dict) -> None:
    print(f"\nlive, from Prometheus on {monitoring} (last scrape):")
    print(f"  {'instance':<16} {'connections':>11} {'in/s':>9} {'out/s':>9} {'drops/s':>8}")
    for server, values in sorted(figures["instances"].items()):
        print(
            f"  {server:<16} {values.get('connections', 0):>11.0f} "
            f"{values.get('received_per_second', 0):>9.1f} "
            f"{values.get('delivered_per_second', 0):>9.1f} "
            f"{values.get('drops_per_second', 0):>8.2f}"
        )
    targets = figures["targets"]
    down = [target for target in targets if target["health"] != "up"]
    print(f"  targets: {len(targets) - len(down)} of {len(targets)} up")
    for target in down:
        where = f"{target['job']} {target['instance']} ({target['host']})"
        print(f"    DOWN {where}: {target['error']}")
    firing = [alert for alert in figures["alerts"] if alert["state"] == "firing"]
    pending = [alert for alert in figures["alerts"] if alert["state"] == "pending"]
    print(f"  alerts: {len(firing)} firing, {len(pending)} pending")
    for alert in firing + pending:
        print(f"    {alert['state'].upper()} {alert['name']}: {alert['summary']}")


def _show_snapshot(session: Session) -> None:
    per_host: dict[str, list[str]] = defaultdict(list)
    for server, state in sorted(connections(session).items()):
        host, _, port = server.rpartition("-")
        per_host[host].append(f"{port}: {state}")
    print("\nopen connections per worker instance (HAProxy runtime API):")
    for host, states in per_host.items():
        print(f"  {host:<12} " + ", ".join(states))
    if not per_host:
        print("  (HAProxy's runtime API did not answer)")
