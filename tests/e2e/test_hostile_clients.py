"""Hostile clients through the lab's real front door (HAProxy, TLS, the workers' instances):
pings flooded without reading, a token holding the worst channel pattern the grammar allows,
a connection whose token expired. Each is bounded, and bystanders are served meanwhile."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from websockets.exceptions import ConnectionClosed

from tests.e2e.conftest import run
from tests.frames import masked, next_frame
from wssfleet import auth

pytestmark = pytest.mark.timeout(300)

FLOODERS = 40
FLOOD_SECONDS = 8.0
# The bound on what the flood may add to the instances: before, 40 flooders grew
# them by 385-557 MiB in 8 s and none was closed.
FLOOD_MEMORY_BOUND = 64 * 2**20


def instances_memory(lab) -> int:
    """Bytes resident in the service instances on every worker (their main processes' RSS:
    the lab's cgroups keep no memory accounting)."""
    total = 0
    command = (
        "for unit in $(systemctl list-units 'wssfleet@*' --no-legend --plain | cut -d' ' -f1);"
        ' do ps -o rss= -p "$(systemctl show -p MainPID --value "$unit")"; done'
    )
    for worker in lab.fleet.workers:
        shown = lab.on(worker.name, command)
        values = [int(value) for value in shown.stdout.split()]
        assert values, (worker.name, shown.stderr)
        total += sum(values) * 1024
    return total


async def raw_upgrade(lab, token: str, source: str):
    """A TLS connection through the front door, past its 101, as an attacker holds it."""
    reader, writer = await asyncio.open_connection(
        lab.master_address,
        443,
        ssl=lab.tls_context(),
        server_hostname=lab.domain,
        local_addr=(source, 0),
    )
    writer.write(
        f"GET /ws?token={token} HTTP/1.1\r\nHost: {lab.domain}\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nOrigin: https://{lab.domain}\r\n\r\n".encode()
    )
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 15)
    assert head.startswith(b"HTTP/1.1 101"), head[:200]
    return reader, writer


async def flood_pings(lab, source: str) -> str:
    """Pings for FLOOD_SECONDS, never reading; how the connection ended for the client."""
    reader, writer = await raw_upgrade(lab, lab.token("flooder"), source)
    chunk = masked(0x9, b"p" * 125) * 500
    started = time.monotonic()
    try:
        while time.monotonic() - started < FLOOD_SECONDS:
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), FLOOD_SECONDS)
    except (ConnectionError, TimeoutError):
        pass
    # What is left to read: the 101's welcome, some pongs, and a close frame (or a reset).
    try:
        tail = await asyncio.wait_for(reader.read(2**20), 5)
    except (ConnectionError, TimeoutError):
        tail = b""
    writer.close()
    return "closed 1008" if b"\x88" in tail and b"\x03\xf0" in tail else "reset or open"


def test_forty_clients_flooding_pings_are_closed_and_cost_the_instances_little(lab, source_address):
    sources = [source_address(20 + n) for n in range(4)]
    before = instances_memory(lab)

    async def scenario():
        return await asyncio.gather(
            *(flood_pings(lab, sources[n % len(sources)]) for n in range(FLOODERS))
        )

    outcomes = run(scenario(), timeout=120)
    grown = instances_memory(lab) - before
    assert grown <= FLOOD_MEMORY_BOUND, f"the instances grew by {grown / 2**20:.0f} MiB"
    # The close frame reaches a client that never read only when HAProxy still had room for it.
    assert outcomes.count("closed 1008") >= FLOODERS // 2, outcomes


def test_a_bystander_is_served_within_a_second_while_the_worst_patterns_subscribe(lab):
    worst = ["*a" * 31 + "*b", "*" + "a*" * 31 + "b", "a*" * 32]
    secret = lab.fleet.secrets()["jwt_secret"]
    hostile = auth.mint(secret, "mallory", 600, subscribe=worst, publish=worst)

    async def attacker(n: int) -> None:
        ws = await lab.connect_with_token(hostile)
        await next_frame(ws)
        for k in range(50):
            channel = "a" * 63 + str((n + k) % 10)
            await ws.send(json.dumps({"type": "subscribe", "channel": channel}))
        await ws.close()

    async def bystander() -> float:
        started = time.monotonic()
        ws = await lab.connect(subject="bystander")
        assert (await next_frame(ws))["type"] == "welcome"
        await ws.send(json.dumps({"type": "subscribe", "channel": "lobby"}))
        assert (await next_frame(ws))["type"] == "subscribed"
        await ws.close()
        return time.monotonic() - started

    async def scenario():
        attackers = [asyncio.create_task(attacker(n)) for n in range(4)]
        await asyncio.sleep(0.5)
        took = [await bystander() for _ in range(3)]
        await asyncio.gather(*attackers)
        return took

    took = run(scenario())
    assert max(took) <= 1.0, took


def test_a_connection_whose_token_expired_cannot_publish_unless_refreshed(lab):
    secret = lab.fleet.secrets()["jwt_secret"]

    def short() -> str:
        return auth.mint(secret, "brief", 6, subscribe=["lobby"], publish=["lobby"])

    async def expired() -> tuple[int | None, list[dict]]:
        ws = await lab.connect_with_token(short())
        await next_frame(ws)
        await asyncio.sleep(12)
        heard = []
        try:
            await ws.send(json.dumps({"type": "publish", "channel": "lobby", "data": 1, "id": 1}))
            while True:
                heard.append(await next_frame(ws, 5))
        except (ConnectionClosed, TimeoutError):
            pass
        return (ws.close_code, heard)

    async def refreshed() -> dict:
        ws = await lab.connect_with_token(short())
        await next_frame(ws)
        await asyncio.sleep(3)
        fresher = auth.mint(secret, "brief", 600, subscribe=["lobby"], publish=["lobby"])
        await ws.send(json.dumps({"type": "refresh", "token": fresher, "id": "r"}))
        assert (await next_frame(ws))["type"] == "refreshed"
        await asyncio.sleep(9)
        await ws.send(json.dumps({"type": "publish", "channel": "lobby", "data": 2, "id": 2}))
        answer = await next_frame(ws)
        await ws.close()
        return answer

    async def scenario():
        return await asyncio.gather(expired(), refreshed())

    (code, heard), answer = run(scenario())
    assert code == 4001, (code, heard)
    assert not any(frame.get("type") == "published" for frame in heard), heard
    assert answer["type"] == "published" and answer["id"] == 2, answer
