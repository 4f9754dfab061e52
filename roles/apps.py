"""The team's own WebSocket apps on the workers (settings: apps), laid out as the built-in
service is: a release directory per content digest under the app's home, `current` pointing
at the one instances start from, one systemd unit per port, its own system user and
environment. The release is built on the control machine (app_sources.py) and unpacked on
the host as root's, so the app cannot change its own code. As for the built-in service, the
first deploy points `current` and starts the instances; later releases are brought in by the
rollout controller, one instance at a time. An app no longer in the inventory is stopped here.
"""

from __future__ import annotations

import re
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.operations import apt, files, server, systemd

from roles import SERVICE_RETRY, secret_template
from roles.instances import (
    LIMIT_NOFILE,
    default_memory_max_mib,
    home_exists,
    instances_running,
    release_current,
    systemd_quoted,
)
from roles.redis import PRIMARY_NAME, SENTINEL_CLIENT_USER
from wssfleet_control import internal_tls
from wssfleet_control.app_sources import AppSource
from wssfleet_control.commands import quote
from wssfleet_control.deployment import DeployRun
from wssfleet_control.facts import (
    Lines,
    LoadedUnits,
    OpenFilesLimit,
    PythonPlatform,
    instance_ports,
)
from wssfleet_control.hostside.layout import (
    APPS_CONFIG_DIRECTORY,
    APPS_HOME,
    APPS_INTERNAL_CA,
    AppLayout,
    app_layout,
)
from wssfleet_control.inventory import Node, app_redis_prefix, app_redis_secret, app_secret
from wssfleet_control.settings import App, memory_bytes

# Every app's units: what is loaded here and not wanted is stopped.
EVERY_APP_UNIT = "wssfleet-app-*@*"
APP_UNIT = re.compile(r"wssfleet-app-(?P<app>[a-z0-9-]+)@(?P<port>\d+)\.service")
INTERPRETERS = {"node": ("node", "nodejs"), "python": ("python", "python3")}


def exec_start(source: AppSource, current: str) -> str:
    """The unit's ExecStart: the app's command with its program found in the release (or the
    host's Node.js), {port} as the instance's port, each word quoted as systemd reads it."""
    program, *arguments = source.command
    if source.runtime == "node" and program in INTERPRETERS["node"]:
        program = "/usr/bin/node"
    elif source.runtime == "python" and program in INTERPRETERS["python"]:
        program = f"{current}/venv/bin/python"
    elif source.runtime == "python" and "/" not in program:
        # A console script of its requirements (uvicorn, gunicorn).
        program = f"{current}/venv/bin/{program}"
    elif not program.startswith("/"):
        program = f"{current}/{program.removeprefix('./')}"
    return " ".join(_unit_word(word) for word in (program, *arguments))


def _unit_word(word: str) -> str:
    """One word of ExecStart: systemd's specifiers and variables kept literal, {port} as %i."""
    escaped = word.replace("%", "%%").replace("$", "$$").replace("{port}", "%i")
    if re.fullmatch(r"[A-Za-z0-9_./:=@%$+,-]+", escaped):
        return escaped
    return systemd_quoted(escaped)


def app_environment(run: DeployRun, name: str, app: App, node: Node) -> dict[str, str]:
    """What every instance of the app gets, besides PORT and WSSFLEET_INSTANCE (the unit's)."""
    fleet = run.fleet
    environment = {
        "HOST": node.address,
        **app.env,
        **{variable: run.secrets[app_secret(name, variable)] for variable in app.secrets},
    }
    if app.redis:
        environment |= {
            "REDIS_URL": fleet.app_redis_url(name, run.secrets[app_redis_secret(name)]),
            "REDIS_PREFIX": app_redis_prefix(name),
        }
        if fleet.settings.internal_tls:
            environment["REDIS_CA_FILE"] = APPS_INTERNAL_CA
        if fleet.sentinels:
            environment |= {
                "REDIS_SENTINELS": ",".join(
                    f"{sentinel.address}:{fleet.settings.redis_sentinel_port}"
                    for sentinel in fleet.sentinels
                ),
                "REDIS_SENTINEL_NAME": PRIMARY_NAME,
                # A user that may only ask where the primary is (roles/redis.py).
                "REDIS_SENTINEL_USER": SENTINEL_CLIENT_USER,
                "REDIS_SENTINEL_PASSWORD": run.secrets["sentinel_client_password"],
            }
    return environment


@deploy("Apps")
def apply(run: DeployRun, node: Node) -> None:
    """Install and run every app this worker runs; stop what belongs to apps it no longer does.

    + run: the deploy: the apps (settings), their sources and releases, their secrets
    + node: this worker
    """
    fleet = run.fleet
    names = fleet.apps_on(node.name)
    if any(fleet.app_sources[name].runtime == "node" for name in names):
        apt.packages(
            name="Ensure Node.js is installed (apps)", packages=["nodejs"], no_recommends=True
        )
    if names:
        for path, mode in ((APPS_HOME, "755"), (APPS_CONFIG_DIRECTORY, "700")):
            files.directory(
                name=f"Ensure {path} exists", path=path, user="root", group="root", mode=mode
            )
    if names and fleet.settings.internal_tls:
        # The workers' copy is in the service's private directory; a CA certificate is public.
        files.put(
            name="Ensure the deployment's internal CA is where the apps read it",
            src=StringIO(internal_tls.ca_certificate(run.secrets)),
            dest=APPS_INTERNAL_CA,
            user="root",
            group="root",
            mode="644",
        )
    # A whole app that left is removed by ``retired``, once HAProxy no longer routes to it.
    # Looped over every app, not this host's alone: pyinfra orders operations across hosts
    # by loop position, so each app keeps the same position on every worker (else workers
    # with different apps put the same operations in orders that conflict).
    for name in host.loop(sorted(fleet.settings.apps)):
        if name in names:
            _app_installed(run, node, name, fleet.settings.apps[name], app_layout(name))


