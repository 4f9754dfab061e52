"""The WebSocket service on the workers: releases, the environment file, one unit per port.

Each release lives in /opt/wssfleet/releases/<id> (its wheels and virtualenv); `current`
points at the one instances start from. The first deploy points it and starts the instances;
later, the rollout controller (wssfleet_control/rollout.py) moves `current` and restarts
instances one at a time. This role never restarts a running instance.
"""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import apt, files

from roles import helper_installed, secret_template, virtualenv_from_wheels
from roles import internal_tls as internal_tls_role
from roles.instances import (
    LIMIT_NOFILE,
    default_memory_max_mib,
    home_exists,
    instances_running,
    release_current,
    systemd_quoted,
)
from roles.redis import PRIMARY_NAME, SENTINEL_CLIENT_USER
from wssfleet.config import ClientPolicy, ServiceConfig
from wssfleet_control import secrets
from wssfleet_control.deployment import DeployRun
from wssfleet_control.facts import (
    OpenFilesLimit,
    PythonPlatform,
)
from wssfleet_control.hostside.layout import (
    CONFIG_DIRECTORY,
    CURRENT,
    INSTANCE_UNIT_FILE,
    RELEASES,
    SERVICE_ENVIRONMENT,
    SERVICE_LAYOUT,
    SERVICE_USER,
    WORKER_TLS_DIRECTORY,
)
from wssfleet_control.inventory import Node
from wssfleet_control.release import SERVICE_REQUIREMENT

# Set per instance by the unit, not by the environment file.
PER_INSTANCE = frozenset({"port", "worker_name"})


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
            "canary_key": run.secrets["canary_key"],
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
    home_exists(SERVICE_LAYOUT, "the service's")
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
        memory_max_mib=default_memory_max_mib(run.fleet, node, len(service_ports)),
    )
    instances_running(SERVICE_LAYOUT, service_ports, unit.will_change)


def _install_release(run: DeployRun) -> None:
    """The release's wheels and virtualenv, unless a complete install is there already.

    A marker written after pip succeeds decides it, so a deploy after a failed install
    installs again."""
    virtualenv_from_wheels(
        f"release {run.release}",
        f"{RELEASES}/{run.release}",
        lambda: run.wheelhouse(*host.get_fact(PythonPlatform)),
        (SERVICE_REQUIREMENT,),
        run.dry,
    )
    release_current(SERVICE_LAYOUT, run.release)
