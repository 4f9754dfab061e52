"""`wssfleet status`: the fleet at a glance, read live from the hosts."""

from __future__ import annotations

import json
from collections import defaultdict

from roles.haproxy import CERTIFICATE, RUNTIME
from wssfleet_control.engine import Session
from wssfleet_control.inventory import Node
from wssfleet_control.run import quote


def units_of(session: Session, node: Node) -> list[str]:
    roles = session.fleet.roles_of(node.name)
    units = ["wssfleet-firewall.service"]
    if "master" in roles:
        units += ["haproxy.service", "cron.service"]
    if "redis" in roles:
        units.append("redis-server.service")
    if "worker" in roles:
        units.append("wssfleet@*")
    return units


def service_states(session: Session, node: Node) -> str:
    command = "systemctl list-units --all --no-legend --plain --output=json " + " ".join(
        quote(unit) for unit in units_of(session, node)
    )
    result = session.run(node.name, command)
    if not result.ok:
        return f"unreachable ({result.stderr.strip()[:60]})"
    states = [
        f"{unit['unit'].removesuffix('.service')}={unit['sub']}"
        for unit in json.loads(result.stdout or "[]")
    ]
    return " ".join(states) or "no units"


def certificate_expiry(session: Session) -> str:
    result = session.run(
        session.fleet.master.name, f"openssl x509 -noout -enddate -issuer -in {CERTIFICATE}"
    )
    if not result.ok:
        return "none"
    fields = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return f"{fields.get('notAfter', '?')} ({fields.get('issuer', '?').strip()})"


def connections(session: Session) -> dict[str, str]:
    """Open connections per backend server, from HAProxy's runtime API."""
    result = session.run(session.fleet.master.name, f"python3 {RUNTIME} servers")
    if not result.ok:
        return {}
    return {
        server["server"]: f"{server['sessions']} ({server['status']})"
        for server in json.loads(result.stdout)
        if server["backend"] == "workers"
    }


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
    names = ", ".join(fleet.settings.domains)
    print(f"\ncertificate ({names}): expires {certificate_expiry(session)}")
    per_host: dict[str, list[str]] = defaultdict(list)
    for server, state in sorted(connections(session).items()):
        host, _, port = server.rpartition("-")
        per_host[host].append(f"{port}: {state}")
    print("\nopen connections per worker instance (HAProxy runtime API):")
    for host, states in per_host.items():
        print(f"  {host:<12} " + ", ".join(states))
    if not per_host:
        print("  (HAProxy's runtime API did not answer)")
    return 0
