"""`wssfleet details`: what runs where. For every worker, the release `current` points at and
the releases kept for a rollback; for every instance, the release it runs, since when, whether
it runs settings older than the host's, and how each master's HAProxy sees it (up, down,
drained) with its open connections. Read live over SSH, nothing changed."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from wssfleet_control import commands
from wssfleet_control.hostside.layout import server_name
from wssfleet_control.status import COULD_NOT_LOOK, when, workers_backend

if TYPE_CHECKING:
    from wssfleet_control.engine import Session


def gather(session: Session) -> dict:
    """Every worker's releases and instances, as one JSON-ready document."""
    from wssfleet_control.facts import instance_ports

    fleet = session.fleet
    seen_by: dict[str, dict | None] = {}
    for master in fleet.masters:
        servers = workers_backend(session, master.name)
        seen_by[master.name] = None
        if servers is not None:
            seen_by[master.name] = {
                seen["server"]: {"status": seen["status"], "connections": int(seen["sessions"])}
                for seen in servers
            }
    workers = {}
    for worker in fleet.workers:
        if worker.name in session.unreachable:
            workers[worker.name] = {"reachable": False}
            continue
        ports = instance_ports(fleet, session.host(worker.name))
        states = session.on(worker.name, commands.instance_states(ports))
        current = session.on(worker.name, commands.current_release())
        installed = session.on(worker.name, commands.installed_releases())
        if not (states.ok and current.ok and installed.ok):
            workers[worker.name] = {"reachable": False}
            continue
        instances = []
        for port, state in sorted(json.loads(states.stdout).items(), key=lambda i: int(i[0])):
            server = server_name(worker.name, port)
            instances.append(
                {
                    "port": int(port),
                    **state,
                    "haproxy": {
                        master: servers.get(server) if servers is not None else None
                        for master, servers in seen_by.items()
                    },
                }
            )
        workers[worker.name] = {
            "reachable": True,
            "current": current.stdout.strip(),
            "installed": installed.stdout.split(),
            "instances": instances,
        }
    return {
        "workers": workers,
        "masters_unreachable": sorted(m for m, s in seen_by.items() if s is None),
    }


def show(session: Session, as_json: bool = False) -> int:
    """Print the details (text, or one JSON document); COULD_NOT_LOOK when no worker
    answered, else 0."""
    report = gather(session)
    print(json.dumps(report, indent=2) if as_json else render(report))
    looked = any(worker["reachable"] for worker in report["workers"].values())
    return 0 if looked else COULD_NOT_LOOK


def render(report: dict) -> str:
    lines: list[str] = []
    for name, worker in report["workers"].items():
        if not worker["reachable"]:
            lines.append(f"{name}: does not answer over SSH\n")
            continue
        kept = ", ".join(worker["installed"]) or "none"
        lines.append(f"{name}: current release {worker['current'] or 'none'}; installed: {kept}")
        masters = list(worker["instances"][0]["haproxy"]) if worker["instances"] else []
        table = [("instance", "release", "running since", "settings", *masters)]
        for instance in worker["instances"]:
            table.append(
                (
                    str(instance["port"]),
                    instance["release"] or "-",
                    _since(instance),
                    "OLDER than the host's" if instance["stale"] else "current",
                    *(_seen(instance["haproxy"][master]) for master in masters),
                )
            )
        widths = [max(len(row[column]) for row in table) for column in range(len(table[0]))]
        for row in table:
            cells = (value.ljust(width) for value, width in zip(row, widths, strict=True))
            lines.append("  " + "  ".join(cells).rstrip())
        lines.append("")
    for master in report["masters_unreachable"]:
        lines.append(f"{master}: does not answer: its HAProxy's view is missing above")
    return "\n".join(lines).rstrip()


def _seen(server: dict | None) -> str:
    if server is None:
        return "?"
    return f"{server['status']}, {server['connections']} open"


def _since(instance: dict) -> str:
    if not instance["active"]:
        return "STOPPED"
    if instance.get("since") is None:
        return "unknown (the host's helper predates it: deploy)"
    return when(instance["since"])
