from __future__ import annotations

import asyncio

import pytest

from tests.lab_fleet import LAB_JSON, Lab


@pytest.fixture(scope="session")
def lab() -> Lab:
    if not LAB_JSON.exists():
        pytest.fail("the lab is not up and deployed: run 'make deploy' first")
    return Lab()


def run(coroutine, timeout: float = 60):
    return asyncio.run(asyncio.wait_for(coroutine, timeout))
