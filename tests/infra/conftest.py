"""testinfra against any inventory: hosts, groups and SSH settings come from the pyinfra
inventory itself, so `make verify INVENTORY=inventory/production.py` checks real servers.

Each test is parametrized by host (and instance), so a failure names exactly where.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import testinfra

from wssfleet_control import inventory as fleet_inventory
from wssfleet_control.checkout import REPO


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--inventory",
        default=str(REPO / "inventory" / "lab.py"),
        help="the pyinfra inventory whose hosts to verify",
    )


def pytest_configure(config: pytest.Config) -> None:
    fleet = fleet_inventory.load(config.getoption("--inventory"))
    config._wssfleet = fleet
    # testinfra's own option; `wssfleet verify` passes the config it generated.
    ssh_config = config.getoption("--ssh-config")
    if ssh_config is None:
        generated = REPO / "build" / f"ssh_config.{Path(fleet.inventory_path).stem}"
        generated.parent.mkdir(exist_ok=True)
        generated.write_text(fleet.ssh_config())
        ssh_config = str(generated)
    config._wssfleet_ssh_config = ssh_config


def _fleet(config: pytest.Config) -> fleet_inventory.Fleet:
    return config._wssfleet


_hosts: dict[str, object] = {}
_ssh_config: list[str] = []


def _instances(fleet: fleet_inventory.Fleet, node) -> list[int]:
    processes = fleet.settings.worker_processes
    if processes != "auto":
        return fleet.worker_ports(processes)
    return fleet.worker_ports(int(_host(node).check_output("nproc")))


def _host(node):
    """The testinfra host of an inventory node, through the inventory's own SSH config."""
    if node.name not in _hosts:
        _hosts[node.name] = testinfra.get_host(
            f"ssh://{node.name}",
            ssh_config=_ssh_config[0],
            sudo=node.sudo,
            # One SSH connection a host for all its checks, not one a command (testinfra
            # asks for ControlMaster but multiplexes only with a path for the socket).
            # testinfra %-formats the command line: "%%C" reaches ssh as its %C (a hash).
            controlpath=str(_control_directory() / "%%C"),
        )
    return _hosts[node.name]


_control: list[Path] = []


def _control_directory() -> Path:
    if not _control:
        _control.append(Path(tempfile.mkdtemp(prefix="wssfleet-ssh-")))
    return _control[0]


def pytest_unconfigure(config: pytest.Config) -> None:
    """Close the shared connections: nothing outlives the run."""
    for name in _hosts:
        subprocess.run(
            [
                "ssh",
                "-F",
                _ssh_config[0],
                "-o",
                f"ControlPath={_control[0]}/%C",
                "-O",
                "exit",
                name,
            ],
            capture_output=True,
            timeout=10,
        )
    if _control:
        shutil.rmtree(_control[0], ignore_errors=True)


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    fleet = _fleet(metafunc.config)
    if not _ssh_config:
        _ssh_config.append(metafunc.config._wssfleet_ssh_config)
    if "master" in metafunc.fixturenames:
        metafunc.parametrize("master", fleet.masters, ids=lambda n: n.name)
    if "certificate_master" in metafunc.fixturenames:
        # The master that obtains and renews the certificate the others serve.
        metafunc.parametrize("certificate_master", [fleet.master], ids=lambda n: n.name)
    if "redis_node" in metafunc.fixturenames:
        metafunc.parametrize("redis_node", fleet.redis_nodes, ids=lambda n: n.name)
    if "sentinel_node" in metafunc.fixturenames:
        metafunc.parametrize("sentinel_node", fleet.sentinels, ids=lambda n: n.name)
    if "monitoring_node" in metafunc.fixturenames:
        metafunc.parametrize("monitoring_node", fleet.monitors, ids=lambda n: n.name)
    if "worker_node" in metafunc.fixturenames:
        metafunc.parametrize("worker_node", fleet.workers, ids=lambda n: n.name)
    if "any_node" in metafunc.fixturenames:
        metafunc.parametrize("any_node", fleet.nodes, ids=lambda n: n.name)
    if "app_instance" in metafunc.fixturenames:
        # Each app's instances (settings: apps) where they run: (worker, app name, port).
        triples = [
            (node, name, port)
            for name, app in sorted(fleet.settings.apps.items())
            for node in fleet.app_workers(name)
            for port in app.ports()
        ]
        metafunc.parametrize(
            "app_instance", triples, ids=[f"{n.name}-{a}-{p}" for n, a, p in triples]
        )
    if "worker_instance" in metafunc.fixturenames:
        pairs = [(node, port) for node in fleet.workers for port in _instances(fleet, node)]
        metafunc.parametrize("worker_instance", pairs, ids=[f"{n.name}-{p}" for n, p in pairs])


@pytest.fixture(scope="session")
def fleet(request) -> fleet_inventory.Fleet:
    return _fleet(request.config)


@pytest.fixture
def on():
    """on(node) -> the testinfra host for that inventory node."""
    return _host


# systemd-analyze security's exposure (0: fully confined, 10: not at all) that no wssfleet
# unit may pass.
MOST_EXPOSURE = 2.0


@pytest.fixture
def exposure():
    """Whether a unit on a host is confined to MOST_EXPOSURE or better (asserts with the
    figure and what systemd-analyze found exposed, if not)."""

    def confined(host, unit: str, most: float = MOST_EXPOSURE) -> bool:
        report = host.check_output(f"systemd-analyze security --no-pager {unit} 2>&1")
        level = float(re.search(r"Overall exposure level for \S+: ([0-9.]+)", report)[1])
        exposed = [line for line in report.splitlines() if line.startswith("✗")]
        assert level <= most, f"{unit}: {level}\n" + "\n".join(exposed)
        return True

    return confined