@deploy("Apps retired")
def retired(run: DeployRun, node: Node) -> None:
    """Every app this host runs that the inventory no longer has here: its instances stopped
    (SIGTERM: they close their WebSockets), its unit, environment, releases and user
    removed. Last in the deploy: by then HAProxy routes nothing to it.

    + run: the deploy: the apps (settings)
    + node: this host
    """
    wanted = set(run.fleet.apps_on(node.name)) if node in run.fleet.workers else set()
    units = host.get_fact(LoadedUnits, pattern=EVERY_APP_UNIT)
    listed = f"find {quote(APPS_HOME)} -mindepth 1 -maxdepth 1 -type d -printf '%f\\n'"
    installed = set(host.get_fact(Lines, command=listed))
    installed |= {APP_UNIT.fullmatch(unit)["app"] for unit in units if APP_UNIT.fullmatch(unit)}
    for name in host.loop(sorted(installed - wanted)):
        layout = app_layout(name)
        for unit in host.loop(sorted(u for u in units if u.startswith(layout.unit_prefix))):
            systemd.service(
                **SERVICE_RETRY,
                name=f"Ensure {unit} is stopped and disabled (app {name} left the inventory)",
                service=unit,
                running=False,
                enabled=False,
            )
        removed = files.file(
            name=f"Ensure app {name}'s unit is removed",
            path=layout.unit_file,
            present=False,
        )
        files.file(
            name=f"Ensure app {name}'s environment is removed",
            path=layout.environment,
            present=False,
        )
        files.directory(
            name=f"Ensure app {name}'s releases are removed",
            path=layout.home,
            present=False,
        )
        server.user(
            name=f"Ensure app {name}'s user is removed",
            user=layout.user,
            present=False,
        )
        if removed.will_change:
            systemd.daemon_reload(name=f"Ensure systemd forgets app {name}'s unit")


def _app_installed(run: DeployRun, node: Node, name: str, app: App, layout: AppLayout) -> None:
    source = run.fleet.app_sources[name]
    home_exists(layout, f"app {name}'s")
    _release_installed(run, name, source, layout)
    environment = app_environment(run, name, app, node)
    secret_template(
        name=f"Ensure app {name}'s environment file is current (contents withheld: secrets)",
        src=run.template("apps", "app.env.j2"),
        dest=layout.environment,
        user="root",
        group="root",
        mode="600",
        app=name,
        environment={key: systemd_quoted(value) for key, value in environment.items()},
    )
    memory = (
        memory_bytes(app.memory_max) // 2**20
        if app.memory_max
        else default_memory_max_mib(run.fleet, node, len(instance_ports(run.fleet, host)))
    )
    unit = files.template(
        name=f"Ensure the {layout.unit_prefix} systemd unit is current",
        src=run.template("apps", "app@.service.j2"),
        dest=layout.unit_file,
        mode="644",
        app=name,
        unit_prefix=layout.unit_prefix,
        app_user=layout.user,
        current=layout.current,
        environment_file=layout.environment,
        exec_start=exec_start(source, layout.current),
        stop_timeout=app.stop_timeout,
        limit_nofile=min(LIMIT_NOFILE, host.get_fact(OpenFilesLimit)),
        writable_executable_memory=source.runtime == "node",
        memory_max_mib=memory,
    )
    instances_running(layout, app.ports(), unit.will_change)


def _release_installed(run: DeployRun, name: str, source: AppSource, layout: AppLayout) -> None:
    """The app's release unpacked (and for Python its virtualenv made from wheels shipped
    with it), unless a complete install is there: a marker written last decides it."""
    release = run.app_release(name)
    directory = f"{layout.releases}/{release}"
    marker = f"{directory}/.installed"
    if not host.get_fact(File, path=marker):
        archive = f"{layout.releases}/{release}.tar.gz"
        wheels = f"{layout.releases}/{release}.wheels"
        if not run.dry:
            files.put(
                name=f"Ensure app {name}'s release {release} is on the host",
                src=str(run.app_build(name)),
                dest=archive,
                mode="600",
            )
            if source.runtime == "python":
                files.sync(
                    name=f"Ensure app {name}'s wheels are on the host",
                    src=str(run.app_wheelhouse(name, *host.get_fact(PythonPlatform))),
                    dest=wheels,
                    mode="644",
                    delete=True,
                )
        unpack = [
            f"rm -rf {quote(directory)}",
            f"install -d -m 755 {quote(directory)}",
            f"tar -xzf {quote(archive)} --no-same-owner --no-same-permissions -C "
            f"{quote(directory)}",
            # Root's, readable by the app's user, writable by nobody else.
            f"chmod -R u+rwX,go+rX,go-w {quote(directory)}",
        ]
        if source.runtime == "python":
            venv = f"{directory}/venv"
            unpack += [
                f"python3 -m venv {quote(venv)}",
                f"{quote(venv)}/bin/pip install --quiet --no-index --find-links "
                f"{quote(wheels)} -r {quote(wheels + '/requirements.txt')}",
                f"rm -rf {quote(wheels)}",
            ]
        server.shell(
            name=f"Ensure app {name}'s release {release} is installed",
            commands=[*unpack, f"rm -f {quote(archive)}", f"touch {quote(marker)}"],
        )
    release_current(layout, release)
