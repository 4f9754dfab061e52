"""HAProxy on the master: TLS termination, HTTP to HTTPS redirect, WebSocket routing.

The rendered config is a candidate until ``haproxy -c`` accepts it; only then does it
replace the live file, and HAProxy reloads (never restarts) so open WebSockets survive.
"""

import hashlib
from dataclasses import dataclass
from io import StringIO

from pyinfra import host
from pyinfra.api import deploy
from pyinfra.facts.files import File
from pyinfra.facts.server import Command
from pyinfra.operations import apt, files, server, systemd

from roles import (
    HELPERS,
    HOSTSIDE,
    activate_candidate,
    open_files_limit,
    secret_template,
    template,
)
from wssfleet_control import internal_tls
from wssfleet_control.hostside import haproxy_runtime
from wssfleet_control.inventory import Fleet
from wssfleet_control.run import quote
from wssfleet_control.settings import HAPROXY_METRICS_PORT, SettingsError

LIVE = "/etc/haproxy/haproxy.cfg"
CANDIDATE = "/etc/haproxy/haproxy.cfg.wssfleet-candidate"
CERTIFICATE = "/etc/haproxy/certs/wssfleet.pem"
# The master's one runtime-API client (wssfleet_control/hostside/haproxy_runtime.py).
RUNTIME = f"{HELPERS}/haproxy_runtime.py"
REBALANCER = f"{HELPERS}/rebalancer.py"
REBALANCER_UNIT = "/etc/systemd/system/wssfleet-rebalancer.service"
# The internal key it presents to the workers' /internal/shed; root-only, systemd reads it.
REBALANCER_ENV = haproxy_runtime.INTERNAL_KEY_FILE
ADMIN_SOCKET = haproxy_runtime.ADMIN_SOCKET
# Seconds between the rebalancer's rounds, and how far off the mean an instance may be.
REBALANCE_INTERVAL = 2
REBALANCE_TOLERANCE = 0.2


BACKEND = "workers"


@dataclass(frozen=True)
class Backend:
    name: str
    address: str
    port: int


def server_name(worker: str, port: int) -> str:
    """The HAProxy server of one worker instance, as the config and the runtime API name it."""
    return f"{worker}-{port}"


def check_open_files(maxconn: int) -> None:
    # Each connection holds two descriptors (client and worker side), plus listeners.
    needed = 2 * maxconn + 100
    allowed = open_files_limit()
    if needed > allowed:
        raise SettingsError(
            f"setting haproxy_maxconn={maxconn} needs {needed} open files, but {host.name} "
            f"allows {allowed}: lower haproxy_maxconn to {(allowed - 100) // 2} or less"
        )


