from __future__ import annotations

import asyncio
import ipaddress
import json
import os
import subprocess

import pytest

from tests.lab_fleet import LAB_INVENTORY, LAB_JSON, Lab

# Every command these tests run without -i acts on the lab, whatever deployment the checkout
# names (WSSFLEET_INVENTORY, wssfleet.toml).
os.environ["WSSFLEET_INVENTORY"] = str(LAB_INVENTORY)


@pytest.fixture(scope="session")
def lab() -> Lab:
    if not LAB_JSON.exists():
        pytest.fail("the lab is not up and deployed: run 'make deploy' first")
    return Lab()


def run(coroutine, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coroutine, timeout))


@pytest.fixture
def source_address(lab):
    """add(n) -> an extra address of this machine on the lab bridge, removed afterwards."""
    bridge = lab.described["bridge"]
    added: list[str] = []

    def add(n: int) -> str:
        shown = json.loads(_local(["ip", "-j", "-4", "addr", "show", "dev", bridge]).stdout)[0][
            "addr_info"
        ][0]
        network = ipaddress.ip_network(f"{shown['local']}/{shown['prefixlen']}", strict=False)
        address = str(network.broadcast_address - 1 - n)
        _local(["ip", "addr", "add", f"{address}/{network.prefixlen}", "dev", bridge])
        added.append(f"{address}/{network.prefixlen}")
        return address

    yield add
    for address in added:
        _local(["ip", "addr", "del", address, "dev", bridge])


def _local(command: list[str]):
    return subprocess.run(command, capture_output=True, text=True, check=True)
