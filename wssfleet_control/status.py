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
from typing import TYPE_CHECKING

from wssfleet_control import commands, site_certificate
from wssfleet_control.hostside.layout import (
    BACKEND,
    CANARY_STALL_AFTER_SECONDS,
    CANARY_UNIT,
    INSTANCE_PREFIX,
    PROMETHEUS_PORT,
    REBALANCER_UNIT,
    app_layout,
    server_name,
)

if TYPE_CHECKING:
    from wssfleet_control.engine import Session
    from wssfleet_control.inventory import Node


def units_of(fleet, node: Node) -> list[str]:
    """The systemd units wssfleet runs on ``node`` (its instances as a pattern)."""
    roles = fleet.roles_of(node.name)
    units = ["wssfleet-firewall.service"]
    units.append("prometheus-node-exporter.service")
    if "master" in roles:
        units += ["haproxy.service", REBALANCER_UNIT, CANARY_UNIT, "cron.service"]
        if fleet.front_door:
            units.append("keepalived.service")
    if "redis" in roles:
        units += ["redis-server.service", "prometheus-redis-exporter.service"]
    if "sentinel" in roles:
        units.append("redis-sentinel.service")
    if "monitoring" in roles:
        units.append("prometheus.service")
    if "workers" in roles:
        units.append(f"{INSTANCE_PREFIX}*")
    units += [f"{app_layout(name).unit_prefix}*" for name in fleet.apps_on(node.name)]
    return units


# A unit in one of these states is fine (the firewall loader is a oneshot that stays exited).
HEALTHY_UNIT_STATES = {"running", "exited"}


def unit_states(session: Session, node: Node) -> dict[str, str] | None:
    """Each of the host's units and its state (systemd's sub-state); None when the host
    does not answer."""
    result = session.on(node.name, commands.unit_states(units_of(session.fleet, node)))
    if not result.ok:
        return None
    return {
        unit["unit"].removesuffix(".service"): unit["sub"]
        for unit in json.loads(result.stdout or "[]")
    }


def certificate(session: Session, master: Node) -> dict[str, str] | None:
    """The certificate a master's HAProxy serves; None when it cannot be read."""
    result = session.on(master.name, commands.certificate_identity())
    if not result.ok:
        return None
    fields = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return {
        "not_after": fields.get("notAfter", "?"),
        "issuer": fields.get("issuer", "?").strip(),
        "sha256": fields.get("sha256 Fingerprint", "?").replace(":", "").lower(),
    }


def front_door(session: Session) -> dict | None:
    """Which masters hold the floating address now, or how clients find the masters; None
    with one master."""
    fleet = session.fleet
    if len(fleet.masters) < 2:
        return None
    if not fleet.front_door:
        return {"mode": "dns", "addresses": [master.address for master in fleet.masters]}
    holders = [
        master.name
        for master in fleet.masters
        if session.on(master.name, commands.holds_address(fleet.front_door), timeout=10).stdout
    ]
    return {"mode": "floating", "address": fleet.front_door, "holders": holders}


def redis_replication(session: Session) -> dict | None:
    """The primary the Sentinels name, their quorum, and each replica's link and lag; None
    with one redis host."""
    fleet = session.fleet
    if not fleet.sentinels:
        return None
    port, tls = fleet.settings.redis_sentinel_port, fleet.settings.internal_tls
    named, quorum = [], ""
    for sentinel in fleet.sentinels:
        answer = session.on(sentinel.name, commands.sentinel_primary(port, tls), timeout=10)
        if answer.ok and answer.stdout.split():
            named.append(answer.stdout.split()[0])
        if not quorum:
            checked = session.on(sentinel.name, commands.sentinel_quorum(port, tls), timeout=10)
            quorum = checked.stdout.strip() if checked.ok else ""
    report = {
        "primary": None,
        "sentinels": len(fleet.sentinels),
        "sentinels_answering": len(named),
        "quorum": quorum,
        "replicas": [],
    }
    if not named:
        return report
    primary = fleet.node_at(max(set(named), key=named.count))
    report["primary"] = primary.name
    info = session.on(primary.name, commands.redis_replication(fleet.settings.redis_port, tls))
    fields = dict(line.strip().split(":", 1) for line in info.stdout.splitlines() if ":" in line)
    own = int(fields.get("master_repl_offset", 0) or 0)
    for key, value in sorted(fields.items()):
        if key.startswith("slave") and key[5:].isdigit():
            replica = dict(part.split("=", 1) for part in value.split(","))
            report["replicas"].append(
                {
                    "name": next(
                        (node.name for node in fleet.nodes if node.address == replica.get("ip")),
                        replica.get("ip", "?"),
                    ),
                    "state": replica.get("state", "?"),
                    "bytes_behind": own - int(replica.get("offset", 0)),
                    "last_ack_seconds": int(replica.get("lag", -1)),
                }
            )
    return report


