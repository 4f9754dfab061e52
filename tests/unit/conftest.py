"""Fixtures for the service tests: a real redis-server and real service processes on loopback."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from roles.redis import ADMIN_REDIS_USER, acl_users
from wssfleet import auth
from wssfleet.broker import LIBRARY
from wssfleet_control.inventory import WORKER_REDIS_USER

SECRET = "unit-test-secret-that-is-long-enough-0123456789"
ORIGIN = "https://wss.example.test"


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_for_port(port: int, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.05)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


class RedisServer:
    """A throw-away redis-server on loopback that a test may stop and start again."""

    def __init__(self, directory: Path) -> None:
        binary = shutil.which("redis-server")
        if binary is None:
            pytest.fail("redis-server is not installed: run 'make tools' (Debian's redis-server)")
        self.binary = binary
        self.directory = directory
        self.port = free_port()
        self.password = "unit-test-redis-password"
        self.admin_password = "unit-test-redis-admin-password"
        self.monitor_password = "unit-test-redis-monitor-password"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        """As the workers connect: the least-privileged user."""
        return f"redis://{WORKER_REDIS_USER}:{self.password}@127.0.0.1:{self.port}/0"

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
                # The users and rules a deploy gives Redis (roles/redis.py).
                *(
                    argument
                    for name, rules in acl_users(
                        self.password, self.admin_password, self.monitor_password
                    ).items()
                    for argument in ("--user", name, *rules.split())
                ),
                "--dir",
                str(self.directory),
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port)
        # As the deploy does: the operator loads the message plane's functions.
        self.cli("FUNCTION", "LOAD", "REPLACE", LIBRARY)

    def cli(self, *command: str, as_worker: bool = False) -> object:
        """Run one Redis command as the operator (or as a worker would)."""
        import redis

        user, password = (
            (WORKER_REDIS_USER, self.password)
            if as_worker
            else (ADMIN_REDIS_USER, self.admin_password)
        )
        with redis.Redis(port=self.port, username=user, password=password) as client:
            return client.execute_command(*command)

    def stop(self) -> None:
        if self.process is not None:
            self.process.terminate()
            self.process.wait(timeout=10)
            self.process = None


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


class ServiceProcess:
    """``wssfleet serve`` as it runs under systemd: its own process, configured by env."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = int(env["WSSFLEET_PORT"])
        self.log = log
        self.metrics_port: int | None = None
        self.process = subprocess.Popen(
            [sys.executable, "-m", "wssfleet", "serve"],
            env={**os.environ, **env},
            stdout=log.open("wb"),
            stderr=subprocess.STDOUT,
        )
        wait_for_port(self.port)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}"

    def health(self) -> dict[str, object]:
        import json

        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as reply:
            return json.loads(reply.read())

    def metrics(self) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
        """Every sample on the metrics port, by name and labels."""
        from prometheus_client.parser import text_string_to_metric_families

        assert self.metrics_port is not None, "start the service with metrics=True"
        url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as reply:
            text = reply.read().decode()
        return {
            (sample.name, tuple(sorted(sample.labels.items()))): sample.value
            for family in text_string_to_metric_families(text)
            for sample in family.samples
        }

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.terminate()
        return self.process.wait(timeout=20)


@pytest.fixture
def start_service(tmp_path: Path) -> Iterator:
    started: list[ServiceProcess] = []

    def start(redis_url: str = "", metrics: bool = False, **overrides: str) -> ServiceProcess:
        port = free_port()
        # The metrics port is the service port plus an offset, as on a worker.
        metrics_port = free_port() if metrics else port
        env = {
            "WSSFLEET_METRICS_PORT_OFFSET": str(metrics_port - port),
            "WSSFLEET_JWT_SECRET": SECRET,
            "WSSFLEET_PORT": str(port),
            "WSSFLEET_WORKER_NAME": f"test:{port}",
            "WSSFLEET_REDIS_URL": redis_url,
            "WSSFLEET_ALLOWED_ORIGINS": ORIGIN,
            "WSSFLEET_PING_INTERVAL": "5",
            # Tests drop clients without a close handshake; do not wait 10 s for each.
            "WSSFLEET_SHUTDOWN_TIMEOUT": "1",
            **overrides,
        }
        service = ServiceProcess(env, tmp_path / f"service-{port}.log")
        if metrics:
            # The metrics listener opens just after the service's own port.
            wait_for_port(metrics_port)
            service.metrics_port = metrics_port
        started.append(service)
        return service

    yield start
    for service in started:
        service.stop()


def token(subject: str = "alice", ttl: int = 300, channels: tuple[str, ...] = ("*",)) -> str:
    """A token for every channel unless ``channels`` says otherwise."""
    return auth.mint(SECRET, subject, ttl, subscribe=channels, publish=channels)
