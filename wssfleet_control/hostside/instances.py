#!/usr/bin/python3
"""The service instances of a worker, as the rollout controller sees them. Installed by
roles/workers.py as layout.INSTANCES_HELPER; standard library only.

    instances.py state PORT...         per instance: active, release it runs, since when
                                       (seconds since the epoch), stale config
    instances.py current               the release `current` points at
    instances.py point RELEASE         point `current` at an installed release (atomically)
    instances.py previous              the release `current` pointed at before, if installed
    instances.py installed             every release installed here, a line each
    instances.py wait-healthy ADDRESS PORT RELEASE SECONDS
                                       until the instance runs RELEASE and /healthz says 200
    instances.py drain ADDRESS PORT SECONDS
                                       ask the instance to drain, wait until it has no client
"""

from __future__ import annotations

import json
import os
import re
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

from layout import (  # beside this file on the host
    CURRENT,
    INSTANCE_UNIT_FILE,
    RELEASE_HISTORY,
    RELEASES,
    SERVICE_ENVIRONMENT,
    WORKER_INTERNAL_CA,
    instance_unit,
)

# What an instance reads when it starts: newer than the process means it runs stale settings.
STARTUP_FILES = (SERVICE_ENVIRONMENT, INSTANCE_UNIT_FILE)
RELEASE_IN_PATH = re.compile(r"/releases/([^/]+)/")


def main_pid(port: str) -> int:
    shown = subprocess.run(
        ["systemctl", "show", "-P", "MainPID", instance_unit(port)], capture_output=True, text=True
    )
    return int(shown.stdout.strip() or 0)


def started_at(pid: int) -> float:
    """When a process started, in seconds since the epoch."""
    with open(f"/proc/{pid}/stat") as stat:
        ticks = int(stat.read().rsplit(")", 1)[1].split()[19])
    with open("/proc/stat") as machine:
        boot = next(int(line.split()[1]) for line in machine if line.startswith("btime"))
    return boot + ticks / os.sysconf("SC_CLK_TCK")


def running_release(pid: int) -> str | None:
    # pip writes the virtualenv's own path into the script's #!, so the interpreter's path
    # names the release even though the unit starts it through `current`.
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        arguments = cmdline.read().decode(errors="replace").split("\0")
    match = RELEASE_IN_PATH.search(arguments[0])
    return match[1] if match else None


def state(port: str) -> dict[str, object]:
    pid = main_pid(port)
    stopped = {"active": False, "release": None, "since": None, "stale": False}
    if not pid:
        return stopped
    try:
        newest = max(os.stat(path).st_mtime for path in STARTUP_FILES if os.path.exists(path))
        since = started_at(pid)
        return {
            "active": True,
            "release": running_release(pid),
            "since": round(since, 1),
            "stale": newest > since,
        }
    except (FileNotFoundError, ProcessLookupError):
        return stopped


def current() -> str:
    return os.path.basename(os.readlink(CURRENT)) if os.path.islink(CURRENT) else ""


def point(release: str) -> int:
    target = f"{RELEASES}/{release}"
    if not os.path.exists(f"{target}/.installed"):
        print(f"release {release} is not installed on this host", file=sys.stderr)
        return 1
    temporary = f"{CURRENT}.new"
    if os.path.lexists(temporary):
        os.unlink(temporary)
    os.symlink(target, temporary)
    os.replace(temporary, CURRENT)
    with open(RELEASE_HISTORY, "a") as history:
        history.write(release + "\n")
    return 0


def installed() -> list[str]:
    """The releases whose install completed (the marker written after pip succeeded)."""
    if not os.path.isdir(RELEASES):
        return []
    return sorted(
        name for name in os.listdir(RELEASES) if os.path.exists(f"{RELEASES}/{name}/.installed")
    )


def previous() -> str:
    now = current()
    try:
        with open(RELEASE_HISTORY) as history:
            pointed = [line.strip() for line in history if line.strip()]
    except FileNotFoundError:
        pointed = []
    for release in reversed(pointed):
        if release != now and os.path.exists(f"{RELEASES}/{release}/.installed"):
            return release
    return ""


def health(address: str, port: str) -> tuple[int, str]:
    """An instance's /healthz: over TLS when the deployment's internal CA is on this host
    (internal_tls), unless that instance still serves plain HTTP (it started before, or
    internal_tls was just turned off): a plain instance does not answer a TLS hello (it
    waits for an HTTP request until its handshake timeout), so plain HTTP is tried next."""
    if os.path.exists(WORKER_INTERNAL_CA):
        context = ssl.create_default_context(cafile=WORKER_INTERNAL_CA)
        status, body = _health(f"https://{address}:{port}/healthz", context)
        if status:
            return status, body
        plain_status, plain_body = _health(f"http://{address}:{port}/healthz", None)
        if plain_status:
            return plain_status, plain_body
        return 0, f"over TLS: {body}; over HTTP: {plain_body}"
    return _health(f"http://{address}:{port}/healthz", None)


def _health(url: str, context: ssl.SSLContext | None) -> tuple[int, str]:
    """The status and body of ``url``, or 0 and why there is none."""
    try:
        with urllib.request.urlopen(url, timeout=2, context=context) as reply:
            return reply.status, reply.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except urllib.error.URLError as error:
        return 0, str(error.reason)
    except OSError as error:
        return 0, str(error)


def wait_healthy(address: str, port: str, release: str, seconds: float) -> int:
    deadline = time.monotonic() + seconds
    while True:
        seen = state(port)
        status, body = health(address, port) if seen["active"] else (0, "not running")
        if status == 200 and seen["release"] == release:
            print(json.dumps({"status": status, "reply": body}))
            return 0
        if time.monotonic() > deadline:
            print(
                json.dumps(
                    {"status": status, "reply": body.strip()[:500], "release": seen["release"]}
                )
            )
            return 1
        time.sleep(0.2)


def drain(address: str, port: str, seconds: float) -> int:
    """SIGUSR1 makes the service close its clients with 1012, spread over its drain window."""
    if not state(port)["active"]:
        print(json.dumps({"connections": 0, "reply": "not running"}))
        return 0
    subprocess.run(
        ["systemctl", "kill", "--kill-whom=main", "--signal=SIGUSR1", instance_unit(port)],
        check=True,
    )
    deadline = time.monotonic() + seconds
    while True:
        status, body = health(address, port)
        try:
            connections = json.loads(body)["connections"] if status == 200 else None
        except (ValueError, KeyError):
            connections = None
        if connections == 0 or time.monotonic() > deadline:
            print(json.dumps({"connections": connections, "reply": body.strip()[:500]}))
            return 0 if connections == 0 else 1
        time.sleep(0.2)


def main(argv: list[str]) -> int:
    match argv:
        case ["state", *ports]:
            print(json.dumps({port: state(port) for port in ports}))
            return 0
        case ["current"]:
            print(current())
            return 0
        case ["point", release]:
            return point(release)
        case ["previous"]:
            print(previous())
            return 0
        case ["installed"]:
            print("\n".join(installed()))
            return 0
        case ["wait-healthy", address, port, release, seconds]:
            return wait_healthy(address, port, release, float(seconds))
        case ["drain", address, port, seconds]:
            return drain(address, port, float(seconds))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