@deploy("HAProxy")
def apply(fleet: Fleet, backends: list[Backend], internal_key: str, internal_ca: str) -> None:
    """Install HAProxy with a config whose backend lists every worker instance.

    + fleet: the checked inventory (haproxy_* settings, domain, hsts_max_age, internal_tls)
    + backends: every worker instance, by name, address and port
    + internal_key: what the rebalancer presents to the workers' /internal/shed
    + internal_ca: the deployment's CA certificate (PEM), used with internal_tls
    """
    apt.packages(name="Ensure haproxy is installed", packages=["haproxy"], no_recommends=True)
    # Before the config: removing a worker below asks its instances to shed with this key.
    key_file = secret_template(
        name="Ensure the rebalancer's key file is current (contents withheld: secrets)",
        src=template("haproxy", "wssfleet-rebalancer.env.j2"),
        dest=REBALANCER_ENV,
        user="root",
        group="root",
        mode="600",
        internal_key=internal_key,
        internal_ca=internal_tls.HAPROXY_CA if fleet.settings.internal_tls else "",
    )
    if fleet.settings.internal_tls:
        files.put(
            name="Ensure the deployment's internal CA is there to check the workers",
            src=StringIO(internal_ca),
            dest=internal_tls.HAPROXY_CA,
            mode="644",
        )
    files.directory(
        name="Ensure the certificate directory is private",
        path="/etc/haproxy/certs",
        user="root",
        group="haproxy",
        mode="750",
    )
    # HAProxy cannot bind :443 without a certificate, and certbot needs HAProxy on :80 to
    # get the real one: start on a throw-away self-signed one, which certbot's deploy hook
    # replaces. Only when no certificate exists, so a second deploy changes nothing.
    if not host.get_fact(File, path=CERTIFICATE):
        server.shell(
            name="Ensure HAProxy has a certificate to start with (self-signed, replaced by ACME)",
            commands=[
                "set -e; umask 077; tmp=$(mktemp -d); "
                "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                f"-days 7 -subj {quote('/CN=' + fleet.settings.domain)} "
                "-keyout $tmp/key -out $tmp/cert "
                "2>/dev/null; "
                f"cat $tmp/cert $tmp/key > {CERTIFICATE}; rm -r $tmp"
            ],
        )
    files.directory(name=f"Ensure {HELPERS} exists", path=HELPERS, mode="755")
    files.put(
        name="Ensure the runtime-API client is installed",
        src=str(HOSTSIDE / "haproxy_runtime.py"),
        dest=RUNTIME,
        mode="755",
    )
    candidate = files.template(
        name="Ensure the candidate HAProxy config is rendered",
        src=template("haproxy", "haproxy.cfg.j2"),
        dest=CANDIDATE,
        mode="640",
        settings=fleet.settings,
        servers=backends,
        certificate=CERTIFICATE,
        internal_ca=internal_tls.HAPROXY_CA if fleet.settings.internal_tls else "",
        internal_ca_digest=hashlib.sha256(internal_ca.encode()).hexdigest(),
        metrics_address=fleet.master.address,
        metrics_port=HAPROXY_METRICS_PORT,
    )
    activate_candidate(
        "Ensure the validated HAProxy config is live (servers changed at runtime, else reloaded)",
        candidate,
        CANDIDATE,
        [
            f"haproxy -c -f {CANDIDATE} || {{ rm -f {CANDIDATE}; exit 1; }}",
            # Workers added or removed: through the runtime API; anything else: a reload.
            f"python3 {RUNTIME} apply {CANDIDATE} {LIVE} {fleet.settings.drain_seconds} "
            f"{fleet.settings.close_spread_seconds}",
        ],
    )
    systemd.service(
        name="Ensure haproxy is running and enabled",
        service="haproxy.service",
        running=True,
        enabled=True,
    )
    # A reload hands the listening sockets to the new process, the admin socket with the mode
    # of its first bind (Debian's default config has 660, group haproxy): set it root's.
    mode = host.get_fact(Command, command=f"stat -c %a {ADMIN_SOCKET} 2>/dev/null || true")
    if mode != "600":
        server.shell(
            name="Ensure HAProxy's admin socket is root's alone",
            commands=[
                f"for _ in $(seq 50); do [ -S {ADMIN_SOCKET} ] && break; sleep 0.1; done; "
                f"chmod 600 {ADMIN_SOCKET}"
            ],
        )
    _rebalancer(fleet, backends, key_file)


def _rebalancer(fleet: Fleet, backends: list[Backend], environment) -> None:
    program = files.put(
        name="Ensure the rebalancer is installed",
        src=str(HOSTSIDE / "rebalancer.py"),
        dest=REBALANCER,
        mode="755",
    )
    unit = files.template(
        name="Ensure the rebalancer's unit is current",
        src=template("haproxy", "wssfleet-rebalancer.service.j2"),
        dest=REBALANCER_UNIT,
        mode="644",
        program=REBALANCER,
        rate=fleet.settings.rebalance_rate,
        interval=REBALANCE_INTERVAL,
        tolerance=REBALANCE_TOLERANCE,
        servers=backends,
        worker_addresses=sorted({backend.address for backend in backends}),
        environment_file=REBALANCER_ENV,
    )
    systemd.service(
        name="Ensure the rebalancer is running and enabled",
        service="wssfleet-rebalancer.service",
        running=True,
        enabled=True,
        daemon_reload=unit.will_change,
        restarted=program.will_change or unit.will_change or environment.will_change,
    )