def haproxy_servers(session: Session, master: str) -> list[dict] | None:
    """Every backend server as one master's HAProxy sees it (its runtime API): backend,
    server, status, sessions; None when that master does not answer."""
    answer = session.on(master, commands.backend_servers())
    return json.loads(answer.stdout) if answer.ok else None


def workers_backend(session: Session, master: str) -> list[dict] | None:
    """The built-in service's backend servers as one master's HAProxy sees them; None when
    that master does not answer."""
    servers = haproxy_servers(session, master)
    if servers is None:
        return None
    return [server for server in servers if server["backend"] == BACKEND]


def connections(session: Session) -> dict[str, str]:
    """Open connections per backend server, from HAProxy's runtime API."""
    servers = workers_backend(session, session.fleet.master.name) or []
    return {server["server"]: f"{server['sessions']} ({server['status']})" for server in servers}


def instances(session: Session) -> dict[str, dict[str, str]]:
    """Each answering worker's instances: port, and the release it runs ("stopped" when it
    does not run)."""
    from wssfleet_control.facts import instance_ports

    found = {}
    for worker in session.fleet.workers:
        if worker.name in session.unreachable:
            continue
        ports = instance_ports(session.fleet, session.host(worker.name))
        answer = session.on(worker.name, commands.instance_states(ports))
        if not answer.ok:
            continue
        found[worker.name] = {
            port: state["release"] if state["active"] else "stopped"
            for port, state in json.loads(answer.stdout).items()
        }
    return found


def apps(session: Session) -> dict[str, dict]:
    """Each app (settings: apps): its route, and each instance where it runs: the release it
    runs ("stopped" when it does not, "?" when its host does not answer), and HAProxy's
    status of it and its open sessions (the first master's runtime API)."""
    fleet = session.fleet
    if not fleet.settings.apps:
        return {}
    rows = haproxy_servers(session, fleet.master.name) or []
    seen = {(row["backend"], row["server"]): row for row in rows}
    found = {}
    for name, app in sorted(fleet.settings.apps.items()):
        layout = app_layout(name)
        instances = []
        for worker in fleet.app_workers(name):
            states = {}
            if worker.name not in session.unreachable:
                answer = session.on(worker.name, commands.instance_states(app.ports(), name))
                states = json.loads(answer.stdout) if answer.ok else {}
            for port in app.ports():
                state = states.get(str(port))
                row = seen.get((layout.backend, server_name(worker.name, port)), {})
                instances.append(
                    {
                        "host": worker.name,
                        "port": port,
                        "release": "?"
                        if state is None
                        else state["release"]
                        if state["active"]
                        else "stopped",
                        "haproxy": row.get("status", "?"),
                        "sessions": int(row.get("sessions") or 0),
                    }
                )
        route = f"{app.domain or fleet.settings.domain}{app.path or '/'}"
        found[name] = {"route": route, "instances": instances}
    return found


def drained(session: Session) -> dict[str, list[str]]:
    """Each answering master's workers that are out of rotation there (every instance of it
    drained or in maintenance: `wssfleet drain`)."""
    found = {}
    for master in session.fleet.masters:
        servers = workers_backend(session, master.name)
        if servers is None:
            continue
        states = defaultdict(set)
        for server in servers:
            states[server["server"].rsplit("-", 1)[0]].add(server["status"])
        found[master.name] = sorted(
            worker
            for worker, seen in states.items()
            if seen and all(status in OUT_OF_ROTATION for status in seen)
        )
    return found


# The severity of WssfleetWatchdog, which fires always (a dead man's switch): not a problem,
# and not shown among the firing alerts.
WATCHDOG_SEVERITY = "none"
# HAProxy's status of a server that gets no new client on purpose.
OUT_OF_ROTATION = {"DRAIN", "MAINT"}


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


# How a certificate no ACME server issues is renewed, by certificate_source.
PROVIDED_RENEWAL = {
    "files": "put renewed files in place, then make deploy",
    "private_ca": "cron swaps in the next one 30 days before the end; make renew: now",
}


