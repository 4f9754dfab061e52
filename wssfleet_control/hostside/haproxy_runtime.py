#!/usr/bin/python3
"""HAProxy's runtime API, for the master: the one client the certificate hook, the reload
check, `wssfleet status` and the rollout use. Installed by roles/haproxy.py as
layout.RUNTIME_HELPER; standard library only (it runs on Debian's python3).

    haproxy_runtime.py servers              every backend server and its state, as JSON
    haproxy_runtime.py reload               reload, and wait for HAProxy to say it loaded
    haproxy_runtime.py reloads              how many times the master has reloaded
    haproxy_runtime.py install-cert LINEAGE swap in certbot's certificate without a reload
    haproxy_runtime.py install-pem FILE SOURCE   the same with another master's PEM (FILE is
        removed once read)
    haproxy_runtime.py answers              exit 0 when HAProxy answers HTTP on loopback
        (keepalived's check of the front door's holder)
    haproxy_runtime.py server-state BACKEND/SERVER ready|drain|maint
    haproxy_runtime.py wait-up BACKEND/SERVER SECONDS   until its health checks say UP
    haproxy_runtime.py wait-no-sessions BACKEND/SERVER SECONDS   until no client is left on it
    haproxy_runtime.py apply CANDIDATE LIVE DRAIN_SECONDS SPREAD_SECONDS
        make the candidate config live: when only the workers' servers differ, add and remove
        them through the runtime API (removed ones drained first) with no reload; otherwise
        reload, and close the old process's WebSockets evenly over SPREAD_SECONDS
    haproxy_runtime.py drain-servers SECONDS SERVER=ADDRESS:PORT...
        out of rotation, their clients moved to the others (1012) over SECONDS
    haproxy_runtime.py close-old PID SPREAD_SECONDS
        close the WebSockets an old (reloaded) process still holds, evenly over the window
"""

from __future__ import annotations

import calendar
import csv
import io
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import sys
import syslog
import time
import urllib.request

from layout import (  # beside this file on the host
    ADMIN_SOCKET,
    BACKEND,
    FRONT_DOOR_RELEASE,
    HAPROXY_CERTIFICATE,
    MASTER_SOCKET,
    REBALANCER_ENVIRONMENT,
    TEXTFILE_DIRECTORY,
)

RELOAD_TIMEOUT = 30.0
MASTER_LINE = re.compile(r"^(\d+)\s+master\s+(\d+)\s+\[failed: (\d+)\]", re.MULTILINE)


class RuntimeApiError(Exception):
    """HAProxy refused or did not answer; the message says what it answered."""


