"""The WebSocket service on the workers: releases, the environment file, one unit per port.

Each release lives in /opt/wssfleet/releases/<id> (its wheels and virtualenv); `current`
points at the one instances start from. The first deploy points it and starts the instances;
later, the rollout controller (wssfleet_control/rollout.py) moves `current` and restarts
instances one at a time. This role never restarts a running instance.
"""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import Link
from pyinfra.operations import apt, files, server, systemd

from roles import SERVICE_RETRY, helper_installed, secret_template, virtualenv_from_wheels
from roles import internal_tls as internal_tls_role
from roles.redis import PRIMARY_NAME, SENTINEL_CLIENT_USER
from wssfleet.config import ClientPolicy, ServiceConfig
from wssfleet_control import secrets
from wssfleet_control.commands import point_current
from wssfleet_control.deployment import DeployRun
from wssfleet_control.facts import (
    CurrentRelease,
    LoadedUnits,
    MemoryKib,
    OpenFilesLimit,
    PythonPlatform,
    Releases,
)
from wssfleet_control.hostside.layout import (
    CONFIG_DIRECTORY,
    CURRENT,
    INSTANCE_PREFIX,
    INSTANCE_UNIT_FILE,
    RELEASES,
    SERVICE_ENVIRONMENT,
    SERVICE_HOME,
    SERVICE_LAYOUT,
    SERVICE_USER,
    WORKER_TLS_DIRECTORY,
    AppLayout,
    instance_unit,
)
from wssfleet_control.inventory import Node

LIMIT_NOFILE = 1048576
# The current release, the one before it (for rollback) and one more.
RELEASES_KEPT = 3
# Set per instance by the unit, not by the environment file.
PER_INSTANCE = frozenset({"port", "worker_name"})