def _seconds_left(not_after: str) -> float | None:
    """Seconds until openssl's ``notAfter`` ("Mar  7 12:00:00 2027 GMT"); None if unreadable."""
    try:
        ends = datetime.strptime(not_after, "%b %d %H:%M:%S %Y %Z").replace(tzinfo=UTC)
    except ValueError:
        return None
    return ends.timestamp() - time.time()


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


def gather(session: Session) -> dict:
    """Everything `status` shows, as one JSON-ready document (`wssfleet status --json`),
    with the problems found in it."""
    fleet = session.fleet
    hosts = []
    for node in fleet.nodes:
        units = unit_states(session, node)
        hosts.append(
            {
                "name": node.name,
                "address": node.address,
                "roles": fleet.roles_of(node.name),
                "reachable": units is not None,
                **({} if units is not None else {"why": session.unreachable_because(node.name)}),
                "units": units or {},
            }
        )
    live = live_figures(session)
    report = {
        "hosts": hosts,
        "front_door": front_door(session),
        "redis": redis_replication(session),
        "domains": fleet.settings.domains,
        "certificates": {master.name: certificate(session, master) for master in fleet.masters},
        "certificate_source": fleet.settings.certificate_source,
        # certbot's record: only an ACME certificate is renewed on the masters.
        "renewal": renewal(session) if fleet.settings.acme else None,
        "instances": instances(session),
        "apps": apps(session),
        "drained": drained(session),
        "live": None if live is None else {"source": live[0], **live[1]},
        # From HAProxy's runtime API when Prometheus does not answer.
        "connections": connections(session) if live is None else None,
    }
    report["problems"] = problems(report)
    return report


def problems(report: dict) -> list[str]:
    """What needs someone's attention now: `status` exits 1 when there is any. A firing
    alert of severity warning is shown but is not one; the watchdog is neither."""
    found = []
    for host in report["hosts"]:
        if not host["reachable"]:
            found.append(f"{host['name']}: {host.get('why', 'does not answer over SSH')}")
        for unit, state in host["units"].items():
            if state not in HEALTHY_UNIT_STATES:
                found.append(f"{host['name']}: {unit} is {state}")
    door = report["front_door"]
    if door and door["mode"] == "floating" and len(door["holders"]) != 1:
        holders = " and ".join(door["holders"]) or "no master"
        found.append(f"front door {door['address']}: held by {holders} (check keepalived)")
    redis = report["redis"]
    if redis is not None:
        if redis["primary"] is None:
            found.append("Redis: no Sentinel answers")
        elif not [replica for replica in redis["replicas"] if replica["state"] == "online"]:
            found.append("Redis: no replica online (an acknowledged message is on one node)")
    certificates = report["certificates"]
    for master, served in certificates.items():
        if served is None:
            found.append(f"{master}: its certificate cannot be read")
    if len({served["sha256"] for served in certificates.values() if served}) > 1:
        found.append("the masters serve different certificates")
    source = report.get("certificate_source", "acme_http")
    if source in PROVIDED_RENEWAL:
        for master, served in certificates.items():
            left = _seconds_left(served["not_after"]) if served else None
            if left is not None and left < site_certificate.WARNING_DAYS * 86400:
                found.append(
                    f"{master}: the certificate expires {relative(left)} "
                    f"(certificate_source={source}: {PROVIDED_RENEWAL[source]})"
                )
    running = defaultdict(list)
    for worker, ports in report["instances"].items():
        for port, release in sorted(ports.items()):
            if release != "stopped":
                running[release].append(f"{worker}/{port}")
    if len(running) > 1:
        mixed = "; ".join(f"{release} on {', '.join(where)}" for release, where in running.items())
        found.append(
            f"instances run different releases ({mixed}): a rollout stopped half way? "
            "`make deploy` finishes it, `make rollback` goes back"
        )
    for name, app in report["apps"].items():
        for instance in app["instances"]:
            where = f"app {name} on {instance['host']}:{instance['port']}"
            if instance["release"] == "stopped":
                found.append(f"{where} is stopped")
            elif instance["haproxy"].startswith("DOWN"):
                found.append(f"{where} fails its health check (HAProxy: {instance['haproxy']})")
        releases = {i["release"] for i in app["instances"]} - {"stopped", "?"}
        if len(releases) > 1:
            found.append(
                f"app {name}'s instances run different releases ({', '.join(sorted(releases))}):"
                " a rollout stopped half way? `make deploy` finishes it"
            )
    for master, workers in report["drained"].items():
        for worker in workers:
            found.append(
                f"{worker} is out of rotation on {master} (drained): `make ready "
                f"WORKER={worker}` puts it back"
            )
    renewal_record = report["renewal"] or {}
    if int(renewal_record.get("last_success", -1)) == 0:
        found.append("the last certificate renewal failed")
    live = report["live"]
    if live is None:
        found.append("Prometheus answers on no monitoring host")
    else:
        for target in live["targets"]:
            # "unknown": not scraped yet (Prometheus just started), not a failure.
            if target["health"] == "down":
                found.append(f"target down: {target['job']} {target['instance']}")
        for alert in live["alerts"]:
            if alert["state"] == "firing" and alert["labels"].get("severity") not in (
                "warning",
                WATCHDOG_SEVERITY,
            ):
                found.append(f"alert firing: {alert['name']}")
    return found


