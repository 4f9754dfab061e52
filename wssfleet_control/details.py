"""`wssfleet details`: what runs where. For every worker and every app on it (the built-in
service and each of `apps`), the release `current` points at and the releases kept for a
rollback; for every instance, the release it runs, since when, whether it runs settings older
than the host's, and how each master's HAProxy sees it (up, down, drained) with its open
connections. Read live over SSH, nothing changed."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from wssfleet_control import commands
from wssfleet_control.hostside.layout import BUILTIN_APP, app_layout, server_name
from wssfleet_control.status import COULD_NOT_LOOK, haproxy_servers, when

if TYPE_CHECKING:
    from wssfleet_control.engine import Session


def gather(session: Session) -> dict:
    """Every worker's apps, each with its releases and instances, as one JSON-ready document.
    The built-in service's are also the worker's own keys (current, installed, instances), as
    before apps existed."""
    from wssfleet_control.facts import instance_ports

    fleet = session.fleet
    seen_by: dict[str, dict | None] = {}
    for master in fleet.masters:
        servers = haproxy_servers(session, master.name)
        seen_by[master.name] = None
        if servers is not None:
            seen_by[master.name] = {
                (seen["backend"], seen["server"]): {
                    "status": seen["status"],
                    "connections": int(seen["sessions"]),
                }
                for seen in servers
            }
    workers = {}
    for worker in fleet.workers:
        if worker.name in session.unreachable:
            workers[worker.name] = {"reachable": False}
            continue
        on_worker = {BUILTIN_APP: instance_ports(fleet, session.host(worker.name))}
        on_worker |= {
            name: fleet.settings.apps[name].ports() for name in fleet.apps_on(worker.name)
        }
        apps = {app: _app_on(session, worker.name, app, ports, seen_by)
                for app, ports in on_worker.items()}  # fmt: skip
        if None in apps.values():
            workers[worker.name] = {"reachable": False}
            continue
        workers[worker.name] = {"reachable": True, **apps[BUILTIN_APP], "apps": apps}
    return {
        "workers": workers,
        "masters_unreachable": sorted(m for m, s in seen_by.items() if s is None),
    }


def _app_on(
    session: Session, worker: str, app: str, ports: list[int], seen_by: dict[str, dict | None]
) -> dict | None:
    """One app's releases and instances on ``worker``; None when the worker did not answer."""
    states = session.on(worker, commands.instance_states(ports, app))
    current = session.on(worker, commands.current_release(app))
    installed = session.on(worker, commands.installed_releases(app))
    if not (states.ok and current.ok and installed.ok):
        return None
    backend = app_layout(app).backend
    instances = []
    for port, state in sorted(json.loads(states.stdout).items(), key=lambda i: int(i[0])):
        server = (backend, server_name(worker, port))
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
    return {
        "current": current.stdout.strip(),
        "installed": installed.stdout.split(),
        "instances": instances,
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
        for app, releases in worker["apps"].items():
            kept = ", ".join(releases["installed"]) or "none"
            what = name if app == BUILTIN_APP else f"{name}, app {app}"
            lines.append(
                f"{what}: current release {releases['current'] or 'none'}; installed: {kept}"
            )
            lines += _instances_table(releases["instances"])
            lines.append("")
    for master in report["masters_unreachable"]:
        lines.append(f"{master}: does not answer: its HAProxy's view is missing above")
    return "\n".join(lines).rstrip()


def _instances_table(instances: list[dict]) -> list[str]:
    masters = list(instances[0]["haproxy"]) if instances else []
    table = [("instance", "release", "running since", "settings", *masters)]
    for instance in instances:
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
    return [
        "  "
        + "  ".join(value.ljust(width) for value, width in zip(row, widths, strict=True)).rstrip()
        for row in table
    ]


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
