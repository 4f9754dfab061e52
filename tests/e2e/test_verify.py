"""`make verify` catches a broken host and names it."""

from __future__ import annotations

import pytest

from tests.lab_fleet import make
from wssfleet_control.hostside.layout import INSTANCES_HELPER, instance_unit, server_name

pytestmark = pytest.mark.timeout(600)


def test_verify_fails_naming_the_host_and_instance_when_an_instance_is_stopped(lab):
    worker = lab.fleet.workers[0]
    port = lab.fleet.settings.worker_base_port
    assert lab.on(worker.name, f"systemctl stop {instance_unit(port)}").returncode == 0
    try:
        result = make("verify")
    finally:
        lab.on(worker.name, f"systemctl start {instance_unit(port)}")
    output = result.stdout + result.stderr
    assert result.returncode != 0
    failed = [line for line in output.splitlines() if line.startswith("FAILED")]
    assert failed, output[-2000:]
    # Every failure is about that host (its instance's checks, and the monitoring checks
    # that see it down), and the instance checks name the instance.
    assert [line for line in failed if worker.name not in line] == []
    instance_checks = [line for line in failed if "test_instance_is_active_and_enabled" in line]
    assert instance_checks and all(
        server_name(worker.name, port) in line for line in instance_checks
    )
    release = lab.on(worker.name, f"python3 {INSTANCES_HELPER} current").stdout
    restarted = lab.on(
        worker.name,
        f"python3 {INSTANCES_HELPER} wait-healthy {worker.address} {port} {release.strip()} 30",
    )
    assert restarted.returncode == 0, restarted.stdout
