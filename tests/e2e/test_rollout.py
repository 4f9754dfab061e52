"""The control side's contract with the hosts: a plan touches nothing, only a service change
makes a release, and the rollout controller stops a bad release at its first instance."""

from __future__ import annotations

import json
import os

import pytest

from tests.lab_fleet import (
    LAB_INVENTORY,
    REPO,
    deploy,
    derived_inventory,
    edited,
    plan,
    restarted,
    with_status,
)
from wssfleet_control import secrets
from wssfleet_control.hostside.layout import INSTANCES_HELPER, instance_unit

pytestmark = pytest.mark.timeout(900)

INSTANCES = f"python3 {INSTANCES_HELPER}"
# Where a deploy or a plan could leave a trace on a host.
HOST_PATHS = "/etc /opt /usr/local /var/lib/wssfleet /root"
UNWATCHED = {".venv", ".git", "__pycache__", "logs", ".pytest_cache", ".ruff_cache", "artifacts"}


def control_files() -> dict[str, tuple[int, int]]:
    """Every file of the checkout (build/ and secrets included) with its size and mtime."""
    found = {}
    for root, directories, names in os.walk(REPO):
        directories[:] = [name for name in directories if name not in UNWATCHED]
        for name in names:
            stat = os.stat(os.path.join(root, name))
            found[os.path.join(root, name)] = (stat.st_size, stat.st_mtime_ns)
    return found


def instance_pids(lab) -> dict[str, str]:
    pids = {}
    for worker in lab.fleet.workers:
        for port in lab.ports(worker.name):
            shown = lab.on(worker.name, f"systemctl show -P MainPID {instance_unit(port)}").stdout
            pids[f"{worker.name}/{port}"] = shown.strip()
    return pids


def releases_running(lab) -> dict[str, str]:
    running = {}
    for worker in lab.fleet.workers:
        ports = " ".join(str(port) for port in lab.ports(worker.name))
        states = json.loads(lab.on(worker.name, f"{INSTANCES} state {ports}").stdout)
        running |= {f"{worker.name}/{port}": state["release"] for port, state in states.items()}
    return running


def test_without_the_secrets_file_plan_and_deploy_stop_and_change_nothing(lab, tmp_path):
    # Another machine's view (a second operator, a CI runner): the lab's hosts, an inventory
    # whose secrets file does not exist there.
    inventory = derived_inventory(tmp_path, own_secrets=True, haproxy_timeout_tunnel="2h")
    for node in lab.fleet.nodes:
        assert lab.on(node.name, "touch /tmp/wssfleet-plan-marker").returncode == 0
    before = control_files()
    for command in (plan, deploy):
        code, report, log = command(inventory)
        assert code != 0, log[-3000:]
        (error,) = report["errors"]
        assert "the hosts run with secrets this machine does not have" in error, error
        assert "jwt_secret on master" in error and "--replace-secrets" in error, error
    # On purpose, a plan shows what new secrets would change: every worker's environment file.
    code, report, log = plan(inventory, "--replace-secrets")
    assert code == 0, log[-3000:]
    environment = (
        "WebSocket service | Ensure the service's environment file is current "
        "(contents withheld: secrets)"
    )
    assert {host for name, host in with_status(report, "will change") if name == environment} == {
        worker.name for worker in lab.fleet.workers
    }
    # Neither wrote a secret here nor changed a file on a host.
    assert control_files() == before
    assert not (tmp_path / ".secrets").exists(), "secrets were written"
    for node in lab.fleet.nodes:
        touched = lab.on(
            node.name, f"find {HOST_PATHS} -xdev -newer /tmp/wssfleet-plan-marker -print"
        ).stdout.split()
        assert touched == [], f"{touched} changed on {node.name}"


def test_secrets_from_a_vault_command_feed_a_deploy_that_changes_nothing(lab, tmp_path):
    # A machine with no secrets file whose inventory reads them from a vault's command (here
    # the lab's own file printed by cat, as `pass show` or `op read` would print it).
    vault = tmp_path / "vault.json"
    held = json.loads(secrets.path_for(LAB_INVENTORY).read_text())
    # The fleet's and each app's (settings: apps; their Redis passwords).
    given = [*secrets.NAMES, *(name for name in held if name.startswith("app_"))]
    vault.write_text(json.dumps({name: held[name] for name in given}))
    inventory = derived_inventory(
        tmp_path / "inventory", own_secrets=True, secrets_command=f"cat {vault}"
    )
    code, report, log = deploy(inventory)
    assert code == 0, log[-3000:]
    assert restarted(report) == [], "the vault's secrets are the hosts': nothing to restart"
    environment = [
        host
        for name, host in with_status(report, "changed")
        if "environment file" in name or "Redis" in name
    ]
    assert environment == [], environment
    assert not (tmp_path / "inventory" / ".secrets").exists(), "a vault's secrets were written"


def test_editing_the_control_side_makes_no_release_and_restarts_nothing(lab):
    code, report, log = deploy()
    assert code == 0, log[-3000:]
    pids_before = instance_pids(lab)
    with edited(
        REPO / "wssfleet_control" / "status.py",
        '"""`wssfleet status`',
        '"""`wssfleet status` (edited by test_rollout)',
    ):
        code, edited_report, log = deploy()
    assert code == 0, log[-3000:]
    assert edited_report["release"] == report["release"]
    assert restarted(edited_report) == []
    assert instance_pids(lab) == pids_before


def test_a_release_that_fails_its_health_check_stops_the_rollout_at_its_first_instance(
    lab, tmp_path
):
    running_before = releases_running(lab)
    first = lab.fleet.workers[0]
    port = lab.fleet.settings.worker_base_port
    inventory = derived_inventory(tmp_path, rollout_health_timeout=8)
    with edited(
        REPO / "service" / "wssfleet" / "routes.py",
        'return http_response(HTTPStatus.OK, body, "application/json")',
        'return http_response(HTTPStatus.SERVICE_UNAVAILABLE, body, "application/json")',
    ):
        code, report, log = deploy(inventory)
    assert code != 0
    rollout = report["rollout"]
    assert rollout["status"] == "stopped"
    assert [(step["host"], step["port"], step["outcome"]) for step in rollout["steps"]][:2] == [
        (first.name, port, "failed"),
        (first.name, port + 1, "pending"),
    ]
    assert {step["outcome"] for step in rollout["steps"][1:]} == {"pending"}
    error = rollout["error"]
    assert error.startswith(f"{first.name} instance {instance_unit(port)}: release ")
    assert "within 8 s (HTTP 503" in error and '"status": "ok"' in error
    assert f"it is back on release {running_before[f'{first.name}/{port}']}" in error
    assert error in report["errors"]
    # Every instance runs the release it ran before, the failed one included.
    assert releases_running(lab) == running_before
    code, report, log = deploy()
    assert code == 0, log[-3000:]
    assert restarted(report) == []
