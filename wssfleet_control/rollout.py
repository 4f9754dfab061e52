"""The rollout controller: after pyinfra has converged the hosts, it brings every service
instance onto the wanted release and settings, one instance at a time across the fleet, so
capacity never drops by more than one instance. Each step drains the instance (HAProxy sends
it no new client; the service closes its clients with 1012 over ``drain_seconds``), restarts
it, waits until it runs the release and answers /healthz, waits until HAProxy's checks see it
UP, and puts it back in rotation. The first instance that fails stops the rollout: it goes
back to the release it ran before, and the error names the host, the instance and what was
seen. Which instances need a restart is read from the hosts (hostside/instances.py), not
from what the deploy changed, so a rollout that stopped half way is finished by the next one.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field

from wssfleet_control import commands
from wssfleet_control.engine import Session
from wssfleet_control.facts import instance_ports
from wssfleet_control.hostside.layout import BUILTIN_APP, app_layout
from wssfleet_control.inventory import Node
from wssfleet_control.status import haproxy_servers

# Beyond the drain window: time for the last closes to complete.
DRAIN_GRACE = 10


class RolloutError(RuntimeError):
    """A rollout step failed; the message names the host, the instance and what was seen."""


@dataclass
class Step:
    host: str
    port: int
    reason: str
    outcome: str = "pending"
    seconds: float = 0.0
    detail: dict = field(default_factory=dict)
    # Whose instance: the built-in service's or an app's (settings: apps).
    app: str = BUILTIN_APP
    release: str = ""


def pending_steps(session: Session, releases: dict[str, str]) -> list[Step]:
    """Every instance that does not run its release with the current settings: each app's in
    ``releases`` (release by app; the built-in service is BUILTIN_APP), the built-in
    service's first, then the apps' by name, each in fleet order."""
    steps = []
    for app in sorted(releases, key=lambda name: (name != BUILTIN_APP, name)):
        for worker, ports in _instances_of(session, app):
            states = json.loads(_checked(session, worker, commands.instance_states(ports, app)))
            for port in ports:
                state = states[str(port)]
                if not state["active"]:
                    reason = "not running"
                elif state["release"] != releases[app]:
                    reason = f"runs release {state['release']}"
                elif state["stale"]:
                    reason = "settings changed since it started"
                else:
                    continue
                steps.append(Step(worker.name, port, reason, app=app, release=releases[app]))
    return steps


def _instances_of(session: Session, app: str) -> list[tuple[Node, list[int]]]:
    """The workers ``app`` runs on, each with its instances' ports."""
    fleet = session.fleet
    if app == BUILTIN_APP:
        return [
            (worker, instance_ports(fleet, session.host(worker.name))) for worker in fleet.workers
        ]
    return [(worker, fleet.settings.apps[app].ports()) for worker in fleet.app_workers(app)]


def installed_everywhere(session: Session, release: str, app: str = BUILTIN_APP) -> str:
    """``release`` when every worker of ``app`` has it installed (kept: the three newest);
    RolloutError naming the workers that do not, and the releases they keep."""
    missing = []
    for worker, _ in _instances_of(session, app):
        listed = _checked(session, worker, commands.installed_releases(app)).split()
        if release not in listed:
            missing.append(f"{worker.name} keeps {', '.join(listed) or 'none'}")
    if missing:
        raise RolloutError(f"release {release} is not installed everywhere: {'; '.join(missing)}")
    return release


def previous_release(session: Session, app: str = BUILTIN_APP) -> str:
    """The release the workers ran ``app`` on before the current one; RolloutError when there
    is none or the workers disagree."""
    found = {
        worker.name: _checked(session, worker, commands.previous_release(app)).strip()
        for worker, _ in _instances_of(session, app)
    }
    releases = set(found.values())
    if len(releases) != 1 or "" in releases:
        raise RolloutError(
            "no single earlier release to go back to: "
            + ", ".join(f"{host}: {release or 'none'}" for host, release in found.items())
        )
    return releases.pop()


