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
from pyinfra.operations import apt, files, server

from roles import activate_candidate, daemon_running, helper_installed, secret_template
from wssfleet_control import internal_tls
from wssfleet_control.commands import quote
from wssfleet_control.deployment import DeployRun
from wssfleet_control.facts import FileMode, OpenFilesLimit
from wssfleet_control.hostside import layout
from wssfleet_control.hostside.layout import (
    ADMIN_SOCKET,
    HAPROXY_CANDIDATE,
    HAPROXY_CERTIFICATE,
    HAPROXY_CERTIFICATE_DIRECTORY,
    HAPROXY_CONFIG,
    HAPROXY_INTERNAL_CA,
    HAPROXY_METRICS_PORT,
    HAPROXY_PEER_CERTIFICATE,
    REBALANCER_ENVIRONMENT,
    REBALANCER_HELPER,
    REBALANCER_UNIT,
    RUNTIME_HELPER,
)
from wssfleet_control.settings import App, SettingsError

# The masters' shared admission counters (HAProxy `peers`).
PEERS_SECTION = "wssfleet_masters"
# Seconds between the rebalancer's rounds, and how far off the mean an instance may be.
REBALANCE_INTERVAL = 2
REBALANCE_TOLERANCE = 0.2


@dataclass(frozen=True)
class Backend:
    name: str
    address: str
    port: int
    # The worker's inventory name: with internal_tls, its certificate must carry it.
    host: str = ""


@dataclass(frozen=True)
class AppBackend:
    """An app's backend: its settings (route, health check, maxconn) and its instances."""

    app_name: str
    app: App
    servers: list[Backend]

    @property
    def name(self) -> str:
        return layout.app_layout(self.app_name).backend


def check_open_files(maxconn: int) -> None:
    # Each connection holds two descriptors (client and worker side), plus listeners.
    needed = 2 * maxconn + 100
    allowed = host.get_fact(OpenFilesLimit)
    if needed > allowed:
        raise SettingsError(
            f"setting haproxy_maxconn={maxconn} needs {needed} open files, but {host.name} "
            f"allows {allowed}: lower haproxy_maxconn to {(allowed - 100) // 2} or less"
        )


