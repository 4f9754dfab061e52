#!/usr/bin/python3
"""The instances of an app on a worker (the built-in service's unless --app names another),
as the rollout controller sees them. Installed by roles/workers.py as
layout.INSTANCES_HELPER; standard library only.

    instances.py [--app NAME] COMMAND ...
    instances.py state PORT...         per instance: active, release it runs, since when
                                       (seconds since the epoch), stale config
    instances.py current               the release `current` points at
    instances.py point RELEASE         point `current` at an installed release (atomically)
    instances.py previous              the release `current` pointed at before, if installed
    instances.py installed             every release installed here, a line each
    instances.py wait-healthy ADDRESS PORT RELEASE SECONDS [CHECK]
                                       until the instance runs RELEASE and passes CHECK: an
                                       HTTP path that must answer 200 (/healthz), or "tcp"
    instances.py drain ADDRESS PORT SECONDS
                                       ask the instance to drain, wait until it has no client
    instances.py --app NAME drain-path ADDRESS PORT PATH SECONDS
                                       ask an app's instance to close its clients over
                                       SECONDS (POST PATH?seconds=SECONDS)
"""

from __future__ import annotations

import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request

from layout import (  # beside this file on the host
    SERVICE_LAYOUT,
    WORKER_INTERNAL_CA,
    app_layout,
)

RELEASE_IN_PATH = re.compile(r"/releases/([^/]+)(/|$)")
# The app whose instances the commands act on (--app): the built-in service by default.
app = SERVICE_LAYOUT


def main_process(port: str) -> tuple[int, float]:
    """The instance's main process and when it started, in seconds since the epoch (0, 0
    when none runs). systemd's start time is in microseconds; the kernel's boot time, which
    /proc's start ticks count from, only in whole seconds: a file written just before the
    process started would look newer than it."""
    properties = ("-P", "MainPID", "-P", "ExecMainStartTimestampMonotonic")
    shown = subprocess.run(
        ["systemctl", "show", *properties, app.unit(port)], capture_output=True, text=True
    )
    pid, started = [*shown.stdout.split(), "0", "0"][:2]
    since = time.time() - time.monotonic() + int(started) / 1e6
    return int(pid), since


def running_release(pid: int) -> str | None:
    # An app's unit starts it in `current`, which the kernel resolved to the release when the
    # process started. The built-in service starts in /, but pip writes the virtualenv's own
    # path into the script's #!, so its interpreter's path names the release.
    match = RELEASE_IN_PATH.search(os.readlink(f"/proc/{pid}/cwd"))
    if match:
        return match[1]
    with open(f"/proc/{pid}/cmdline", "rb") as cmdline:
        arguments = cmdline.read().decode(errors="replace").split("\0")
    match = RELEASE_IN_PATH.search(arguments[0])
    return match[1] if match else None


def state(port: str) -> dict[str, object]:
    pid, since = main_process(port)
    stopped = {"active": False, "release": None, "since": None, "stale": False}
    if not pid:
        return stopped
    # What an instance reads when it starts: newer than the process means stale settings.
    startup_files = (app.environment, app.unit_file)
    try:
        newest = max(os.stat(path).st_mtime for path in startup_files if os.path.exists(path))
        return {
            "active": True,
            "release": running_release(pid),
            "since": round(since, 1),
            "stale": newest > since,
        }
    except (FileNotFoundError, ProcessLookupError):
        return stopped


def current() -> str:
    return os.path.basename(os.readlink(app.current)) if os.path.islink(app.current) else ""


def point(release: str) -> int:
    target = f"{app.releases}/{release}"
    if not os.path.exists(f"{target}/.installed"):
        print(f"release {release} is not installed on this host", file=sys.stderr)
        return 1
    temporary = f"{app.current}.new"
    if os.path.lexists(temporary):
        os.unlink(temporary)
    os.symlink(target, temporary)
    os.replace(temporary, app.current)
    with open(app.history, "a") as history:
        history.write(release + "\n")
    return 0


def installed() -> list[str]:
    """The releases whose install completed (the marker written after pip succeeded)."""
    releases = app.releases
    if not os.path.isdir(releases):
        return []
    return sorted(
        name for name in os.listdir(releases) if os.path.exists(f"{releases}/{name}/.installed")
    )


def previous() -> str:
    now = current()
    try:
        with open(app.history) as history:
            pointed = [line.strip() for line in history if line.strip()]
    except FileNotFoundError:
        pointed = []
    for release in reversed(pointed):
        if release != now and os.path.exists(f"{app.releases}/{release}/.installed"):
            return release
    return ""


def health(address: str, port: str, check: str = "/healthz") -> tuple[int, str]:
    """An instance's answer to ``check``: "tcp" (200 once a connection opens) or an HTTP path.
    The built-in service answers over TLS when the deployment's internal CA is on this host
    (internal_tls), unless that instance still serves plain HTTP (it started before, or
    internal_tls was just turned off): a plain instance does not answer a TLS hello (it
    waits for an HTTP request until its handshake timeout), so plain HTTP is tried next.
    Apps serve plain HTTP."""
    if check == "tcp":
        try:
            socket.create_connection((address, int(port)), timeout=2).close()
            return 200, "accepts connections"
        except OSError as error:
            return 0, str(error)
    if app is SERVICE_LAYOUT and os.path.exists(WORKER_INTERNAL_CA):
        context = ssl.create_default_context(cafile=WORKER_INTERNAL_CA)
        status, body = _health(f"https://{address}:{port}{check}", context)
        if status:
            return status, body
        plain_status, plain_body = _health(f"http://{address}:{port}{check}", None)
        if plain_status:
            return plain_status, plain_body
        return 0, f"over TLS: {body}; over HTTP: {plain_body}"
    return _health(f"http://{address}:{port}{check}", None)


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


def wait_healthy(address: str, port: str, release: str, seconds: float, check: str) -> int:
    deadline = time.monotonic() + seconds
    while True:
        seen = state(port)
        status, body = health(address, port, check) if seen["active"] else (0, "not running")
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
        ["systemctl", "kill", "--kill-whom=main", "--signal=SIGUSR1", app.unit(port)],
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


def drain_path(address: str, port: str, path: str, seconds: str) -> int:
    """An app that offers a drain path (settings: apps.NAME.drain_path) closes its clients
    itself, spread over ``seconds``, once asked: its answer, as JSON."""
    request = urllib.request.Request(
        f"http://{address}:{port}{path}?seconds={seconds}", data=b"", method="POST"
    )
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            status, body = reply.status, reply.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        status, body = error.code, error.read().decode(errors="replace")
    except OSError as error:
        status, body = 0, str(error)
    print(json.dumps({"status": status, "reply": body.strip()[:500]}))
    return 0 if 200 <= status < 300 else 1


def main(argv: list[str]) -> int:
    global app
    if argv[:1] == ["--app"] and len(argv) > 1:
        app = app_layout(argv[1])
        argv = argv[2:]
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
            return wait_healthy(address, port, release, float(seconds), "/healthz")
        case ["wait-healthy", address, port, release, seconds, check]:
            return wait_healthy(address, port, release, float(seconds), check)
        case ["drain-path", address, port, path, seconds]:
            return drain_path(address, port, path, seconds)
        case ["drain", address, port, seconds]:
            return drain(address, port, float(seconds))
    print(__doc__, file=sys.stderr)
    return 2


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