def roll(session: Session, releases: dict[str, str], on_step=None, on_start=None) -> list[Step]:
    """Restart what needs it, one instance at a time: each app's instances in ``releases``
    (release by app, the built-in service's first) onto its release; RolloutError at the
    first failure (the steps done so far are in its ``steps``). ``on_start`` and ``on_step``
    hear of each step as it begins and once it is done."""
    timeout = session.fleet.settings.rollout_health_timeout
    steps = pending_steps(session, releases)
    for step in steps:
        worker = next(node for node in session.fleet.workers if node.name == step.host)
        app, release = step.app, step.release
        check = _health_check(session, app)
        if on_start:
            on_start(step)
        started = time.monotonic()
        previous = _checked(session, worker, commands.current_release(app)).strip()
        # On every master's HAProxy. A server one does not know yet (a new worker) has
        # nothing to drain there, nor has a master that is down.
        in_rotation = [
            master.name
            for master in session.fleet.masters
            if session.on(
                master.name, commands.set_server_state(worker.name, step.port, "drain", app)
            ).ok
        ]
        step.detail |= _drained(session, worker, step.port, app, in_rotation)
        if previous != release:
            _checked(session, worker, commands.point_current(release, app))
        healthy, seen = _restart(session, worker, step.port, release, timeout, app, check)
        step.detail |= seen
        problem = (
            f"release {release} did not pass its health check ({check}) within {timeout} s "
            f"(HTTP {seen.get('status')}: {seen.get('reply') or 'no reply'})"
        )
        for master in in_rotation:
            session.on(master, commands.set_server_state(worker.name, step.port, "ready", app))
        for master in in_rotation if healthy else []:
            # Capacity is whole again only once HAProxy's own checks send it clients.
            up = session.on(
                master,
                commands.wait_server_up(worker.name, step.port, timeout, app),
                timeout=timeout + 30,
            )
            step.detail["haproxy"] = up.stdout.strip()
            healthy = up.ok
            problem = (
                f"HAProxy's checks on {master} did not see it UP within {timeout} s "
                f"({up.stdout.strip()})"
            )
            if not healthy:
                break
        step.seconds = round(time.monotonic() - started, 1)
        if healthy:
            step.outcome = "done"
            if on_step:
                on_step(step)
            continue
        step.outcome = "failed"
        whose = "" if app == BUILTIN_APP else f"app {app}: "
        message = f"{whose}{worker.name} instance {app_layout(app).unit(step.port)}: {problem}"
        if previous and previous != release:
            _checked(session, worker, commands.point_current(previous, app))
            back, _ = _restart(session, worker, step.port, previous, timeout, app, check)
            message += (
                f"; it is back on release {previous}"
                if back
                else f"; going back to release {previous} failed too"
            )
        message += "; the rollout stopped there, later instances were not touched"
        error = RolloutError(message)
        error.steps = steps  # type: ignore[attr-defined]
        raise error
    return steps


def wait_in_rotation(session: Session) -> None:
    """Once the rollout is done: every instance's server (the built-in service's and every
    app's) that HAProxy does not see UP yet (an app or worker just added: its instances
    started with the deploy, its server with the new config) is waited for, so the deploy
    ends with whole capacity; RolloutError naming the first that stays down. Servers an
    operator drained or put in maintenance are left as they are."""
    timeout = session.fleet.settings.rollout_health_timeout
    backends = {app_layout(name).backend for name in (BUILTIN_APP, *session.fleet.app_sources)}
    for master in session.fleet.masters:
        servers = haproxy_servers(session, master.name)
        if servers is None:
            continue  # a master that is down routes nothing
        for server in servers:
            if server["backend"] not in backends or server["status"].startswith(
                ("UP", "MAINT", "DRAIN")
            ):
                continue
            name = f"{server['backend']}/{server['server']}"
            up = session.on(
                master.name, commands.wait_named_server_up(name, timeout), timeout=timeout + 30
            )
            if not up.ok:
                raise RolloutError(
                    f"HAProxy on {master.name} does not see {name} UP within {timeout} s "
                    f"({up.stdout.strip()}): is it running and answering its health check?"
                )


