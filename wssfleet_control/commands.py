"""Every command line the control side runs on a host outside pyinfra's operations: the
rollout's, `status`'s, `renew`'s. Pure functions from values to one shell line, each value
quoted, so what runs where is read in one place (Kamal's commands/ is the model).
"""

from __future__ import annotations

import shlex
from collections.abc import Iterable

from wssfleet_control.hostside import layout


def quote(value: object) -> str:
    """A value as one shell word, whatever it holds."""
    return shlex.quote(str(value))


def _line(*words: object) -> str:
    return " ".join(quote(word) for word in words)


# The instance helper on a worker (hostside/instances.py), for one app's instances.
def _instances(app: str, *words: object) -> str:
    return _line("python3", layout.INSTANCES_HELPER, "--app", app, *words)


def instance_states(ports: Iterable[int], app: str = layout.BUILTIN_APP) -> str:
    return _instances(app, "state", *ports)


def current_release(app: str = layout.BUILTIN_APP) -> str:
    return _instances(app, "current")


def previous_release(app: str = layout.BUILTIN_APP) -> str:
    return _instances(app, "previous")


def installed_releases(app: str = layout.BUILTIN_APP) -> str:
    return _instances(app, "installed")


def point_current(release: str, app: str = layout.BUILTIN_APP) -> str:
    return _instances(app, "point", release)


def drain_instance(address: str, port: int, seconds: int) -> str:
    """The built-in service's own drain: its clients closed with 1012 over ``seconds``."""
    return _instances(layout.BUILTIN_APP, "drain", address, port, seconds)


def drain_app_instance(app: str, address: str, port: int, path: str, seconds: int) -> str:
    """An app's own drain: its drain path asked to close its clients over ``seconds``."""
    return _instances(app, "drain-path", address, port, path, seconds)


def wait_no_sessions(worker: str, port: int, seconds: int, app: str) -> str:
    """Until this master's HAProxy has no open session left on the instance."""
    server = layout.app_layout(app).server(worker, port)
    return _line("python3", layout.RUNTIME_HELPER, "wait-no-sessions", server, seconds)


def wait_healthy(
    address: str,
    port: int,
    release: str,
    seconds: int,
    app: str = layout.BUILTIN_APP,
    check: str = "/healthz",
) -> str:
    return _instances(app, "wait-healthy", address, port, release, seconds, check)


def restart_instance(port: int, app: str = layout.BUILTIN_APP) -> str:
    return _line("systemctl", "restart", layout.app_layout(app).unit(port))


# The runtime-API client on a master (hostside/haproxy_runtime.py).
def set_server_state(worker: str, port: int, state: str, app: str = layout.BUILTIN_APP) -> str:
    server = layout.app_layout(app).server(worker, port)
    return _line("python3", layout.RUNTIME_HELPER, "server-state", server, state)


def wait_server_up(worker: str, port: int, seconds: int, app: str = layout.BUILTIN_APP) -> str:
    return wait_named_server_up(layout.app_layout(app).server(worker, port), seconds)


def wait_named_server_up(server: str, seconds: int) -> str:
    """Until HAProxy's checks see BACKEND/SERVER UP (its state on one line)."""
    return _line("python3", layout.RUNTIME_HELPER, "wait-up", server, seconds)


def drain_servers(
    seconds: int, worker: str, address: str, ports: Iterable[int], shedding: bool = True
) -> str:
    """Drain a worker's servers on one master and wait until it has no session with them;
    without ``shedding`` only wait (another master asked the instances to move clients)."""
    servers = [f"{layout.server_name(worker, port)}={address}:{port}" for port in ports]
    verb = "drain-servers" if shedding else "wait-drained"
    return _line("python3", layout.RUNTIME_HELPER, verb, seconds, *servers)


def backend_servers() -> str:
    return _line("python3", layout.RUNTIME_HELPER, "servers")


# Status.
def unit_states(units: Iterable[str]) -> str:
    return _line(
        "systemctl", "list-units", "--all", "--no-legend", "--plain", "--output=json", *units
    )


def served_certificate() -> str:
    return _line(
        "openssl", "x509", "-noout", "-enddate", "-issuer", "-in", layout.HAPROXY_CERTIFICATE
    )


def certificate_record() -> str:
    return _line("python3", layout.CERTIFICATE_METRICS_HELPER, "show")


def prometheus_summary(address: str, port: int) -> str:
    return _line("python3", layout.PROMETHEUS_QUERY_HELPER, f"{address}:{port}", "summary")