@deploy("HAProxy")
def apply(run: DeployRun, backends: list[Backend], app_backends: list[AppBackend]) -> None:
    """Install HAProxy with a config whose backend lists every worker instance, and a
    backend and routes for each app.

    + run: the deploy: the checked inventory (haproxy_* settings, domain, hsts_max_age,
      internal_tls), the internal key the rebalancer presents to the workers' /internal/shed
      and, with internal_tls, the deployment's CA certificate
    + backends: every worker instance, by name, address and port
    + app_backends: each app's backend, settings and instances
    """
    fleet = run.fleet
    check_open_files(fleet.settings.haproxy_maxconn)
    internal_ca = internal_tls.ca_certificate(run.secrets)
    apt.packages(name="Ensure haproxy is installed", packages=["haproxy"], no_recommends=True)
    # Before the config: removing a worker below asks its instances to shed with this key.
    key_file = secret_template(
        name="Ensure the rebalancer's key file is current (contents withheld: secrets)",
        src=run.template("haproxy", "wssfleet-rebalancer.env.j2"),
        dest=REBALANCER_ENVIRONMENT,
        user="root",
        group="root",
        mode="600",
        internal_key=run.secrets["internal_key"],
        internal_ca=HAPROXY_INTERNAL_CA if fleet.settings.internal_tls else "",
    )
    if fleet.settings.internal_tls:
        files.put(
            name="Ensure the deployment's internal CA is there to check the workers",
            src=StringIO(internal_ca),
            dest=HAPROXY_INTERNAL_CA,
            mode="644",
        )
    peer_certificate = _peer_certificate(run)
    files.directory(
        name="Ensure the certificate directory is private",
        path=HAPROXY_CERTIFICATE_DIRECTORY,
        user="root",
        group="haproxy",
        mode="750",
    )
    # HAProxy cannot bind :443 without a certificate, and certbot needs HAProxy on :80 to
    # get the real one: start on a throw-away self-signed one, which certbot's deploy hook
    # replaces. Only when no certificate exists, so a second deploy changes nothing.
    if not host.get_fact(File, path=HAPROXY_CERTIFICATE):
        server.shell(
            name="Ensure HAProxy has a certificate to start with (self-signed, replaced by ACME)",
            commands=[
                "set -e; umask 077; tmp=$(mktemp -d); "
                "openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes "
                f"-days 7 -subj {quote('/CN=' + fleet.settings.domain)} "
                "-keyout $tmp/key -out $tmp/cert "
                "2>/dev/null; "
                f"cat $tmp/cert $tmp/key > {HAPROXY_CERTIFICATE}; rm -r $tmp"
            ],
        )
    helper_installed("haproxy_runtime.py")
    candidate = files.template(
        name="Ensure the candidate HAProxy config is rendered",
        src=run.template("haproxy", "haproxy.cfg.j2"),
        dest=HAPROXY_CANDIDATE,
        mode="640",
        settings=fleet.settings,
        layout=layout,
        servers=backends,
        app_backends=app_backends,
        certificate=HAPROXY_CERTIFICATE,
        internal_ca=HAPROXY_INTERNAL_CA if fleet.settings.internal_tls else "",
        internal_ca_digest=hashlib.sha256(internal_ca.encode()).hexdigest(),
        metrics_address=fleet.node(host.name).address,
        metrics_port=HAPROXY_METRICS_PORT,
        peers=fleet.masters,
        peers_section=PEERS_SECTION,
        local_peer=host.name,
        peer_certificate=HAPROXY_PEER_CERTIFICATE if peer_certificate else "",
        peer_certificate_digest=hashlib.sha256(peer_certificate.encode()).hexdigest(),
    )
    activate_candidate(
        "Ensure the validated HAProxy config is live (servers changed at runtime, else reloaded)",
        candidate,
        HAPROXY_CANDIDATE,
        [
            f"haproxy -c -f {HAPROXY_CANDIDATE} || {{ rm -f {HAPROXY_CANDIDATE}; exit 1; }}",
            # Workers added or removed: through the runtime API; anything else: a reload.
            f"python3 {RUNTIME_HELPER} apply {HAPROXY_CANDIDATE} {HAPROXY_CONFIG} "
            f"{fleet.settings.drain_seconds} "
            f"{fleet.settings.close_spread_seconds}",
        ],
        # Masters take a new config one at a time: a config that fails on one stops the
        # deploy there, while the others still serve the old one.
        one_host_at_a_time=True,
    )
    daemon_running(
        name="Ensure haproxy is running and enabled",
        service="haproxy.service",
        enabled=True,
    )
    # A reload hands the listening sockets to the new process, the admin socket with the mode
    # of its first bind (Debian's default config has 660, group haproxy): set it root's.
    if host.get_fact(FileMode, path=ADMIN_SOCKET) != "600":
        server.shell(
            name="Ensure HAProxy's admin socket is root's alone",
            commands=[
                f"for _ in $(seq 50); do [ -S {ADMIN_SOCKET} ] && break; sleep 0.1; done; "
                f"chmod 600 {ADMIN_SOCKET}"
            ],
        )
    _rebalancer(run, backends, key_file)


def _peer_certificate(run: DeployRun) -> str:
    """With internal_tls and two or more masters, this master's certificate and key where its
    HAProxy presents them to the other masters' (their peers section asks for a master's);
    "" and no file otherwise."""
    fleet = run.fleet
    if not (fleet.settings.internal_tls and len(fleet.masters) > 1):
        files.file(
            name="Ensure no peer certificate is left (the peers speak plain TCP)",
            path=HAPROXY_PEER_CERTIFICATE,
            present=False,
        )
        return ""
    key, certificate = internal_tls.host_material(run.secrets, host.name)
    secret_template(
        name="Ensure this master's peer certificate is current (contents withheld: a key)",
        src=run.template("internal_tls", "key.pem.j2"),
        dest=HAPROXY_PEER_CERTIFICATE,
        user="root",
        group="root",
        mode="600",
        key=certificate + key,
    )
    return certificate


def _rebalancer(run: DeployRun, backends: list[Backend], environment) -> None:
    fleet = run.fleet
    program = helper_installed("rebalancer.py")
    unit = files.template(
        name="Ensure the rebalancer's unit is current",
        src=run.template("haproxy", "wssfleet-rebalancer.service.j2"),
        dest=f"/etc/systemd/system/{REBALANCER_UNIT}",
        mode="644",
        program=REBALANCER_HELPER,
        rate=fleet.settings.rebalance_rate,
        interval=REBALANCE_INTERVAL,
        tolerance=REBALANCE_TOLERANCE,
        servers=backends,
        worker_addresses=sorted({backend.address for backend in backends}),
        environment_file=REBALANCER_ENVIRONMENT,
    )
    daemon_running(
        name="Ensure the rebalancer is running and enabled",
        service=REBALANCER_UNIT,
        enabled=True,
        daemon_reload=unit.will_change,
        restarted=program.will_change or unit.will_change or environment.will_change,
    )
