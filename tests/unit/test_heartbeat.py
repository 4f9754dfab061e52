"""The server's heartbeat, which browsers can see, and the contract's answer to a silent
connection: a client whose path died reconnects by itself."""

from __future__ import annotations

import asyncio
import itertools
import json
import os
import signal
import time

from websockets.asyncio.client import connect

from tests.contract_client import Seen, follow_contract
from tests.unit.clients import open_client, request, run
from tests.unit.helpers import ORIGIN, token
from wssfleet.protocol import HEARTBEAT_GRACE


async def heard(ws, seconds: float) -> list[tuple[float, str]]:
    """(when, type) of every frame received within ``seconds``."""
    frames = []
    loop = asyncio.get_running_loop()
    deadline = loop.time() + seconds
    while (left := deadline - loop.time()) > 0:
        try:
            frame = json.loads(await asyncio.wait_for(ws.recv(), left))
        except TimeoutError:
            break
        frames.append((loop.time(), frame["type"]))
    return frames


def test_an_idle_client_hears_a_heartbeat_every_interval_and_a_busy_one_none(start_service):
    service = start_service(WSSFLEET_HEARTBEAT_INTERVAL="1")

    async def scenario():
        idle = await open_client(service)
        busy = await open_client(service)

        async def keep_busy():
            for _ in range(14):
                await request(busy, type="echo", data="x")
                await asyncio.sleep(0.25)

        chatter = asyncio.create_task(keep_busy())
        idle_frames, busy_frames = await asyncio.gather(heard(idle, 3.6), heard(busy, 3.6))
        await chatter
        return idle_frames, busy_frames

    idle_frames, busy_frames = run(scenario())
    beats = [at for at, kind in idle_frames if kind == "heartbeat"]
    assert [kind for _, kind in idle_frames] == ["heartbeat"] * len(beats)
    assert 3 <= len(beats) <= 4, idle_frames
    gaps = [later - earlier for earlier, later in itertools.pairwise(beats)]
    assert all(0.5 <= gap <= 1.5 for gap in gaps), gaps
    assert {kind for _, kind in busy_frames} == {"echo"}, busy_frames


def test_the_welcome_says_how_often_the_server_speaks(start_service):
    service = start_service(WSSFLEET_HEARTBEAT_INTERVAL="7")

    async def scenario():
        async with connect(f"{service.url}/ws?token={token()}", origin=ORIGIN) as ws:
            return json.loads(await ws.recv())

    assert run(scenario())["heartbeat"] == 7


def test_a_contract_client_leaves_a_silent_connection_and_reconnects_elsewhere(start_service):
    frozen = start_service(WSSFLEET_HEARTBEAT_INTERVAL="1")
    healthy = start_service(WSSFLEET_HEARTBEAT_INTERVAL="1")
    silence = 1 + HEARTBEAT_GRACE

    async def scenario():
        attempts = 0

        async def connector():
            # As a floating address does: the first path leads to one process, later ones
            # to the other.
            nonlocal attempts
            attempts += 1
            target = frozen if attempts == 1 else healthy
            return await connect(f"{target.url}/ws?token={token()}", origin=ORIGIN)

        seen, stop = Seen(), asyncio.Event()
        client = asyncio.create_task(follow_contract(connector, seen, stop))
        while not seen.connects:
            await asyncio.sleep(0.05)
        # The path dies without a word: no FIN, no close frame, nothing more.
        os.kill(frozen.process.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        try:
            while len(seen.connects) < 2 and time.monotonic() - stopped_at < silence + 5:
                await asyncio.sleep(0.05)
        finally:
            os.kill(frozen.process.pid, signal.SIGCONT)
        stop.set()
        await client
        return seen, stopped_at

    seen, stopped_at = run(scenario())
    assert [worker for _, worker in seen.connects] == [
        f"test:{frozen.port}",
        f"test:{healthy.port}",
    ]
    assert [code for _, code, _ in seen.closes] == [1006]
    # Dropped once nothing came for the heartbeat and its grace, then back within the
    # contract's first delay.
    closed_at = seen.closes[0][0]
    assert silence - 1 <= closed_at - stopped_at <= silence + 1.5, closed_at - stopped_at
    assert seen.connects[1][0] - closed_at <= 1.5