# Certificates.
def forced_renewal() -> str:
    """The cron job's own command, made to renew now."""
    return _line(layout.RENEW_COMMAND, "--force-renewal")


def signal_instance(port: int, signal: str) -> str:
    """``signal`` (SIGSTOP, SIGKILL, ...) to the instance's main process: the fault tests'."""
    return _line(
        "systemctl", "kill", "--kill-whom=main", f"--signal={signal}", layout.instance_unit(port)
    )


def certificate_identity() -> str:
    """The served certificate's SHA-256 fingerprint, dates, subject and issuer."""
    return _line(
        "openssl",
        "x509",
        "-noout",
        "-fingerprint",
        "-sha256",
        "-dates",
        "-subject",
        "-issuer",
        "-in",
        layout.HAPROXY_CERTIFICATE,
    )


def served_pem() -> str:
    return _line("cat", layout.HAPROXY_CERTIFICATE)


def install_shared_pem(staged: str, source: str, domains: list[str]) -> str:
    """Another master's certificate, installed only after certificate_sync.py's checks."""
    return _line("python3", layout.CERTIFICATE_SYNC_HELPER, "--install", staged, source, *domains)


# Redis with Sentinels (several redis hosts).
def _tls(tls: bool) -> str:
    """redis-cli's options for internal_tls: TLS, checked against the deployment's CA."""
    return f"--tls --cacert {layout.REDIS_TLS_DIRECTORY}/ca.pem " if tls else ""


def _sentinel(port: int, tls: bool, *words: str) -> str:
    return (
        f'REDISCLI_AUTH="$(cat {layout.SENTINEL_AUTH_FILE})" timeout 5 redis-cli '
        f"--no-auth-warning {_tls(tls)}-h 127.0.0.1 -p {int(port)} "
        + _line("SENTINEL", *words, layout.REDIS_PRIMARY_NAME)
    )


def sentinel_primary(port: int = 26379, tls: bool = False) -> str:
    """Where this host's Sentinel says the primary is: "address\nport" (nothing if none)."""
    return _sentinel(port, tls, "GET-MASTER-ADDR-BY-NAME")


def sentinel_quorum(port: int = 26379, tls: bool = False) -> str:
    """This host's Sentinel's CKQUORUM answer: whether a majority can authorise a failover."""
    return _sentinel(port, tls, "CKQUORUM")


def sentinel_replicas(port: int = 26379, tls: bool = False) -> str:
    """This host's Sentinel's view of each replica (its fields, one per line), as of the
    replica's last INFO: the Sentinels ask a replica every 10 s while the primary is up."""
    return _sentinel(port, tls, "REPLICAS")


def sentinel_failover(port: int = 26379, tls: bool = False) -> str:
    """Have the Sentinels promote a replica now (an operator's planned switch)."""
    return _sentinel(port, tls, "FAILOVER")


def redis_admin(*words: str, port: int = 6379, tls: bool = False) -> str:
    """One command to this host's Redis as the operator's user (root's password file)."""
    return (
        f'REDISCLI_AUTH="$(cat {layout.REDIS_ADMIN_AUTH_FILE})" timeout 5 redis-cli '
        f"--no-auth-warning {_tls(tls)}--user wssfleet-admin -h 127.0.0.1 -p {int(port)} "
        + _line(*words)
    )


def redis_replication(port: int = 6379, tls: bool = False) -> str:
    """This host's Redis's INFO replication (its role, replicas and their lag)."""
    return redis_admin("INFO", "replication", port=port, tls=tls)


def holds_address(address: str) -> str:
    """Prints a line when this host holds ``address`` (the front door), nothing otherwise. Not
    the copy an old holder keeps on loopback during a planned move (scope host)."""
    return _line("ip", "-4", "-o", "addr", "show", "to", address, "scope", "global")


def haproxy_answers() -> str:
    """Exit 0 when this master's HAProxy answers HTTP (keepalived's own check)."""
    return _line("python3", layout.RUNTIME_HELPER, "answers")


def front_door_handover(*words: str) -> str:
    """One step of a planned move of the front door (hostside/front_door_handover.py)."""
    return _line("python3", layout.HANDOVER_HELPER, *words)


# Preflight (wssfleet check --hosts).
def can_connect(address: str, port: int, seconds: int = 5) -> str:
    """Exit 0 when a TCP connection to address:port opens within ``seconds``."""
    program = (
        "import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), "
        "float(sys.argv[3])).close()"
    )
    return _line("python3", "-c", program, address, port, seconds)
