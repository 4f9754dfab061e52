"""The canary on each master (hostside/canary.py): publishes through the front door every
second and expects each message back through every worker instance of the built-in service,
so that delivery that stops while every health check is green is seen, and alerted on
(WssfleetCanaryStalled), within seconds.

Its key signs tokens the workers accept for the wssfleet.canary.* channels only: a master's
canary key is worth a canary's messages, never a client's. Apps (settings: apps) speak their
own protocols; the canary watches the built-in service only.
"""

from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.operations import files

from roles import daemon_running, helper_installed, secret_template
from wssfleet_control import site_certificate
from wssfleet_control.deployment import DeployRun
from wssfleet_control.hostside.layout import (
    CANARY_ENVIRONMENT,
    CANARY_HELPER,
    CANARY_METRICS_PORT,
    CANARY_ROOTS,
    CANARY_STALL_AFTER_SECONDS,
    CANARY_UNIT,
    # HAProxy's copy of the internal CA (roles/haproxy.py puts it there first): the canary
    # checks the workers' certificates as HAProxy does.
    HAPROXY_INTERNAL_CA,
)

# A message a second.
INTERVAL_SECONDS = 1


def token_ttl(settings) -> int:
    """How long the canary's tokens live: an hour, or less if the service accepts less."""
    return min(3600, settings.token_max_ttl)


def roots(run: DeployRun) -> str:
    """The roots the front door's certificate chains to when they are not the system's."""
    settings = run.fleet.settings
    if settings.certificate_source == site_certificate.PRIVATE_CA:
        return site_certificate.ca_certificate(run.secrets)
    if settings.acme and settings.acme_root_bundle:
        with open(settings.acme_root_bundle) as bundle:
            return bundle.read()
    return ""


@deploy("Canary")
def apply(run: DeployRun, instances: list[tuple[str, str, int, str]]) -> None:
    """The canary on this master, subscribed to every instance of the built-in service.

    + run: the deploy (masters, front door, domain, internal_tls, the canary key)
    + instances: (server name, address, port, worker name) of every service process
    """
    fleet = run.fleet
    settings = fleet.settings
    node = fleet.node(host.name)
    program = helper_installed("canary.py")
    environment = secret_template(
        name="Ensure the canary's key file is current (contents withheld: a secret)",
        src=run.template("canary", "wssfleet-canary.env.j2"),
        dest=CANARY_ENVIRONMENT,
        user="root",
        group="root",
        mode="600",
        canary_key=run.secrets["canary_key"],
    )
    trusted = roots(run)
    if trusted:
        roots_file = files.put(
            name="Ensure the canary trusts the roots the site's certificate chains to",
            src=StringIO(trusted),
            dest=CANARY_ROOTS,
            mode="644",
        )
    else:
        roots_file = files.file(
            name="Ensure the canary trusts the system's roots alone",
            path=CANARY_ROOTS,
            present=False,
        )
    front_door = fleet.front_door or fleet.master.address
    unit = files.template(
        name="Ensure the canary's unit is current",
        src=run.template("canary", "wssfleet-canary.service.j2"),
        dest=f"/etc/systemd/system/{CANARY_UNIT}",
        mode="644",
        program=CANARY_HELPER,
        environment_file=CANARY_ENVIRONMENT,
        master=host.name,
        front_door=front_door,
        server_name=settings.domain,
        metrics=f"{node.address}:{CANARY_METRICS_PORT}",
        interval=INTERVAL_SECONDS,
        stall_after=CANARY_STALL_AFTER_SECONDS,
        token_ttl=token_ttl(settings),
        ca_file=CANARY_ROOTS if trusted else "",
        instance_ca=HAPROXY_INTERNAL_CA if settings.internal_tls else "",
        instances=[
            f"{server}={address}:{port}" + (f"={worker}" if settings.internal_tls else "")
            for server, address, port, worker in instances
        ],
        allowed_addresses=sorted(
            {
                front_door,
                *(master.address for master in fleet.masters),
                *(address for _, address, _, _ in instances),
                *(monitor.address for monitor in fleet.monitors),
            }
        ),
    )
    daemon_running(
        name="Ensure the canary is running and enabled",
        service=CANARY_UNIT,
        enabled=True,
        daemon_reload=unit.will_change,
        restarted=program.will_change
        or unit.will_change
        or environment.will_change
        or roots_file.will_change,
    )
