"""The example apps (examples/) keep the contract docs/apps.md gives an app on the fleet,
run as the fleet runs them: built from their lockfile with dev dependencies left out, on real
Node.js and Python, the chat through a real Redis with a user limited to its own prefix. Each
listens on PORT and HOST, answers its health path, serves WebSockets, and on SIGTERM closes
them with 1012 (clients reconnect elsewhere) and exits."""

from __future__ import annotations

import asyncio
import json
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from roles.redis import app_user_rules
from tests.processes import free_port, wait_for_port
from wssfleet_control.inventory import app_redis_prefix, app_redis_user

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
CHAT_PREFIX = app_redis_prefix("chat")


def built(example: str, into: Path) -> Path:
    """A copy of a Node example with its dependencies installed as a release is built:
    exactly the lockfile's, without dev dependencies."""
    release = into / example
    shutil.copytree(EXAMPLES / example, release)
    subprocess.run(
        ["npm", "ci", "--omit=dev", "--no-audit", "--no-fund", "--loglevel=error"],
        cwd=release,
        check=True,
        timeout=120,
    )
    return release


class App:
    """One instance of an example, started as a unit would start it."""

    def __init__(self, command: list[str], directory: Path, **environment: str) -> None:
        self.port = free_port()
        self.process = subprocess.Popen(
            command,
            cwd=directory,
            env={
                "PATH": "/usr/bin:/bin",
                "PORT": str(self.port),
                "HOST": "127.0.0.1",
                "WSSFLEET_INSTANCE": f"test:{self.port}",
                **environment,
            },
        )
        wait_for_port(self.port)

    @property
    def url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/"

    def health(self) -> int:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/healthz", timeout=5) as answer:
            return answer.status

    def stop(self) -> int:
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=10)

    def kill(self) -> None:
        if self.process.poll() is None:
            self.process.kill()
            self.process.wait()


@pytest.fixture
def started():
    apps: list[App] = []

    def start(command: list[str], directory: Path, **environment: str) -> App:
        apps.append(App(command, directory, **environment))
        return apps[-1]

    yield start
    for app in apps:
        app.kill()


def run(coroutine):
    return asyncio.run(asyncio.wait_for(coroutine, 60))


async def echoes_then_closes_with_1012_on_sigterm(app: App) -> tuple[dict, str, int | None]:
    async with connect(app.url) as ws:
        hello = json.loads(await ws.recv())
        await ws.send("ping from the test")
        echoed = await ws.recv()
        app.process.send_signal(signal.SIGTERM)
        with pytest.raises(ConnectionClosed):
            while True:
                await ws.recv()
        return hello, echoed, ws.close_code


def test_seed_000s_node_server_echoes_tells_the_time_and_hands_its_clients_over_on_sigterm(
    tmp_path, started
):
    app = started(["node", "server.js"], built("echo-node", tmp_path))
    assert app.health() == 200

    async def the_time() -> dict:
        async with connect(app.url) as ws:
            await ws.recv()  # hello
            return json.loads(await asyncio.wait_for(ws.recv(), 7))

    assert run(the_time())["type"] == "time"
    with urllib.request.urlopen(f"http://127.0.0.1:{app.port}/metrics", timeout=5) as answer:
        metrics = answer.read().decode()
    assert "echo_connections 0\n" in metrics and "echo_connections_accepted_total 1\n" in metrics
    hello, echoed, code = run(echoes_then_closes_with_1012_on_sigterm(app))
    assert hello == {"type": "hello", "instance": f"test:{app.port}"}
    assert echoed == "ping from the test"
    assert code == 1012
    assert app.process.wait(timeout=10) == 0


def test_the_python_example_echoes_and_hands_its_clients_over_on_sigterm(started):
    app = started([sys.executable, "app.py"], EXAMPLES / "echo-python")
    assert app.health() == 200
    hello, echoed, code = run(echoes_then_closes_with_1012_on_sigterm(app))
    assert hello == {"type": "hello", "instance": f"test:{app.port}"}
    assert echoed == "ping from the test"
    assert code == 1012
    assert app.process.wait(timeout=10) == 0