def drain_worker(session: Session, worker: Node) -> dict[str, dict]:
    """Take a worker out of rotation for maintenance: HAProxy sends it no new client and its
    instances move their clients to the others with 1012, over ``drain_seconds``."""
    seconds = session.fleet.settings.drain_seconds
    ports = instance_ports(session.fleet, session.host(worker.name))
    # The other masters send it no new client either; the first one asks its instances to
    # move their clients; then each master waits until none of its sessions is left there
    # (the clients may all have come through the one holding the front door).
    for master in session.fleet.masters[1:]:
        for port in ports:
            session.on(master.name, commands.set_server_state(worker.name, port, "drain"))
    # The apps' instances there get no new client either; their open WebSockets stay until
    # the host stops them (SIGTERM: each app closes its own).
    for app in session.fleet.apps_on(worker.name):
        for master in session.fleet.masters:
            for port in session.fleet.settings.apps[app].ports():
                session.on(master.name, commands.set_server_state(worker.name, port, "drain", app))
    left = {}
    for index, master in enumerate(session.fleet.masters):
        result = session.on(
            master.name,
            commands.drain_servers(seconds, worker.name, worker.address, ports, index == 0),
            timeout=seconds + DRAIN_GRACE + 30,
        )
        if not result.ok:
            raise RolloutError(
                f"draining {worker.name} on {master.name} failed: {result.stderr.strip()}"
            )
        left[master.name] = _last_json(result)
    return left


def ready_worker(session: Session, worker: Node) -> None:
    """Put a worker's instances back in rotation and wait until HAProxy's checks see them UP."""
    timeout = session.fleet.settings.rollout_health_timeout
    instances = [
        (app, port)
        for app in (BUILTIN_APP, *session.fleet.apps_on(worker.name))
        for other, ports in _instances_of(session, app)
        if other.name == worker.name
        for port in ports
    ]
    for master in session.fleet.masters:
        for app, port in instances:
            session.on(master.name, commands.set_server_state(worker.name, port, "ready", app))
            up = session.on(
                master.name,
                commands.wait_server_up(worker.name, port, timeout, app),
                timeout=timeout + 30,
            )
            if not up.ok:
                whose = "" if app == BUILTIN_APP else f"app {app} "
                raise RolloutError(
                    f"{worker.name} {whose}instance {port} is not UP on {master.name}: "
                    f"{up.stdout.strip()}"
                )


def _drained(session: Session, worker: Node, port: int, app: str, in_rotation: list[str]) -> dict:
    """The instance's clients moved before its restart: the built-in service moves its own,
    spread over drain_seconds; so does an app with a drain path, and the masters' HAProxy
    then says when none is left. Any other app is sent SIGTERM by the restart and closes its
    own clients at once (docs/apps.md)."""
    drain = session.fleet.settings.drain_seconds
    if app == BUILTIN_APP:
        drained = session.on(
            worker.name,
            commands.drain_instance(worker.address, port, drain + DRAIN_GRACE),
            timeout=drain + DRAIN_GRACE + 30,
        )
        return {"drain": _last_json(drained)}
    path = session.fleet.settings.apps[app].drain_path
    if not path:
        return {}
    asked = session.on(
        worker.name, commands.drain_app_instance(app, worker.address, port, path, drain)
    )
    left = {}
    for master in in_rotation:
        waited = session.on(
            master,
            commands.wait_no_sessions(worker.name, port, drain + DRAIN_GRACE, app),
            timeout=drain + DRAIN_GRACE + 30,
        )
        left[master] = waited.stdout.strip()
    return {"drain": {**_last_json(asked), "left": left}}


def _health_check(session: Session, app: str) -> str:
    """What says an instance of ``app`` is ready: its health path, or "tcp" without one."""
    if app == BUILTIN_APP:
        return "/healthz"
    return session.fleet.settings.apps[app].health_path or "tcp"


def _restart(
    session: Session,
    worker: Node,
    port: int,
    release: str,
    timeout: int,
    app: str = BUILTIN_APP,
    check: str = "/healthz",
) -> tuple[bool, dict]:
    stop_timeout = 30 if app == BUILTIN_APP else session.fleet.settings.apps[app].stop_timeout
    session.on(worker.name, commands.restart_instance(port, app), timeout=stop_timeout + 30)
    result = session.on(
        worker.name,
        commands.wait_healthy(worker.address, port, release, timeout, app, check),
        timeout=timeout + 30,
    )
    return result.ok, _last_json(result)


def _last_json(result) -> dict:
    """A helper's answer: its last output line, a JSON object."""
    try:
        return json.loads(result.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return {"status": 0, "reply": (result.stdout + result.stderr).strip()[-500:]}


def _checked(session: Session, worker: Node, command: str) -> str:
    result = session.on(worker.name, command)
    if not result.ok:
        raise RolloutError(f"{worker.name}: `{command}` failed: {result.stderr.strip()}")
    return result.stdout


def as_data(steps: list[Step]) -> list[dict]:
    return [asdict(step) for step in steps]
