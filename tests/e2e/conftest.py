from __future__ import annotations

import asyncio
import os
import subprocess

import pytest

from tests.lab_fleet import LAB_INVENTORY, LAB_JSON, Lab, add_bridge_address

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
        interface = add_bridge_address(bridge, n)
        added.append(interface)
        return interface.partition("/")[0]

    yield add
    for address in added:
        _local(["ip", "addr", "del", address, "dev", bridge])


def _local(command: list[str]):
    return subprocess.run(command, capture_output=True, text=True, check=True)