# status's exit code when no host answered: it could not look, which is not "all is well"
# (0) and not a finding about the fleet (1) either.
COULD_NOT_LOOK = 4


def show(session: Session, as_json: bool = False) -> int:
    """Print the fleet's status (text, or one JSON document); 1 when there is a problem,
    COULD_NOT_LOOK when no host answered."""
    report = gather(session)
    print(json.dumps(report, indent=2) if as_json else render(report))
    if not any(host["reachable"] for host in report["hosts"]):
        return COULD_NOT_LOOK
    return 1 if report["problems"] else 0


def render(report: dict) -> str:
    lines = []
    table = [("host", "address", "roles", "services")]
    for host in report["hosts"]:
        services = (
            " ".join(f"{unit}={state}" for unit, state in host["units"].items()) or "no units"
        )
        table.append(
            (
                host["name"],
                host["address"],
                "+".join(host["roles"]),
                services if host["reachable"] else "unreachable",
            )
        )
    widths = [max(len(row[column]) for row in table) for column in range(3)]
    for row in table:
        lines.append(
            "  ".join(value.ljust(width) for value, width in zip(row[:3], widths, strict=True))
            + "  "
            + row[3]
        )
    for worker, ports in report["instances"].items():
        releases = ", ".join(f"{port} {release}" for port, release in sorted(ports.items()))
        lines.append(f"instances on {worker}: {releases}")
    for name, app in report["apps"].items():
        shown = ", ".join(
            f"{i['host']}:{i['port']} {i['release']} {i['haproxy']} ({i['sessions']} open)"
            for i in app["instances"]
        )
        lines.append(f"app {name} ({app['route']}): {shown}")
    door = report["front_door"]
    if door and door["mode"] == "dns":
        addresses = ", ".join(door["addresses"])
        lines.append(f"\nfront door: DNS mode: the domain resolves to every master ({addresses})")
    elif door:
        held = " and ".join(door["holders"]) or "NO master"
        warning = "" if len(door["holders"]) == 1 else "  <-- check keepalived"
        lines.append(f"\nfront door: {door['address']} held by {held}{warning}")
    lines += _render_redis(report["redis"])
    source = report.get("certificate_source", "acme_http")
    lines.append(f"\ncertificate ({', '.join(report['domains'])}; source {source}):")
    for master, served in report["certificates"].items():
        expiry = (
            f"{served['not_after']} ({served['issuer']}, sha256 {served['sha256'][:16]}…)"
            if served
            else "none (unreachable or no certificate)"
        )
        lines.append(f"  on {master}: expires {expiry}")
    record = report["renewal"]
    if source in PROVIDED_RENEWAL:
        lines.append(f"  renewal: {PROVIDED_RENEWAL[source]}")
    elif record is not None:
        result = {1: "succeeded", 0: "FAILED"}.get(int(record.get("last_success", -1)), "-")
        rule = RENEWAL_RULES.get(str(record.get("renewal_rule")), "no certificate")
        lines.append(f"  next planned renewal: {when(record.get('next_renewal'))}, from {rule}")
        lines.append(f"  last renewal run:     {when(record.get('last_attempt'))}, {result}")
    live = report["live"]
    if live is None:
        lines.append(
            "\nPrometheus did not answer: open connections from HAProxy's runtime API instead"
        )
        lines += _render_snapshot(report["connections"] or {})
    else:
        lines += _render_live(live)
    if report["problems"]:
        lines.append(f"\nproblems ({len(report['problems'])}):")
        lines += [f"  {problem}" for problem in report["problems"]]
    return "\n".join(lines)


