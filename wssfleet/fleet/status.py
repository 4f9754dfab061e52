"""`make status`: the fleet at a glance, read live from the hosts."""

from __future__ import annotations

import csv
import io
import json
from collections import defaultdict

from wssfleet.fleet import remote
from wssfleet.fleet.inventory import Fleet, Node

CERTIFICATE = "/etc/haproxy/certs/wssfleet.pem"
# Talks to HAProxy's runtime socket on the master; the socket is never on the network.
SHOW_STAT = (
    "python3 -c 'import socket; s = socket.socket(socket.AF_UNIX); "
    's.connect("/run/haproxy/admin.sock"); s.sendall(b"show stat\\n"); '
    'print(b"".join(iter(lambda: s.recv(65536), b"")).decode())\''
)


def units_of(fleet: Fleet, node: Node) -> list[str]:
    roles = fleet.roles_of(node.name)
    units = ["nftables"]
    if "master" in roles:
        units += ["haproxy", "cron"]
    if "redis" in roles:
        units.append("redis-server")
    if "worker" in roles:
        units.append("wssfleet@*")
    return units


def service_states(node: Node, units: list[str]) -> str:
    command = "systemctl list-units --all --no-legend --plain --output=json " + " ".join(
        f"'{unit}.service'" if not unit.endswith("*") else f"'{unit}'" for unit in units
    )
    result = remote.run(node, command)
    if result.returncode != 0:
        return f"unreachable ({result.stderr.strip()[:60]})"
    states = [
        f"{unit['unit'].removesuffix('.service')}={unit['sub']}"
        for unit in json.loads(result.stdout or "[]")
    ]
    return " ".join(states) or "no units"


def certificate_expiry(node: Node) -> str:
    result = remote.run(node, f"openssl x509 -noout -enddate -issuer -in {CERTIFICATE}")
    if result.returncode != 0:
        return "none"
    fields = dict(line.split("=", 1) for line in result.stdout.splitlines() if "=" in line)
    return f"{fields.get('notAfter', '?')} ({fields.get('issuer', '?').strip()})"


def connections(master: Node) -> dict[str, str]:
    """Open connections per backend server, from HAProxy's runtime API."""
    result = remote.run(master, SHOW_STAT)
    if result.returncode != 0:
        return {}
    rows = csv.DictReader(io.StringIO(result.stdout.lstrip("# ")))
    return {
        row["svname"]: f"{row['scur']} ({row['status']})"
        for row in rows
        if row.get("pxname") == "workers" and row["svname"] not in ("FRONTEND", "BACKEND")
    }


def show(fleet: Fleet) -> int:
    table = [("host", "address", "roles", "services")]
    for node in fleet.nodes:
        table.append(
            (
                node.name,
                node.address,
                "+".join(fleet.roles_of(node.name)),
                service_states(node, units_of(fleet, node)),
            )
        )
    widths = [max(len(row[column]) for row in table) for column in range(3)]
    for row in table:
        print(
            "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=False))
            + "  "
            + row[3]
        )
    print(
        f"\ncertificate ({', '.join(fleet.settings.domains)}): expires "
        f"{certificate_expiry(fleet.master)}"
    )
    per_host: dict[str, list[str]] = defaultdict(list)
    for server, state in sorted(connections(fleet.master).items()):
        host, _, port = server.rpartition("-")
        per_host[host].append(f"{port}: {state}")
    print("\nopen connections per worker instance (HAProxy runtime API):")
    for host, states in per_host.items():
        print(f"  {host:<12} " + ", ".join(states))
    if not per_host:
        print("  (HAProxy's runtime API did not answer)")
    return 0
