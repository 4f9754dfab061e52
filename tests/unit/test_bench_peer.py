"""The bench's peer (bench/peer/server.js) does what wssfleet does, or the table compares unlike
things: the same checks before the upgrade, the same frames, the same limits, messages through
Redis between two processes. Each scenario runs on both, on a real redis-server."""

from __future__ import annotations

import asyncio
import json
import subprocess
from collections.abc import Iterator

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from bench import compare
from bench.loopback import redis_server
from tests.frames import next_frame
from tests.processes import free_port, http_status, wait_for_port
from tests.unit.helpers import ORIGIN, SECRET, token


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    compare.ensure_peer_installed()
    with redis_server() as url:
        yield url


@pytest.fixture(params=list(compare.SIDES))
def urls(request, redis_url: str) -> Iterator[list[str]]:
    """Two processes of one side on the same Redis, configured as the unit tests' services;
    their WebSocket base URLs."""
    started, ports = [], [free_port(), free_port()]
    for port in ports:
        command, env = compare.SIDES[request.param](port, redis_url)
        env = {**env, "WSSFLEET_JWT_SECRET": SECRET, "PEER_JWT_SECRET": SECRET}
        env.update({"WSSFLEET_ALLOWED_ORIGINS": ORIGIN, "PEER_ALLOWED_ORIGINS": ORIGIN})
        env.update({"WSSFLEET_MAX_MESSAGE_BYTES": "1024", "PEER_MAX_MESSAGE_BYTES": "1024"})
        started.append(subprocess.Popen(command, env=env, stderr=subprocess.DEVNULL))
    for port in ports:
        wait_for_port(port)
        compare.wait_for_redis(port, request.param)
    yield [f"ws://127.0.0.1:{port}" for port in ports]
    for process in started:
        process.terminate()
        process.wait(timeout=20)


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 30))


async def opened(url: str, path: str = "/ws", answers: int = 1, **options):
    ws = await connect(f"{url}{path}?token={token()}", origin=ORIGIN, **options)
    frames = [await next_frame(ws) for _ in range(answers)]
    return ws, frames


def test_refusals_before_the_upgrade_are_the_same(urls):
    async def status(path: str, **options) -> int:
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"{urls[0]}{path}", **options)
        return refused.value.response.status_code

    async def scenario():
        forged = token().rsplit(".", 1)[0] + ".forged"
        return [
            await status(f"/ws?token={forged}", origin=ORIGIN),
            await status("/ws", origin=ORIGIN),
            await status(f"/ws?token={token()}", origin="https://elsewhere.example"),
            await status(f"/elsewhere?token={token()}", origin=ORIGIN),
        ]

    assert run(scenario()) == [401, 401, 403, 404]


def test_frames_and_limits_are_the_same(urls):
    async def scenario():
        subscriber, answers = await opened(urls[1], "/ws/room", answers=2)
        publisher, (welcome,) = await opened(urls[0])
        await publisher.send(json.dumps({"type": "echo", "data": [1, "two"]}))
        echo = await next_frame(publisher)
        await publisher.send("{not json")
        malformed = await next_frame(publisher)
        await publisher.send(json.dumps({"type": "publish", "channel": "room", "data": 7}))
        message = await next_frame(subscriber)
        await publisher.send(json.dumps({"type": "echo", "data": "x" * 2000}))
        with pytest.raises(ConnectionClosed) as too_big:
            await next_frame(publisher)
        await subscriber.close()
        return answers, welcome, echo, malformed, message, too_big.value.rcvd.code

    answers, welcome, echo, malformed, message, code = run(scenario())
    assert [answer["type"] for answer in answers] == ["welcome", "subscribed"]
    assert sorted(welcome) == ["channels", "expires", "heartbeat", "sub", "type", "worker"]
    assert echo == {"type": "echo", "data": [1, "two"]}
    assert malformed == {"type": "error", "reason": "malformed JSON"}
    assert sorted(message) == ["channel", "data", "from", "offset", "type"]
    assert (message["channel"], message["data"], message["from"]) == ("room", 7, "alice")
    assert code == 1009


def test_both_sides_send_an_idle_client_heartbeats_as_the_bench_configures_them(urls):
    async def scenario():
        ws, (welcome,) = await opened(urls[0])
        loop = asyncio.get_running_loop()
        started, heard = loop.time(), []
        while loop.time() - started < 2.6:
            heard.append(json.loads(await asyncio.wait_for(ws.recv(), 2))["type"])
        await ws.close()
        return welcome, heard

    welcome, heard = run(scenario())
    assert welcome["heartbeat"] == compare.BENCH_SETTINGS["heartbeat_interval"] == 1
    assert heard.count("heartbeat") >= 2 and set(heard) == {"heartbeat"}, heard


def test_both_sides_shed_clients_with_1012_for_the_internal_key_only(urls):
    """The reconnect storm asks each process's /internal/shed: both close with 1012, and
    neither answers without the key."""
    shed = f"{urls[0].replace('ws://', 'http://')}/internal/shed?count=10&seconds=0.1"

    def asked(key: str) -> int:
        return http_status(shed, Authorization=f"Bearer {key}")

    async def scenario():
        ws, _ = await opened(urls[0])
        refused = await asyncio.to_thread(asked, "not-the-key")
        accepted = await asyncio.to_thread(asked, compare.INTERNAL_KEY)
        with pytest.raises(ConnectionClosed) as closed:
            await next_frame(ws, 10)
        return refused, accepted, closed.value.rcvd.code

    assert run(scenario()) == (404, 202, 1012)