def _render_redis(redis: dict | None) -> list[str]:
    if redis is None:
        return []
    if redis["primary"] is None:
        return ["Redis: no Sentinel answers"]
    lines = [
        f"Redis: primary {redis['primary']} ({redis['sentinels_answering']} of "
        f"{redis['sentinels']} Sentinels answer; {redis['quorum'] or 'quorum unknown'})"
    ]
    for replica in redis["replicas"]:
        lines.append(
            f"  replica {replica['name']}: {replica['state']}, {replica['bytes_behind']} bytes "
            f"behind, last ack {replica['last_ack_seconds']} s ago"
        )
    if not redis["replicas"]:
        lines.append("  NO replica: an acknowledged message is on one node only")
    return lines


def _render_live(live: dict) -> list[str]:
    lines = [
        f"\nlive, from Prometheus on {live['source']} (last scrape):",
        f"  {'instance':<16} {'connections':>11} {'in/s':>9} {'out/s':>9} {'drops/s':>8}",
    ]
    for server, values in sorted(live["instances"].items()):
        lines.append(
            f"  {server:<16} {values.get('connections', 0):>11.0f} "
            f"{values.get('received_per_second', 0):>9.1f} "
            f"{values.get('delivered_per_second', 0):>9.1f} "
            f"{values.get('drops_per_second', 0):>8.2f}"
        )
    lines += _render_canary(live.get("canary") or {})
    targets = live["targets"]
    down = [target for target in targets if target["health"] != "up"]
    lines.append(f"  targets: {len(targets) - len(down)} of {len(targets)} up")
    for target in down:
        where = f"{target['job']} {target['instance']} ({target['host']})"
        if target["health"] == "unknown":
            lines.append(f"    not scraped yet: {where}")
        else:
            lines.append(f"    DOWN {where}: {target['error']}")
    shown = [a for a in live["alerts"] if a["labels"].get("severity") != WATCHDOG_SEVERITY]
    firing = [alert for alert in shown if alert["state"] == "firing"]
    pending = [alert for alert in shown if alert["state"] == "pending"]
    lines.append(f"  alerts: {len(firing)} firing, {len(pending)} pending")
    for alert in firing + pending:
        runbook = f" (what to do: {alert['runbook']})" if alert.get("runbook") else ""
        lines.append(f"    {alert['state'].upper()} {alert['name']}: {alert['summary']}{runbook}")
    return lines


def _render_canary(canaries: dict[str, dict]) -> list[str]:
    """A line per master's canary, and one per instance that owes it a message."""
    lines = []
    for master, seen in sorted(canaries.items()):
        instances = seen["instances"]
        delivering = [
            server
            for server, figures in instances.items()
            if figures.get("subscribed") and figures.get("overdue", 0) < CANARY_STALL_AFTER_SECONDS
        ]
        p99s = [f["p99"] for f in instances.values() if f.get("p99") is not None]
        p99 = f"p99 {max(p99s) * 1000:.0f} ms" if p99s else "no delivery in the last minute"
        since = seen.get("since_acknowledged")
        acknowledged = (
            "none acknowledged" if since is None else f"last acknowledged {since:.1f} s ago"
        )
        lines.append(
            f"  canary on {master}: {len(delivering)} of {len(instances)} instances delivering, "
            f"{p99}; publishes: {acknowledged}"
        )
        for server, figures in sorted(instances.items()):
            if not figures.get("subscribed"):
                lines.append(f"    not subscribed on {server} (the canary is reconnecting)")
            elif figures.get("overdue", 0) >= CANARY_STALL_AFTER_SECONDS:
                lines.append(
                    f"    STALLED {server}: owes a message acknowledged "
                    f"{figures['overdue']:.1f} s ago"
                )
    return lines


def _render_snapshot(connections_per_server: dict[str, str]) -> list[str]:
    per_host: dict[str, list[str]] = defaultdict(list)
    for server, state in sorted(connections_per_server.items()):
        host, _, port = server.rpartition("-")
        per_host[host].append(f"{port}: {state}")
    lines = ["\nopen connections per worker instance (HAProxy runtime API):"]
    for host, states in per_host.items():
        lines.append(f"  {host:<12} " + ", ".join(states))
    if not per_host:
        lines.append("  (HAProxy's runtime API did not answer)")
    return lines
