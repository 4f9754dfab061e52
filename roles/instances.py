"""What every app on a worker is made of, the built-in service included (hostside/layout.py's
AppLayout says where): its unprivileged user and directories, its releases and the `current`
link instances start from, and one systemd unit per port. roles/workers.py (the built-in
service) and roles/apps.py (the team's own) differ in how a release is built and what an
instance reads; they run and retire instances through here, and the rollout controller
restarts them, one at a time, the same way.
"""

from __future__ import annotations

from pyinfra import host
from pyinfra.facts.files import Link
from pyinfra.operations import files, server, systemd

from roles import SERVICE_RETRY
from wssfleet_control import commands
from wssfleet_control.facts import CurrentRelease, LoadedUnits, MemoryKib, Releases
from wssfleet_control.hostside.layout import AppLayout
from wssfleet_control.settings import memory_bytes

LIMIT_NOFILE = 1048576
# The current release, the one before it (for rollback) and one more.
RELEASES_KEPT = 3


def memory_max_mib(host_kib: int, sharing: int, reserved_mib: int = 0) -> int:
    """The MemoryMax of an instance without a memory_max of its own: three quarters of the
    host's memory (the rest for the system, Redis or HAProxy beside them), less what the
    instances with their own memory_max hold, shared among every other instance on the host,
    at least 256 MiB."""
    return max(256, (host_kib * 3 // 4 // 1024 - reserved_mib) // max(1, sharing))


def default_memory_max_mib(fleet, node, service_instances: int) -> int:
    """memory_max_mib for the worker ``node``: the built-in service's ``service_instances``
    and the instances of each app that runs there share it, so that their caps together never
    pass the host's three quarters (a cap each computed alone would let every app take most of
    the host)."""
    apps = [fleet.settings.apps[name] for name in fleet.apps_on(node.name)]
    reserved = sum(memory_bytes(app.memory_max) * app.instances for app in apps if app.memory_max)
    sharing = service_instances + sum(app.instances for app in apps if not app.memory_max)
    return memory_max_mib(host.get_fact(MemoryKib), sharing, reserved // 2**20)


def systemd_quoted(value: str) -> str:
    """A value for a systemd EnvironmentFile: double quotes, backslash escapes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def home_exists(app: AppLayout, whose: str) -> None:
    """The app's system user (no login, no home of its own to write) and its directories,
    root's: the app reads its code and cannot change it. ``whose`` names it in operations."""
    server.user(
        name=f"Ensure {whose} unprivileged user exists",
        user=app.user,
        system=True,
        home=app.home,
        shell="/usr/sbin/nologin",
        create_home=False,
        ensure_home=False,
    )
    for path in (app.home, app.releases):
        files.directory(
            name=f"Ensure {path} exists", path=path, user="root", group="root", mode="755"
        )


def release_current(app: AppLayout, release: str) -> None:
    """`current` points at a release: ``release`` on the first deploy, the one the rollout
    last pointed it at afterwards; the releases beyond RELEASES_KEPT are removed."""
    if not host.get_fact(Link, path=app.current):
        # Later releases are pointed at by the rollout, which records them the same way.
        server.shell(
            name=f"Ensure {app.current} points at a release (the first one)",
            commands=[commands.point_current(release, app.name)],
        )
    old_releases_removed(release, app)


def old_releases_removed(new: str, app: AppLayout) -> None:
    """An app's releases beyond RELEASES_KEPT removed: ``new``, the one `current` points at,
    and the newest others are kept. An upload that waits to be unpacked (a .tar.gz, an
    app's .wheels) is not a release."""
    listing = [
        name
        for name in host.get_fact(Releases, releases=app.releases)
        if not name.endswith((".tar.gz", ".wheels"))
    ]
    keep = {new, host.get_fact(CurrentRelease, current=app.current)}
    for name in listing:
        if len(keep) < RELEASES_KEPT:
            keep.add(name)
    for name in host.loop(listing):
        if name not in keep:
            files.directory(
                name=f"Ensure old release {name} is removed",
                path=f"{app.releases}/{name}",
                present=False,
            )


def instances_running(app: AppLayout, ports: list[int], unit_changed: bool) -> None:
    """One instance per port, running and enabled (a running one is not restarted: that is
    the rollout's); the app's instances on other ports (fewer than before) stopped."""
    # host.loop: workers with different numbers of instances order these alike.
    for port in host.loop(ports):
        systemd.service(
            **SERVICE_RETRY,
            name=f"Ensure instance {app.unit(port)} is running and enabled",
            service=app.unit(port),
            running=True,
            enabled=True,
            daemon_reload=unit_changed,
        )
    wanted = {app.unit(port) for port in ports}
    surplus = sorted(host.get_fact(LoadedUnits, pattern=f"{app.unit_prefix}*") - wanted)
    for name in host.loop(surplus):
        systemd.service(
            **SERVICE_RETRY,
            name=f"Ensure surplus {name} is stopped and disabled",
            service=name,
            running=False,
            enabled=False,
        )