def ask(command: str, path: str | None = None, until: bytes | None = None) -> str:
    """Send one command (to the admin socket unless ``path`` names another); return HAProxy's
    whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(10)
        connection.connect(path or ADMIN_SOCKET)
        connection.sendall(command.encode() + (b"" if command.endswith("\n") else b"\n"))
        reply = b""
        # The master CLI may keep the connection open: stop at the answer's known end.
        while not (until and until in reply) and (chunk := connection.recv(65536)):
            reply += chunk
    return reply.decode()


def servers(path: str | None = None) -> list[dict[str, str]]:
    """Every server of every backend: name, status, open sessions, admin state."""
    rows = csv.DictReader(io.StringIO(ask("show stat", path).lstrip("# ")))
    return [
        {
            "backend": row["pxname"],
            "server": row["svname"],
            "status": row["status"],
            "sessions": row["scur"],
            "check": row.get("check_status", ""),
        }
        for row in rows
        if row["svname"] not in ("FRONTEND", "BACKEND")
    ]


def master_counters(patience: float = 5.0) -> tuple[int, int, int]:
    """The master's PID, its reload count and its failed-reload count. Just after it starts or
    reloads, the master re-executes itself and refuses connections for a moment: it is asked
    again for up to ``patience`` seconds."""
    deadline = time.monotonic() + patience
    while True:
        try:
            reply = ask("show proc", MASTER_SOCKET, until=b"# programs")
            break
        except (ConnectionRefusedError, FileNotFoundError):
            if time.monotonic() >= deadline:
                raise
            time.sleep(0.05)
    match = MASTER_LINE.search(reply)
    if not match:
        raise RuntimeApiError(f"unexpected 'show proc' answer: {reply!r}")
    return int(match[1]), int(match[2]), int(match[3])


def reload(spread_seconds: float = 0) -> int:
    """Reload HAProxy; succeed only once its master reports the new config loaded. Then the
    old process's WebSockets are closed evenly over ``spread_seconds`` (in the background),
    so that its clients reconnect to the new one as a trickle, not all at hard-stop-after."""
    if subprocess.run(["systemctl", "is-active", "--quiet", "haproxy"]).returncode != 0:
        return subprocess.run(["systemctl", "start", "haproxy"]).returncode
    _, reloads, failed = master_counters()
    subprocess.run(["systemctl", "reload", "haproxy"], check=True)
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while time.monotonic() < deadline:
        try:
            _, reloads_now, failed_now = master_counters(patience=0)
        except (OSError, RuntimeApiError):
            # The master re-executes itself while it reloads: its socket comes back.
            time.sleep(0.05)
            continue
        if failed_now > failed:
            log = subprocess.run(
                ["journalctl", "-u", "haproxy", "-n", "8", "--no-pager", "-o", "cat"],
                capture_output=True,
                text=True,
            ).stdout
            print(f"HAProxy rejected the new config and kept the old one:\n{log}", file=sys.stderr)
            return 1
        if reloads_now > reloads:
            if spread_seconds > 0:
                for pid in old_workers():
                    close_old_in_background(pid, spread_seconds)
            return 0
        time.sleep(0.05)
    print(f"HAProxy did not report the reload within {RELOAD_TIMEOUT:.0f} s", file=sys.stderr)
    return 1


def old_workers() -> list[int]:
    """The PIDs of the processes a reload left serving their open connections."""
    reply = ask("show proc", MASTER_SOCKET, until=b"# programs")
    section = reply.split("# old workers", 1)[1] if "# old workers" in reply else ""
    section = section.split("# programs", 1)[0]
    return [int(line.split()[0]) for line in section.splitlines() if line[:1].isdigit()]


def ask_process(pid: int, command: str, wait: float = 2.0) -> str:
    """A command for one (old) process, through the master CLI, which keeps the connection
    open afterwards: an answer ends with an empty line; a command that answers nothing is
    given ``wait`` seconds."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(wait)
        connection.connect(MASTER_SOCKET)
        connection.sendall(f"@!{pid} {command}\n".encode())
        reply = b""
        try:
            while not reply.endswith(b"\n\n") and (chunk := connection.recv(65536)):
                reply += chunk
        except TimeoutError:
            pass
    return reply.decode()


def close_old_in_background(pid: int, spread_seconds: float) -> None:
    # A transient unit: it outlives the deploy's SSH session.
    subprocess.run(
        [
            "systemd-run",
            "--quiet",
            "--collect",
            f"--unit=wssfleet-close-old-haproxy-{pid}",
            "/usr/bin/python3",
            os.path.abspath(__file__),
            "close-old",
            str(pid),
            str(spread_seconds),
        ],
        check=False,
    )


def close_old(pid: int, spread_seconds: float) -> int:
    tunnels = [
        line.split(":", 1)[0]
        for line in ask_process(pid, "show sess").splitlines()
        if f" be={BACKEND} " in line
    ]
    started = time.monotonic()
    print(f"closing {len(tunnels)} WebSockets of old process {pid} over {spread_seconds:.0f} s")
    for n, session in enumerate(tunnels):
        # The middle of each one's share of the window: none is closed the moment it starts.
        due = started + (n + 0.5) * spread_seconds / len(tunnels)
        time.sleep(max(0.0, due - time.monotonic()))
        ask_process(pid, f"shutdown session {session}", wait=0.05)
    return 0


def answers(timeout: float = 1.0) -> bool:
    """Whether HAProxy answers an HTTP request on :80 (a redirect is an answer): a process
    that is gone or frozen does not, though the kernel may still accept the connection. No
    while a planned move gives the front door away (FRONT_DOOR_RELEASE)."""
    if os.path.exists(FRONT_DOOR_RELEASE):
        return False
    try:
        with socket.create_connection(("127.0.0.1", 80), timeout=timeout) as connection:
            connection.settimeout(timeout)
            connection.sendall(b"GET / HTTP/1.0\r\nHost: front-door-check\r\n\r\n")
            return connection.recv(12).startswith(b"HTTP/1.")
    except OSError:
        return False


