"""Fixtures for the service tests: a real redis-server and real service processes on loopback."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.processes import RedisServer, free_port, wait_for_port
from tests.unit.helpers import ORIGIN, SECRET, ServiceProcess


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


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
