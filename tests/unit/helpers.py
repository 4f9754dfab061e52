"""What several unit tests share: the test deployment's secret and origin, tokens, and the
service as a process of its own (started by conftest's ``start_service``)."""

from __future__ import annotations

import asyncio
import multiprocessing
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from tests.processes import render, wait_for_port
from tests.unit import service_fork
from wssfleet import auth

SECRET = "unit-test-secret-that-is-long-enough-0123456789"
ORIGIN = "https://wss.example.test"
# The smallest valid settings: a domain, and the lab's ACME server.
PEBBLE = {"domain": "wss.example.test", "acme_server": "https://127.0.0.1:14000/dir"}


def token(subject: str = "alice", ttl: int = 300, channels: tuple[str, ...] = ("*",)) -> str:
    """A token for every channel unless ``channels`` says otherwise."""
    return auth.mint(SECRET, subject, ttl, subscribe=channels, publish=channels)


# Service processes fork from one that has imported the service already (as gunicorn's
# --preload does): a unit run starts ~140 of them, and each fresh interpreter spent ~0.4 s of
# CPU on imports. The child's target lives in a module of its own, light to unpickle.
_FORKS = multiprocessing.get_context("forkserver")
_FORKS.set_forkserver_preload(["tests.unit.service_fork"])


class ForkedProcess:
    """The part of subprocess.Popen's interface the tests use, for a forked service."""

    def __init__(self, process: multiprocessing.process.BaseProcess) -> None:
        self._process = process

    @property
    def pid(self) -> int:
        assert self._process.pid is not None
        return self._process.pid

    @property
    def returncode(self) -> int | None:
        return self._process.exitcode

    def poll(self) -> int | None:
        return self._process.exitcode

    def wait(self, timeout: float | None = None) -> int:
        self._process.join(timeout)
        if self._process.exitcode is None:
            raise subprocess.TimeoutExpired(f"service {self.pid}", timeout or 0)
        return self._process.exitcode

    def send_signal(self, signal_number: int) -> None:
        if self._process.exitcode is None:
            os.kill(self.pid, signal_number)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)


class ServiceProcess:
    """``wssfleet serve`` as it runs under systemd: its own process, configured by env."""

    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.port = int(env["WSSFLEET_PORT"])
        self.log = log
        self.metrics_port: int | None = None
        # Only the test's own WSSFLEET_* settings: the service refuses any it does not
        # know, and the caller's shell may hold the control side's (WSSFLEET_INVENTORY).
        forked = _FORKS.Process(
            target=service_fork.serve, args=({**inherited_environment(), **env}, str(log))
        )
        forked.start()
        self.process = ForkedProcess(forked)
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


def refusal(service, path: str = "/ws", **options) -> int:
    """The HTTP status with which the service refuses a handshake."""

    async def attempt() -> int:
        with pytest.raises(InvalidStatus) as refused:
            await connect(service.url + path, **options)
        return refused.value.response.status_code

    return asyncio.run(attempt())


def wait_until(condition, timeout: float, what: str, interval: float = 0.05):
    """What ``condition`` returns once it is true: the test waits on the condition itself,
    not a guess at how long it takes. AssertionError naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout} s")
        time.sleep(interval)


def wait_until_redis(service, state: str, timeout: float = 15.0) -> None:
    wait_until(
        lambda: service.health()["redis"] == state,
        timeout,
        f"service on {service.port} reports redis {state}",
        interval=0.1,
    )


def two_services_on_redis(start_service, redis_server, **settings: str):
    """Two service processes on the same Redis, once both report it connected."""
    first = start_service(redis_server.url, **settings)
    second = start_service(redis_server.url, **settings)
    wait_until_redis(first, "connected")
    wait_until_redis(second, "connected")
    return first, second


def resident_kib(pid: int) -> int:
    status = Path(f"/proc/{pid}/status").read_text()
    return int(status.split("VmRSS:")[1].split()[0])


def inherited_environment() -> dict[str, str]:
    """This process's environment without wssfleet's variables."""
    return {key: value for key, value in os.environ.items() if not key.startswith("WSSFLEET_")}


def control_cli(*arguments: str, **environment: str) -> subprocess.CompletedProcess:
    """The control CLI from the checkout, as an operator runs it; the deployment only from
    the arguments (and ``environment``), never from the caller's WSSFLEET_INVENTORY."""
    from wssfleet_control.checkout import REPO

    inherited = inherited_environment()
    return subprocess.run(
        [sys.executable, "-m", "wssfleet_control", *arguments],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        env={**inherited, **environment},
    )


def granted(grant) -> tuple[str, tuple[str, ...] | None, tuple[str, ...] | None]:
    """A grant's subject and channel patterns, its expiry aside."""
    return grant.subject, grant.subscribe, grant.publish


def rendered_haproxy(servers: list, certificate: Path, **variables) -> str:
    """haproxy.cfg as the deploy renders it for one master of a pair (the smallest settings;
    ``variables``: internal_ca and the like)."""
    from wssfleet_control.settings import resolve

    return render(
        "haproxy",
        "haproxy.cfg.j2",
        **{
            "settings": resolve(PEBBLE),
            "servers": servers,
            "certificate": certificate,
            "internal_ca": "",
            "metrics_address": "127.0.0.1",
            "metrics_port": 8405,
            "peers": ["m"],
            "peers_section": "wssfleet_masters",
            "local_peer": "m",
            **variables,
        },
    )


def haproxy_answer(admin: Path, command: str) -> str:
    """What HAProxy's admin socket answers ``command`` (it closes the socket after)."""
    import socket

    with socket.socket(socket.AF_UNIX) as control:
        control.connect(str(admin))
        control.sendall(command.encode() + b"\n")
        return b"".join(iter(lambda: control.recv(65536), b"")).decode()
