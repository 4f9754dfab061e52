"""The WebSocket service on the workers: wheels, a virtualenv, one systemd unit per port.

A new release (or new settings) restarts one host at a time, and the next host waits
until every instance of the previous one answers /healthz.
"""

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.server import Command
from pyinfra.facts.systemd import SystemdStatus
from pyinfra.operations import apt, files, server, systemd
from pyinfra.operations.util import any_changed

from roles import open_files_limit, template
from wssfleet.fleet import wheels
from wssfleet.fleet.inventory import Fleet, Node

HOME = "/opt/wssfleet"
WHEELS = f"{HOME}/wheels"
VENV = f"{HOME}/venv"
ENV_FILE = "/etc/wssfleet/wssfleet.env"
UNIT = "/etc/systemd/system/wssfleet@.service"
LIMIT_NOFILE = 1048576
INSTANCE_PREFIX = "wssfleet@"


def instance(port: int) -> str:
    return f"{INSTANCE_PREFIX}{port}.service"


def interpreter() -> tuple[str, str]:
    """The worker's python3 version and machine, which its wheels must match."""
    version, machine = host.get_fact(
        Command,
        "python3 -c 'import platform; print(platform.python_version(), platform.machine())'",
    ).split()
    return version, machine


@deploy("WebSocket service")
def apply(fleet: Fleet, node: Node, ports: list[int], secrets: dict[str, str]) -> None:
    """Ship the release and run one instance per port, restarting one host at a time.

    + fleet: the checked inventory (service settings, Redis address)
    + node: this worker
    + ports: the instances' ports on this host
    + secrets: the deployment's JWT secret and Redis password
    """
    apt.packages(
        name="Ensure python3-venv is installed", packages=["python3-venv"], no_recommends=True
    )
    server.user(
        name="Ensure the unprivileged service user exists",
        user="wssfleet",
        system=True,
        home=HOME,
        shell="/usr/sbin/nologin",
        create_home=False,
        ensure_home=False,
    )
    files.directory(
        name="Ensure the service home exists", path=HOME, user="root", group="root", mode="755"
    )
    files.directory(
        name="Ensure the service's config directory is private",
        path="/etc/wssfleet",
        user="root",
        group="wssfleet",
        mode="750",
    )
    release = files.sync(
        name="Ensure the release's wheels are on the host",
        src=str(wheels.wheelhouse(*interpreter())),
        dest=WHEELS,
        mode="644",
        delete=True,
    )
    new_venv = not host.get_fact(Command, f"test -x {VENV}/bin/python && echo yes || true")
    if new_venv:
        server.shell(name="Ensure the virtualenv exists", commands=[f"python3 -m venv {VENV}"])
    install = server.shell(
        name="Ensure the release is installed in the virtualenv",
        commands=[
            f"{VENV}/bin/pip install --quiet --no-index --find-links {WHEELS} "
            "--force-reinstall wssfleet"
        ],
        _if=None if new_venv else release.did_change,
    )
    environment = files.template(
        name="Ensure the service's environment file is current",
        src=template("workers", "wssfleet.env.j2"),
        dest=ENV_FILE,
        user="root",
        group="wssfleet",
        mode="640",
        settings=fleet.settings,
        address=node.address,
        secrets=secrets,
        redis_url=fleet.redis_url(secrets["redis_password"]),
    )
    unit = files.template(
        name="Ensure the wssfleet@ systemd unit is current",
        src=template("workers", "wssfleet@.service.j2"),
        dest=UNIT,
        mode="644",
        limit_nofile=min(LIMIT_NOFILE, open_files_limit()),
    )
    status = host.get_fact(SystemdStatus)
    running_before = [port for port in ports if status.get(instance(port))]
    for port in ports:
        systemd.service(
            name=f"Ensure instance {instance(port)} is running and enabled",
            service=instance(port),
            running=True,
            enabled=True,
            daemon_reload=unit.will_change,
        )
    for name, _ in sorted(status.items()):
        if name.startswith(INSTANCE_PREFIX) and name not in {instance(p) for p in ports}:
            systemd.service(
                name=f"Ensure surplus {name} is stopped and disabled",
                service=name,
                running=False,
                enabled=False,
            )
    if running_before:
        units = " ".join(instance(port) for port in running_before)
        health = " ".join(f"--port {port}" for port in running_before)
        server.shell(
            name="Ensure running instances serve the current release (one host at a time)",
            commands=[
                f"systemctl restart {units}",
                f"{VENV}/bin/wssfleet wait-healthy --host {node.address} {health} --timeout 60",
            ],
            _if=any_changed(install, environment, unit),
            _serial=True,
        )