def memory_max_mib(host_kib: int, instances: int) -> int:
    """Each instance's MemoryMax: three quarters of the host's memory shared among its
    instances (the rest for the system, Redis or HAProxy beside them), at least 256 MiB."""
    return max(256, host_kib * 3 // 4 // max(1, instances) // 1024)


def service_config(run: DeployRun, node: Node) -> ServiceConfig:
    """The service's own model, filled from the deployment: what every instance reads."""
    settings = run.fleet.settings
    policy = {name: getattr(settings, name) for name in ClientPolicy.model_fields}
    return ServiceConfig.model_validate(
        {
            **policy,
            "allowed_origins": settings.origins,
            "jwt_secret": run.secrets["jwt_secret"],
            "jwt_previous_secret": secrets.previous_key(run.secrets),
            "jwt_previous_until": secrets.previous_until(run.secrets),
            "internal_key": run.secrets["internal_key"],
            "redis_url": run.fleet.redis_url(run.secrets["redis_password"]),
            **(
                {
                    "redis_sentinels": [
                        f"{sentinel.address}:{settings.redis_sentinel_port}"
                        for sentinel in run.fleet.sentinels
                    ],
                    # A user that may only ask where the primary is (roles/redis.py).
                    "redis_sentinel_user": SENTINEL_CLIENT_USER,
                    "redis_sentinel_password": run.secrets["sentinel_client_password"],
                    "redis_primary_name": PRIMARY_NAME,
                }
                if run.fleet.sentinels
                else {}
            ),
            "bind": node.address,
            "metrics_port_offset": settings.metrics_port_offset,
            **(
                {
                    "tls_certificate_file": f"{WORKER_TLS_DIRECTORY}/cert.pem",
                    "tls_key_file": f"{WORKER_TLS_DIRECTORY}/key.pem",
                }
                if settings.internal_tls
                else {}
            ),
        }
    )


def systemd_quoted(value: str) -> str:
    """A value for a systemd EnvironmentFile: double quotes, backslash escapes."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


@deploy("WebSocket service")
def apply(run: DeployRun, node: Node, service_ports: list[int]) -> None:
    """Install this run's release and run one instance per port.

    + run: the deploy (fleet settings, secrets, release, whether it is a plan)
    + node: this worker
    + service_ports: the instances' ports on this host
    """
    apt.packages(
        name="Ensure python3-venv is installed", packages=["python3-venv"], no_recommends=True
    )
    server.user(
        name="Ensure the unprivileged service user exists",
        user=SERVICE_USER,
        system=True,
        home=SERVICE_HOME,
        shell="/usr/sbin/nologin",
        create_home=False,
        ensure_home=False,
    )
    for path in (SERVICE_HOME, RELEASES):
        files.directory(
            name=f"Ensure {path} exists", path=path, user="root", group="root", mode="755"
        )
    files.directory(
        name="Ensure the service's config directory is private",
        path=CONFIG_DIRECTORY,
        user="root",
        group=SERVICE_USER,
        mode="750",
    )
    helper_installed("instances.py")
    _install_release(run)
    if run.fleet.settings.internal_tls:
        # Read when an instance starts: a rollout restarts the instances whose settings
        # changed, which internal_tls's paths in the environment file do.
        internal_tls_role.install(run, node.name, WORKER_TLS_DIRECTORY, "root", SERVICE_USER)
    environment = service_config(run, node).environment(exclude=PER_INSTANCE)
    secret_template(
        name="Ensure the service's environment file is current (contents withheld: secrets)",
        src=run.template("workers", "wssfleet.env.j2"),
        dest=SERVICE_ENVIRONMENT,
        user="root",
        group=SERVICE_USER,
        mode="640",
        environment={name: systemd_quoted(value) for name, value in environment.items()},
    )
    unit = files.template(
        name="Ensure the wssfleet@ systemd unit is current",
        src=run.template("workers", "wssfleet@.service.j2"),
        dest=INSTANCE_UNIT_FILE,
        mode="644",
        current=CURRENT,
        environment_file=SERVICE_ENVIRONMENT,
        limit_nofile=min(LIMIT_NOFILE, host.get_fact(OpenFilesLimit)),
        memory_max_mib=memory_max_mib(host.get_fact(MemoryKib), len(service_ports)),
    )
    for port in service_ports:
        systemd.service(
            **SERVICE_RETRY,
            name=f"Ensure instance {instance_unit(port)} is running and enabled",
            service=instance_unit(port),
            running=True,
            enabled=True,
            daemon_reload=unit.will_change,
        )
    wanted = {instance_unit(port) for port in service_ports}
    for name in sorted(host.get_fact(LoadedUnits, pattern=f"{INSTANCE_PREFIX}*")):
        if name not in wanted:
            systemd.service(
                **SERVICE_RETRY,
                name=f"Ensure surplus {name} is stopped and disabled",
                service=name,
                running=False,
                enabled=False,
            )


def _install_release(run: DeployRun) -> None:
    """The release's wheels and virtualenv, unless a complete install is there already.

    A marker written after pip succeeds decides it, so a deploy after a failed install
    installs again."""
    virtualenv_from_wheels(
        f"release {run.release}",
        f"{RELEASES}/{run.release}",
        lambda: run.wheelhouse(*host.get_fact(PythonPlatform)),
        "wssfleet",
        run.dry,
    )
    if not host.get_fact(Link, path=CURRENT):
        # Later releases are pointed at by the rollout, which records them the same way.
        server.shell(
            name=f"Ensure {CURRENT} points at a release (the first one)",
            commands=[point_current(run.release)],
        )
    old_releases_removed(run.release)


def old_releases_removed(new: str, app: AppLayout = SERVICE_LAYOUT) -> None:
    """An app's releases beyond RELEASES_KEPT removed (the built-in service's by default):
    ``new``, the one `current` points at, and the newest others are kept. An upload that
    waits to be unpacked (a .tar.gz, an app's .wheels) is not a release."""
    listing = [
        name
        for name in host.get_fact(Releases, releases=app.releases)
        if not name.endswith((".tar.gz", ".wheels"))
    ]
    keep = {new, host.get_fact(CurrentRelease, current=app.current)}
    for name in listing:
        if len(keep) < RELEASES_KEPT:
            keep.add(name)
    for name in listing:
        if name not in keep:
            files.directory(
                name=f"Ensure old release {name} is removed",
                path=f"{app.releases}/{name}",
                present=False,
            )