def install_cert(lineage: str) -> int:
    """Write HAProxy's PEM (chain + key) atomically, then swap it in the running HAProxy."""
    with (
        open(os.path.join(lineage, "fullchain.pem")) as chain,
        open(os.path.join(lineage, "privkey.pem")) as key,
    ):
        pem = chain.read().strip() + "\n" + key.read().strip() + "\n"
    return install_pem(pem, lineage)


def install_pem(pem: str, source: str) -> int:
    """HAProxy's PEM (chain + key, as another master serves it) written atomically and
    swapped in the running HAProxy; ``source`` names where it came from, for the journal."""
    temporary = os.path.join(os.path.dirname(HAPROXY_CERTIFICATE), ".wssfleet.pem.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, HAPROXY_CERTIFICATE)
    _record_served(pem)
    if not os.path.exists(ADMIN_SOCKET):
        syslog.syslog("wssfleet: HAProxy is not running; it loads the new certificate at start")
        return 0
    # The runtime API's payload syntax ends at the first empty line.
    payload = "\n".join(line for line in pem.splitlines() if line.strip())
    created = ask(f"set ssl cert {HAPROXY_CERTIFICATE} <<\n{payload}\n\n")
    committed = ask(f"commit ssl cert {HAPROXY_CERTIFICATE}")
    if "Success" not in committed:
        ask(f"abort ssl cert {HAPROXY_CERTIFICATE}")
        message = (
            f"wssfleet: HAProxy refused the certificate: {created.strip()} {committed.strip()}"
        )
        syslog.syslog(syslog.LOG_ERR, message)
        print(message, file=sys.stderr)
        return 1
    syslog.syslog(f"wssfleet: HAProxy now serves the certificate from {source}")
    return 0


def _record_served(pem: str) -> None:
    """When the certificate HAProxy serves ends, for node_exporter: Prometheus compares the
    masters' (the WssfleetCertificateDiffers alert)."""
    if not os.path.isdir(TEXTFILE_DIRECTORY):
        return
    dates = subprocess.run(
        ["openssl", "x509", "-noout", "-enddate"], input=pem, capture_output=True, text=True
    )
    if dates.returncode != 0:
        return
    ends = calendar.timegm(
        time.strptime(dates.stdout.strip().partition("=")[2], "%b %d %H:%M:%S %Y %Z")
    )
    temporary = os.path.join(TEXTFILE_DIRECTORY, ".wssfleet_served_certificate.prom.tmp")
    with open(temporary, "w") as handle:
        handle.write(
            "# HELP wssfleet_served_certificate_not_after_seconds When the certificate HAProxy "
            "serves expires.\n# TYPE wssfleet_served_certificate_not_after_seconds gauge\n"
            f"wssfleet_served_certificate_not_after_seconds {ends}\n"
        )
    os.replace(temporary, os.path.join(TEXTFILE_DIRECTORY, "wssfleet_served_certificate.prom"))


def server_state(server: str, state: str) -> int:
    if state not in ("ready", "drain", "maint"):
        print(f"state {state!r}: give ready, drain or maint", file=sys.stderr)
        return 2
    answer = ask(f"set server {server} state {state}").strip()
    if answer:
        print(f"HAProxy: {answer}", file=sys.stderr)
        return 1
    return 0


def wait_no_sessions(server: str, seconds: float) -> int:
    """Until BACKEND/SERVER has no open session here (its clients have left), or
    ``seconds``; prints how many are left."""
    backend, _, name = server.partition("/")
    deadline = time.monotonic() + seconds
    while True:
        found = [row for row in servers() if (row["backend"], row["server"]) == (backend, name)]
        left = int(found[0]["sessions"]) if found else 0
        if left == 0 or time.monotonic() > deadline:
            print(left)
            return 0 if left == 0 else 1
        time.sleep(0.2)


def wait_up(server: str, seconds: float) -> int:
    backend, _, name = server.partition("/")
    deadline = time.monotonic() + seconds
    while True:
        found = [row for row in servers() if (row["backend"], row["server"]) == (backend, name)]
        status = found[0]["status"] if found else "absent"
        if status.startswith("UP") or time.monotonic() > deadline:
            print(status)
            return 0 if status.startswith("UP") else 1
        time.sleep(0.2)


# A worker's server line: its name, address:port, and options of its own (the host name its
# certificate must carry, with internal_tls).
SERVER_LINE = re.compile(r"^\s+server\s+(\S+)\s+(\S+)((?:\s+\S+)*)\s*$")


# The backends whose servers change at runtime: the built-in service's and each app's.
DYNAMIC_BACKEND = re.compile(rf"backend ({BACKEND}|app_[a-z0-9-]+)")


def dynamic_servers(config: str) -> tuple[dict[str, str], dict[str, str], str]:
    """The servers of the workers' and the apps' backends ("BACKEND/NAME" -> address:port and
    the server's own options), each of those backends' default-server options, and the rest
    of the config: what a reload would be needed for."""
    servers_found: dict[str, str] = {}
    options: dict[str, str] = {}
    rest = []
    backend = None
    for line in config.splitlines():
        if line and not line[0].isspace():
            backend = DYNAMIC_BACKEND.fullmatch(line.strip())
        match = SERVER_LINE.match(line)
        if backend and match:
            servers_found[f"{backend[1]}/{match[1]}"] = f"{match[2]}{match[3]}"
            continue
        if backend and line.strip().startswith("default-server "):
            options[backend[1]] = line.strip().removeprefix("default-server ")
        # The template leaves a blank line a server: blank lines say nothing.
        if line.strip():
            rest.append(line)
    return servers_found, options, "\n".join(rest)


def apply(candidate_path: str, live_path: str, drain_seconds: float, spread_seconds: float) -> int:
    """Make the (checked) candidate the live config, with no reload when only the servers of
    the workers' and the apps' backends change (a worker added or removed)."""
    with open(candidate_path) as candidate:
        wanted, options, wanted_rest = dynamic_servers(candidate.read())
    running: dict[str, str] = {}
    running_rest = None
    if os.path.exists(live_path):
        with open(live_path) as live:
            running, _, running_rest = dynamic_servers(live.read())
    if wanted_rest != running_rest or not os.path.exists(ADMIN_SOCKET):
        return install_and_reload(candidate_path, live_path, spread_seconds)
    for server in sorted(set(wanted) - set(running)):
        backend = server.partition("/")[0]
        if not add_server(server, wanted[server], options.get(backend, "")):
            return install_and_reload(candidate_path, live_path, spread_seconds)
    removed = sorted(set(running) - set(wanted))
    # The service's instances move their clients first; an app's are cut (they reconnect).
    service = [server for server in removed if server.startswith(f"{BACKEND}/")]
    drain_servers(
        {server.partition("/")[2]: running[server].split()[0] for server in service},
        drain_seconds,
    )
    for server in removed:
        ask(f"set server {server} state maint")
        ask(f"shutdown sessions server {server}")
        answer = ask(f"del server {server}").strip()
        if "Server deleted" not in answer:
            print(f"HAProxy: del server {server}: {answer}; reloading", file=sys.stderr)
            return install_and_reload(candidate_path, live_path, spread_seconds)
        print(f"removed server {server} without a reload")
    install(candidate_path, live_path)
    return 0


def add_server(server: str, address: str, options: str) -> bool:
    """``server``: BACKEND/NAME; ``address``: address:port and the server's own options, as
    its config line has them."""
    # Dynamic servers do not take the backend's default-server line: give its options.
    for command in (
        f"add server {server} {address} {options}",
        f"enable health {server}",
        f"enable server {server}",
    ):
        answer = ask(command).strip()
        if answer and "New server registered" not in answer:
            print(f"HAProxy: {command}: {answer}", file=sys.stderr)
            return False
    print(f"added server {server} ({address.split()[0]}) without a reload")
    return True


def internal_setting(name: str) -> str:
    """WSSFLEET_INTERNAL_KEY (what the workers' /internal/shed asks for) or _CA (with
    internal_tls, the CA their certificates chain to): the rebalancer has them in its
    environment, root reads them from the rebalancer's environment file."""
    value = os.environ.get(name)
    if value is None and os.access(REBALANCER_ENVIRONMENT, os.R_OK):
        with open(REBALANCER_ENVIRONMENT) as lines:
            for line in lines:
                key, _, found = line.strip().partition("=")
                if key == name:
                    value = found
    return value or ""


def shed(address: str, count: int, seconds: float, via: str = "") -> str:
    """Ask the instance at ``address`` (host:port) to close ``count`` clients with 1012 over
    ``seconds`` (with ``via``, only those that came through the master at that address); its
    answer. OSError when it cannot be asked."""
    authority = internal_setting("WSSFLEET_INTERNAL_CA")
    scheme = "https" if authority else "http"
    through = f"&via={via}" if via else ""
    request = urllib.request.Request(
        f"{scheme}://{address}/internal/shed?count={count}&seconds={seconds}{through}",
        headers={"Authorization": f"Bearer {internal_setting('WSSFLEET_INTERNAL_KEY')}"},
    )
    context = ssl.create_default_context(cafile=authority) if authority else None
    with urllib.request.urlopen(request, timeout=5, context=context) as reply:
        return reply.read().decode()


def drain_servers(removed: dict[str, str], drain_seconds: float, shedding: bool = True) -> None:
    """No new client for these servers; their instances close their clients with 1012 over
    the drain window, so they reconnect to the others; wait until they have none here.
    Without ``shedding`` another master has asked the instances already: only wait."""
    for name, address in removed.items():
        ask(f"set server {BACKEND}/{name} state drain")
        if not shedding:
            continue
        try:
            shed(address, 1_000_000, drain_seconds)
        except OSError as error:
            print(f"{name}: could not ask {address} to shed its clients: {error}", file=sys.stderr)
    deadline = time.monotonic() + drain_seconds + 10
    while removed and time.monotonic() < deadline:
        sessions = {row["server"]: int(row["sessions"]) for row in servers()}
        if all(sessions.get(name, 0) == 0 for name in removed):
            return
        time.sleep(0.5)


def install(candidate_path: str, live_path: str) -> None:
    temporary = f"{live_path}.wssfleet-new"
    shutil.copyfile(candidate_path, temporary)
    os.chmod(temporary, 0o644)
    os.replace(temporary, live_path)


def install_and_reload(candidate_path: str, live_path: str, spread_seconds: float) -> int:
    install(candidate_path, live_path)
    return reload(spread_seconds)


def main(argv: list[str]) -> int:
    match argv:
        case ["servers"]:
            print(json.dumps(servers()))
            return 0
        case ["reload"]:
            return reload()
        case ["reloads"]:
            print(master_counters()[1])
            return 0
        case ["install-cert", lineage]:
            return install_cert(lineage)
        case ["install-cert"]:
            return install_cert(os.environ["RENEWED_LINEAGE"])
        case ["answers"]:
            return 0 if answers() else 1
        case ["install-pem", path, source]:
            with open(path) as handle:
                pem = handle.read()
            os.unlink(path)
            return install_pem(pem, source)
        case ["server-state", server, state]:
            return server_state(server, state)
        case ["wait-no-sessions", server, seconds]:
            return wait_no_sessions(server, float(seconds))
        case ["wait-up", server, seconds]:
            return wait_up(server, float(seconds))
        case ["apply", candidate, live, drain_seconds, spread_seconds]:
            return apply(candidate, live, float(drain_seconds), float(spread_seconds))
        case ["drain-servers" | "wait-drained" as verb, seconds, *pairs]:
            shedding = verb == "drain-servers"
            drain_servers(dict(pair.split("=", 1) for pair in pairs), float(seconds), shedding)
            left = {row["server"]: row["sessions"] for row in servers()}
            print(json.dumps({pair.split("=")[0]: left.get(pair.split("=")[0]) for pair in pairs}))
            return 0
        case ["close-old", pid, spread_seconds]:
            return close_old(int(pid), float(spread_seconds))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
