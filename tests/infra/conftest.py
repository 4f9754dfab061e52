"""testinfra against any inventory: hosts, groups and SSH settings come from the pyinfra
inventory itself, so `make verify INVENTORY=inventory/production.py` checks real servers.

Each test is parametrized by host (and instance), so a failure names exactly where.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import testinfra

from wssfleet.fleet import inventory as fleet_inventory

REPO = Path(__file__).resolve().parents[2]


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--inventory",
        default=str(REPO / "inventory" / "lab.py"),
        help="the pyinfra inventory whose hosts to verify",
    )


def pytest_configure(config: pytest.Config) -> None:
    config._wssfleet = fleet_inventory.load(config.getoption("--inventory"))


def _fleet(config: pytest.Config) -> fleet_inventory.Fleet:
    return config._wssfleet


def _instances(fleet: fleet_inventory.Fleet, node) -> list[int]:
    processes = fleet.settings.worker_processes
    if processes != "auto":
        return fleet.worker_ports(processes)
    cpus = int(_host(node).check_output("nproc"))
    return fleet.worker_ports(cpus)


_hosts: dict[str, object] = {}


def _host(node):
    if node.name not in _hosts:
        lines = [f"Host {node.name}", f"  HostName {node.ssh_host}"]
        options = node.ssh_options
        if options.get("ssh_user"):
            lines.append(f"  User {options['ssh_user']}")
        if options.get("ssh_port"):
            lines.append(f"  Port {options['ssh_port']}")
        if options.get("ssh_key"):
            lines.append(f"  IdentityFile {os.path.expanduser(options['ssh_key'])}")
        if "ssh_known_hosts_file" in options:
            lines.append(f"  UserKnownHostsFile {options['ssh_known_hosts_file']}")
        if "ssh_strict_host_key_checking" in options:
            lines.append(f"  StrictHostKeyChecking {options['ssh_strict_host_key_checking']}")
        lines.append("  LogLevel ERROR")
        config = REPO / "build" / f"ssh_config.{node.name}"
        config.parent.mkdir(exist_ok=True)
        config.write_text("\n".join(lines) + "\n")
        sudo = options.get("ssh_user", "root") != "root"
        _hosts[node.name] = testinfra.get_host(
            f"ssh://{node.name}", ssh_config=str(config), sudo=sudo
        )
    return _hosts[node.name]


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    fleet = _fleet(metafunc.config)
    if "master" in metafunc.fixturenames:
        metafunc.parametrize("master", [fleet.master], ids=lambda n: n.name)
    if "redis_node" in metafunc.fixturenames:
        metafunc.parametrize("redis_node", [fleet.redis], ids=lambda n: n.name)
    if "any_node" in metafunc.fixturenames:
        metafunc.parametrize("any_node", fleet.nodes, ids=lambda n: n.name)
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
