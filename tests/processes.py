"""Local processes for the unit tests and the benchmarks: free loopback ports, and a real
redis-server configured as a deploy configures it (the users, the rules, the functions)."""

from __future__ import annotations

import os
import random
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.request
from pathlib import Path

import jinja2

from roles.redis import ADMIN_REDIS_USER, acl_users
from wssfleet.redis_functions import LIBRARY
from wssfleet_control.checkout import TEMPLATES
from wssfleet_control.hostside import layout
from wssfleet_control.inventory import WORKER_REDIS_USER

# Below the kernel's ephemeral range (32768-60999 by default): no outgoing connection takes
# one of these between a test picking it and binding it.
TEST_PORTS = range(20000, 32000)


# Ports this process has handed out: a port is free when probed but taken once its process
# binds it, and two calls in a row (a service port and its metrics port) must not both get it.
_handed_out: set[int] = set()


def free_port() -> int:
    """A port free on loopback now and not handed out before, from this test worker's own share
    of TEST_PORTS (under pytest-xdist each worker has its slice, so two workers never pick the
    same one)."""
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    worker = int(os.environ.get("PYTEST_XDIST_WORKER", "gw0").removeprefix("gw"))
    share = len(TEST_PORTS) // workers
    first = TEST_PORTS.start + worker * share
    candidates = set(range(first, first + share)) - _handed_out
    if not candidates:
        _handed_out.clear()
        candidates = set(range(first, first + share))
    for port in random.sample(sorted(candidates), len(candidates)):
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            _handed_out.add(port)
            return port
    raise RuntimeError(f"no free loopback port in {first}-{first + share - 1}")


def http_status(url: str, **headers: str) -> int:
    """The HTTP status a GET of ``url`` gets, error statuses included."""
    request = urllib.request.Request(url, headers=headers)
    try:
        with urllib.request.urlopen(request, timeout=5) as reply:
            return reply.status
    except urllib.error.HTTPError as error:
        return error.code


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class RedisServer:
    """A throw-away redis-server on loopback that a test may stop and start again. With
    ``deployed_users`` (the tests), the users and rules a deploy gives Redis; without (the
    benchmarks, which also run earlier releases that ran scripts), one user for everything."""

    def __init__(self, directory: Path, deployed_users: bool = True) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError(
                "redis-server is not installed: run 'make tools' (Debian's redis-server)"
            )
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.password = "unit-test-redis-password"
        self.admin_password = "unit-test-redis-admin-password"
        self.monitor_password = "unit-test-redis-monitor-password"
        self.deployed_users = deployed_users
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """As the workers connect: the least-privileged user."""
        if not self.deployed_users:
            return f"redis://127.0.0.1:{self.port}/0"
        return f"redis://{WORKER_REDIS_USER}:{self.password}@127.0.0.1:{self.port}/0"

    def users(self) -> list[str]:
        """The users and rules a deploy gives Redis (roles/redis.py), in the ACL file its
        template renders, as arguments."""
        if not self.deployed_users:
            return []
        rules = acl_users(self.password, self.admin_password, self.monitor_password)
        acl_file = self.directory / "users.acl"
        acl_file.write_text(render("redis", "users.acl.j2", users=rules))
        return ["--aclfile", str(acl_file)]

    def listening(self) -> list[str]:
        """How redis-server listens: plain TCP on the port (internal_tls's test: TLS only)."""
        return ["--port", str(self.port)]

    def start(self) -> None:
        self.process = subprocess.Popen(
            [
                self.binary,
                *self.listening(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                # As deployed: the history survives a restart.
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                # A replica is served at once, not after Redis's default 5 s wait for others
                # to share the transfer with (the Sentinel tests start one per test).
                "--repl-diskless-sync-delay",
                "0",
                # As deployed: a stop always ends (a replica writing its first append-only
                # file otherwise refuses SIGTERM).
                "--shutdown-on-sigterm",
                "force",
                *self.users(),
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        self.ready()

    def ready(self) -> None:
        """As the deploy does: the operator loads the message plane's functions."""
        self.cli("FUNCTION", "LOAD", "REPLACE", LIBRARY)

    def cli(self, *command: str, as_worker: bool = False) -> object:
        """Run one Redis command as the operator (or as a worker would)."""
        import redis

        user, password = (
            (WORKER_REDIS_USER, self.password)
            if as_worker
            else (ADMIN_REDIS_USER, self.admin_password)
        )
        if not self.deployed_users:
            user, password = None, None
        with redis.Redis(port=self.port, username=user, password=password) as client:
            return client.execute_command(*command)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


class Replica(RedisServer):
    """A redis-server that replicates ``primary`` (as the deploy's operator user, where the
    deployed users are in place)."""

    def __init__(self, directory: Path, primary: RedisServer, deployed_users: bool = True) -> None:
        super().__init__(directory, deployed_users)
        self.primary = primary

    def listening(self) -> list[str]:
        replicating = ["--replicaof", "127.0.0.1", str(self.primary.port)]
        if self.deployed_users:
            replicating += ["--masteruser", "wssfleet-admin", "--masterauth", self.admin_password]
        return [*super().listening(), *replicating]

    def ready(self) -> None:
        """The functions come from the primary."""


def render(role: str, name: str, **variables) -> str:
    """One of a role's templates, rendered as the role renders it (the host contract given)."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), keep_trailing_newline=True
    )
    return environment.get_template(f"{role}/{name}").render(layout=layout, **variables)
