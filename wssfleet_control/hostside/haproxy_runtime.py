#!/usr/bin/python3
"""HAProxy's runtime API, for the master: the one client the certificate hook, the reload
check, `wssfleet status` and the rollout use. Installed by roles/haproxy.py as
/usr/local/lib/wssfleet/haproxy_runtime.py; standard library only (it runs on Debian's python3).

    haproxy_runtime.py servers              every backend server and its state, as JSON
    haproxy_runtime.py reload               reload, and wait for HAProxy to say it loaded
    haproxy_runtime.py install-cert LINEAGE swap in certbot's certificate without a reload
    haproxy_runtime.py server-state BACKEND/SERVER ready|drain|maint
    haproxy_runtime.py wait-up BACKEND/SERVER SECONDS   until its health checks say UP
"""

from __future__ import annotations

import csv
import io
import json
import os
import re
import socket
import subprocess
import sys
import syslog
import time

ADMIN_SOCKET = "/run/haproxy/admin.sock"
# Debian's haproxy.service starts the master with -S /run/haproxy-master.sock.
MASTER_SOCKET = "/run/haproxy-master.sock"
CERTIFICATE = "/etc/haproxy/certs/wssfleet.pem"
RELOAD_TIMEOUT = 30.0
MASTER_LINE = re.compile(r"^(\d+)\s+master\s+(\d+)\s+\[failed: (\d+)\]", re.MULTILINE)


class RuntimeApiError(Exception):
    """HAProxy refused or did not answer; the message says what it answered."""


def ask(command: str, path: str = ADMIN_SOCKET, until: bytes | None = None) -> str:
    """Send one command; return HAProxy's whole answer."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as connection:
        connection.settimeout(10)
        connection.connect(path)
        connection.sendall(command.encode() + (b"" if command.endswith("\n") else b"\n"))
        reply = b""
        # The master CLI may keep the connection open: stop at the answer's known end.
        while not (until and until in reply) and (chunk := connection.recv(65536)):
            reply += chunk
    return reply.decode()


def servers() -> list[dict[str, str]]:
    """Every server of every backend: name, status, open sessions, admin state."""
    rows = csv.DictReader(io.StringIO(ask("show stat").lstrip("# ")))
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


def master_counters() -> tuple[int, int, int]:
    """The master's PID, its reload count and its failed-reload count."""
    reply = ask("show proc", MASTER_SOCKET, until=b"# programs")
    match = MASTER_LINE.search(reply)
    if not match:
        raise RuntimeApiError(f"unexpected 'show proc' answer: {reply!r}")
    return int(match[1]), int(match[2]), int(match[3])


def reload() -> int:
    """Reload HAProxy; succeed only once its master reports the new config loaded."""
    if subprocess.run(["systemctl", "is-active", "--quiet", "haproxy"]).returncode != 0:
        return subprocess.run(["systemctl", "start", "haproxy"]).returncode
    _, reloads, failed = master_counters()
    subprocess.run(["systemctl", "reload", "haproxy"], check=True)
    deadline = time.monotonic() + RELOAD_TIMEOUT
    while time.monotonic() < deadline:
        try:
            _, reloads_now, failed_now = master_counters()
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
            return 0
        time.sleep(0.05)
    print(f"HAProxy did not report the reload within {RELOAD_TIMEOUT:.0f} s", file=sys.stderr)
    return 1


def install_cert(lineage: str) -> int:
    """Write HAProxy's PEM (chain + key) atomically, then swap it in the running HAProxy."""
    with (
        open(os.path.join(lineage, "fullchain.pem")) as chain,
        open(os.path.join(lineage, "privkey.pem")) as key,
    ):
        pem = chain.read().strip() + "\n" + key.read().strip() + "\n"
    temporary = os.path.join(os.path.dirname(CERTIFICATE), ".wssfleet.pem.tmp")
    descriptor = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(descriptor, "w") as handle:
        handle.write(pem)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(temporary, CERTIFICATE)
    if not os.path.exists(ADMIN_SOCKET):
        syslog.syslog("wssfleet: HAProxy is not running; it loads the new certificate at start")
        return 0
    # The runtime API's payload syntax ends at the first empty line.
    payload = "\n".join(line for line in pem.splitlines() if line.strip())
    created = ask(f"set ssl cert {CERTIFICATE} <<\n{payload}\n\n")
    committed = ask(f"commit ssl cert {CERTIFICATE}")
    if "Success" not in committed:
        ask(f"abort ssl cert {CERTIFICATE}")
        message = (
            f"wssfleet: HAProxy refused the certificate: {created.strip()} {committed.strip()}"
        )
        syslog.syslog(syslog.LOG_ERR, message)
        print(message, file=sys.stderr)
        return 1
    syslog.syslog(f"wssfleet: HAProxy now serves the certificate from {lineage}")
    return 0


def server_state(server: str, state: str) -> int:
    if state not in ("ready", "drain", "maint"):
        print(f"state {state!r}: give ready, drain or maint", file=sys.stderr)
        return 2
    answer = ask(f"set server {server} state {state}").strip()
    if answer:
        print(f"HAProxy: {answer}", file=sys.stderr)
        return 1
    return 0


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


def main(argv: list[str]) -> int:
    match argv:
        case ["servers"]:
            print(json.dumps(servers()))
            return 0
        case ["reload"]:
            return reload()
        case ["install-cert", lineage]:
            return install_cert(lineage)
        case ["install-cert"]:
            return install_cert(os.environ["RENEWED_LINEAGE"])
        case ["server-state", server, state]:
            return server_state(server, state)
        case ["wait-up", server, seconds]:
            return wait_up(server, float(seconds))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