def chat_user(redis_server) -> dict[str, str]:
    """The chat's own Redis user, as the deploy gives it (roles/redis.py): its own prefix
    only; the environment an instance gets for it."""
    password = "the-chat-apps-password"
    redis_server.cli(
        "ACL", "SETUSER", app_redis_user("chat"), *app_user_rules("chat", password).split()
    )
    return {
        "REDIS_URL": f"redis://{app_redis_user('chat')}:{password}@127.0.0.1:{redis_server.port}",
        "REDIS_PREFIX": CHAT_PREFIX,
    }


def test_an_apps_redis_user_publishes_on_its_channels_and_stores_no_key(redis_server):
    # Redis cannot bound one user's share of maxmemory: an app may hold no key there.
    import redis

    with redis.Redis.from_url(chat_user(redis_server)["REDIS_URL"]) as chat:
        assert chat.publish(f"{CHAT_PREFIX}room", "hello") == 0
        for refused in (
            lambda: chat.set(f"{CHAT_PREFIX}probe", "x"),
            lambda: chat.get(f"{CHAT_PREFIX}probe"),
            lambda: chat.publish("app:other:room", "hello"),
            lambda: chat.publish("wssfleet:lobby", "hello"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                refused()


def test_the_chat_drains_its_clients_with_1012_spread_over_the_window_it_is_given(
    tmp_path, started, redis_server
):
    app = started(["node", "server.js"], built("chat-node", tmp_path), **chat_user(redis_server))

    async def scenario() -> tuple[dict, list[tuple[float, int]]]:
        clients = [await connect(app.url) for _ in range(5)]
        for ws in clients:
            await ws.recv()  # hello
        request = urllib.request.Request(
            f"http://127.0.0.1:{app.port}/drain?seconds=1", data=b"", method="POST"
        )
        asked = time.monotonic()
        answer = await asyncio.to_thread(urllib.request.urlopen, request, timeout=5)
        reply = json.loads(answer.read())

        async def closed(ws) -> tuple[float, int]:
            with pytest.raises(ConnectionClosed):
                while True:
                    await ws.recv()
            return time.monotonic() - asked, ws.close_code

        return reply, await asyncio.gather(*(closed(ws) for ws in clients))

    reply, closes = run(scenario())
    assert reply == {"clients": 5, "seconds": 1}
    assert {code for _, code in closes} == {1012}
    moments = sorted(moment for moment, _ in closes)
    # One at a time over the second, not all at once.
    assert moments[-1] - moments[0] >= 0.6 and moments[-1] < 3, moments


def test_seed_001s_chat_reaches_a_client_of_another_instance_through_redis(
    tmp_path, started, redis_server
):
    release = built("chat-node", tmp_path)
    redis = chat_user(redis_server)
    first, second = (started(["node", "server.js"], release, **redis) for _ in range(2))

    async def scenario() -> tuple[dict, dict]:
        async with connect(first.url) as sender, connect(second.url) as listener:
            await sender.recv(), await listener.recv()  # hello from each instance
            # The subscriber may still be subscribing: send until the other instance hears.
            for _ in range(50):
                await sender.send(json.dumps({"text": "across the fleet"}))
                try:
                    heard = json.loads(await asyncio.wait_for(listener.recv(), 0.2))
                    break
                except TimeoutError:
                    continue
            else:
                raise AssertionError("the other instance's client never heard the message")
            await sender.send("not JSON")
            with pytest.raises(ConnectionClosed):
                while True:
                    await sender.recv()
            return heard, {"code": sender.close_code}

    heard, refused = run(scenario())
    assert heard == {"type": "chat", "text": "across the fleet", "via": f"test:{first.port}"}
    assert refused == {"code": 1003}
    assert first.stop() == 0 and second.stop() == 0
