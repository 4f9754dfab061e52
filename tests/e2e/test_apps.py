"""The team's own WebSocket servers on the fleet (settings: apps; the lab deploys the three
examples beside the built-in service): each answers wss:// through the front door with the
lab's Let's Encrypt certificate, seed 001's chat crosses workers through the deployed Redis
and its Sentinels, two apps cannot touch each other's keys or channels, and a new release
of an app rolls one instance at a time under connected clients, or stops at the first
instance whose health check fails."""

from __future__ import annotations

import asyncio
import json
import random
import shutil
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from websockets.asyncio.client import ClientConnection
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.e2e.conftest import run
from tests.lab_fleet import REPO, deploy, derived_inventory, wssfleet
from wssfleet_control import commands
from wssfleet_control.hostside.layout import app_layout
from wssfleet_control.inventory import app_redis_secret, app_redis_user

pytestmark = pytest.mark.timeout(600)

EXAMPLES = REPO / "examples"


async def hello(ws: ClientConnection) -> dict:
    return json.loads(await asyncio.wait_for(ws.recv(), 10))


def test_each_example_answers_wss_through_the_front_door_beside_the_service(lab):
    async def scenario() -> dict:
        seen = {}
        for path in ("/echo", "/pyecho"):
            async with await lab.connect_app(path) as ws:
                greeting = await hello(ws)
                await ws.send("ping through the fleet")
                seen[path] = (greeting["type"], await asyncio.wait_for(ws.recv(), 10))
        # The built-in service still answers on its own path beside them.
        async with await lab.connect() as ws:
            seen["/ws"] = json.loads(await asyncio.wait_for(ws.recv(), 10))["type"]
        return seen

    assert run(scenario()) == {
        "/echo": ("hello", "ping through the fleet"),
        "/pyecho": ("hello", "ping through the fleet"),
        "/ws": "welcome",
    }


def test_an_app_on_a_domain_of_its_own_gets_every_path_there_and_none_elsewhere(lab):
    domain = lab.fleet.settings.apps["domain-echo"].domain
    port = lab.fleet.settings.apps["domain-echo"].port

    async def scenario() -> tuple[list[dict], int]:
        greetings = []
        # On its domain (on the certificate, which the client checks), any path is the app's:
        # even the built-in service's own.
        for path in ("/", "/ws", "/anything/at/all"):
            async with await lab.connect_app(path, domain=domain) as ws:
                greetings.append(await hello(ws))
        # Its port is not reachable on the fleet's own domain: the built-in service answers.
        with pytest.raises(InvalidStatus) as elsewhere:
            await lab.connect_app("/anything/at/all")
        return greetings, elsewhere.value.response.status_code

    greetings, status = run(scenario())
    # Its one instance (on worker1 only) answered each.
    assert {greeting["instance"] for greeting in greetings} == {f"wssfleet-worker1:{port}"}
    assert status == 404


def test_seed_001s_chat_crosses_workers_through_the_deployed_redis(lab):
    async def scenario() -> tuple[list[str], dict]:
        by_host: dict[str, ClientConnection] = {}
        opened = []
        for _ in range(16):
            ws = await lab.connect_app("/chat")
            opened.append(ws)
            by_host.setdefault((await hello(ws))["instance"].rsplit(":", 1)[0], ws)
            if len(by_host) == 2:
                break
        assert len(by_host) == 2, f"every client landed on {list(by_host)}"
        (_, sender), (_, listener) = by_host.items()
        heard: dict = {}
        # The other instance subscribes as it starts: send until its client hears.
        for attempt in range(20):
            await sender.send(json.dumps({"text": f"across the fleet {attempt}"}))
            try:
                while heard.get("type") != "chat":
                    heard = json.loads(await asyncio.wait_for(listener.recv(), 1))
                break
            except TimeoutError:
                continue
        for ws in opened:
            await ws.close()
        return list(by_host), heard

    hosts, heard = run(scenario())
    assert heard.get("type") == "chat", heard
    assert heard["text"].startswith("across the fleet"), heard
    # Sent through the instance on one worker, heard by a client of the other's.
    assert heard["via"].rsplit(":", 1)[0] == hosts[0] != hosts[1], (hosts, heard)


def redis_as(lab, app: str, *words: str) -> str:
    """What the Redis primary answers ``words`` sent as the app ``app``'s own user."""
    primary = lab.fleet.node(lab.redis_primary())
    password = lab.fleet.secrets()[app_redis_secret(app)]
    command = " ".join(f"'{word}'" for word in words)
    result = lab.on(
        primary.name,
        f"REDISCLI_AUTH='{password}' timeout 5 redis-cli --no-auth-warning --user "
        f"{app_redis_user(app)} -h {primary.address} -p {lab.fleet.settings.redis_port} "
        f"{command}",
    )
    return (result.stdout + result.stderr).strip()


def test_two_apps_cannot_publish_on_each_others_channels_nor_store_keys(lab):
    # A publish answers how many clients heard it: nobody listens on these probe channels.
    assert redis_as(lab, "pyecho", "PUBLISH", "app:pyecho:probe", "mine") == "0"
    tries = {
        "store a key under its own prefix": ("SET", "app:chat:probe", "own"),
        "read a key under its own prefix": ("GET", "app:chat:probe"),
        "read the service's keys": ("GET", "wssfleet:anything"),
        "publish on the other app's channel": ("PUBLISH", "app:pyecho:room", "hi"),
        "subscribe to the service's channels": ("SUBSCRIBE", "wssfleet:lobby"),
        "list every key": ("KEYS", "*"),
        "scan every key": ("SCAN", "0"),
        "list every channel": ("PUBSUB", "CHANNELS"),
        "replace the fleet's functions": ("FUNCTION", "FLUSH"),
        "read the server's config": ("CONFIG", "GET", "requirepass"),
        "flush everything": ("FLUSHALL",),
    }
    answers = {what: redis_as(lab, "chat", *words) for what, words in tries.items()}
    refused = {what: answer for what, answer in answers.items() if "NOPERM" in answer}
    assert refused == answers, {k: v for k, v in answers.items() if k not in refused}
    # Its own channel (not the one its instances listen on, so that none hears the probe).
    assert redis_as(lab, "chat", "PUBLISH", "app:chat:probe", "own") == "0"


@dataclass
class ChatClient:
    """One connected client that reconnects when its instance closes it, and its record."""

    # When each close came (monotonic seconds).
    closed_at: list[float] = field(default_factory=list)
    failed_handshakes: int = 0
    # Why each handshake failed, and when (seconds into the test).
    failures: list[str] = field(default_factory=list)
    closes: list[int] = field(default_factory=list)
    # Seconds from each close to the next greeting.
    gaps: list[float] = field(default_factory=list)
    instances: list[str] = field(default_factory=list)


async def keep_connected(lab, client: ChatClient, source: str, until: asyncio.Event) -> None:
    closed_at = None
    while not until.is_set():
        try:
            ws = await lab.connect_app("/chat", local_addr=(source, 0))
            greeting = await hello(ws)
        except Exception as error:  # any failed upgrade counts; the client tries again
            client.failed_handshakes += 1
            client.failures.append(f"{time.monotonic():.1f} {error!r}"[:200])
            await asyncio.sleep(0.2)
            continue
        client.instances.append(greeting["instance"])
        if closed_at is not None:
            client.gaps.append(time.monotonic() - closed_at)
        try:
            while not until.is_set():
                try:
                    await asyncio.wait_for(ws.recv(), 0.5)
                except TimeoutError:
                    continue
        except ConnectionClosed:
            client.closes.append(ws.close_code)
            closed_at = time.monotonic()
            client.closed_at.append(closed_at)
            # Spread out, as the shipped clients do, so one instance's clients do not arrive
            # at the other all in the same moment.
            await asyncio.sleep(random.uniform(0, 1))
            continue
        await ws.close()


def chat_copy(tmp_path: Path, edit: tuple[str, str] | None = None) -> Path:
    """The chat example copied, with its code changed (a new release)."""
    copy = tmp_path / "chat"
    shutil.copytree(EXAMPLES / "chat-node", copy, ignore=shutil.ignore_patterns("node_modules"))
    server = copy / "server.js"
    text = server.read_text() + "// a new release\n"
    if edit:
        assert edit[0] in text
        text = text.replace(*edit)
    server.write_text(text)
    return copy


def apps_with_chat_from(lab, source: Path) -> dict:
    apps = {
        name: app.model_dump(exclude_defaults=True) for name, app in lab.fleet.settings.apps.items()
    }
    apps["chat"]["source"] = str(source)
    return apps


def unit_starts(lab, unit: str) -> dict[str, int]:
    """When the unit last started on each worker (µs of the shared kernel's clock)."""
    return {
        worker.name: int(
            lab.on(worker.name, f"systemctl show -P ExecMainStartTimestampMonotonic {unit}").stdout
        )
        for worker in lab.fleet.workers
    }


def test_a_rolling_release_of_the_chat_under_200_clients_moves_one_instance_at_a_time(
    lab, tmp_path, source_address
):
    chat = lab.fleet.settings.apps["chat"]
    unit = app_layout("chat").unit(chat.port)
    inventory = derived_inventory(tmp_path, apps=apps_with_chat_from(lab, chat_copy(tmp_path)))
    clients = [ChatClient() for _ in range(200)]
    # 200 people, from 4 addresses: one address's reconnections stay within the per-source
    # admission rate (haproxy_connection_rate_limit), which this test does not measure.
    sources = [source_address(n) for n in range(11, 15)]

    async def scenario() -> tuple[int, dict, str]:
        until = asyncio.Event()
        tasks = []
        for index, client in enumerate(clients):
            source = sources[index % len(sources)]
            tasks.append(asyncio.create_task(keep_connected(lab, client, source, until)))
            await asyncio.sleep(0.02)  # 50 new clients a second
        while sum(len(client.instances) for client in clients) < len(clients):
            await asyncio.sleep(0.2)
        code, report, log = await asyncio.to_thread(deploy, inventory)
        # The last ones moved may still be on their way.
        await asyncio.sleep(chat.stop_timeout + 5)
        until.set()
        await asyncio.gather(*tasks)
        return code, report, log

    before = unit_starts(lab, unit)
    try:
        code, report, log = run(scenario(), timeout=300)
        assert code == 0, log[-3000:]
        steps = [step for step in report["rollout"]["steps"] if step["app"] == "chat"]
        assert [(step["host"], step["outcome"]) for step in steps] == [
            (worker.name, "done") for worker in lab.fleet.workers
        ]
        # One at a time: each instance started again only after the one before was healthy.
        after = unit_starts(lab, unit)
        starts = [after[worker.name] for worker in lab.fleet.workers]
        assert all(after[name] > before[name] for name in after), (before, after)
        assert starts == sorted(starts) and starts[1] - starts[0] > 200_000, starts
        failures = [failure for client in clients for failure in client.failures]
        assert failures == [], (len(failures), sorted(failures)[:5], sorted(failures)[-5:])
        closes = [code for client in clients for code in client.closes]
        assert closes and set(closes) == {1012}, sorted(set(closes))
        moved = [client for client in clients if client.closes]
        # Every client closed came back, each within stop_timeout + 5 s.
        assert all(len(client.gaps) == len(client.closes) for client in moved)
        longest = max(gap for client in moved for gap in client.gaps)
        assert longest < chat.stop_timeout + 5, longest
        # The chat has a drain path: each instance moved its clients over drain_seconds, not
        # all in one moment (at once, one second would hold one instance's whole share).
        per_second = Counter(int(moment) for client in clients for moment in client.closed_at)
        busiest = max(per_second.values())
        print(
            f"rolling release: {len(moved)} of {len(clients)} clients moved, "
            f"{len(closes)} closes, busiest second {busiest} closes, longest time without a "
            f"connection {longest:.2f} s"
        )
        assert busiest <= len(closes) / 4, sorted(per_second.items())
        for step in steps:
            assert step["detail"]["drain"]["status"] == 200, step
            assert set(step["detail"]["drain"]["left"].values()) == {"0"}, step
    finally:
        # `make rollback APP=chat`: the chat's instances back on the release before, one at
        # a time; the built-in service's are not touched.
        rolled = wssfleet("rollback", "--app", "chat", "--json")
    report = json.loads(rolled.stdout)
    assert rolled.returncode == 0, rolled.stderr[-3000:]
    assert report["release"] == lab.fleet.app_sources["chat"].release_id()
    assert [(step["app"], step["outcome"]) for step in report["rollout"]["steps"]] == [
        ("chat", "done") for _ in lab.fleet.workers
    ]
    unknown = wssfleet("rollback", "--app", "nosuch")
    assert unknown.returncode == 1 and "--app nosuch: the inventory has no such app" in (
        unknown.stderr
    )
    code, report, log = deploy()
    assert code == 0, log[-3000:]
    assert report["rollout"]["steps"] == []


def test_an_app_release_failing_its_health_check_stops_at_its_first_instance(lab, tmp_path):
    chat = lab.fleet.settings.apps["chat"]
    failing = chat_copy(
        tmp_path,
        ("response.writeHead(200, { 'content-type': 'text/plain' }).end('ok\\n');",
         "response.writeHead(500, { 'content-type': 'text/plain' }).end('not today\\n');"),
    )  # fmt: skip
    layout = app_layout("chat")
    running = {
        worker.name: lab.on(worker.name, f"readlink -f {layout.current}").stdout.strip()
        for worker in lab.fleet.workers
    }
    inventory = derived_inventory(
        tmp_path, rollout_health_timeout=8, apps=apps_with_chat_from(lab, failing)
    )
    code, report, log = deploy(inventory)
    assert code != 0, log[-3000:]
    first, second = lab.fleet.workers[:2]
    steps = [step for step in report["rollout"]["steps"] if step["app"] == "chat"]
    assert [(step["host"], step["outcome"]) for step in steps] == [
        (first.name, "failed"),
        (second.name, "pending"),
    ]
    error = report["rollout"]["error"]
    assert error.startswith(f"app chat: {first.name} instance {layout.unit(chat.port)}: "), error
    assert "health check (/healthz) within 8 s (HTTP 500: not today" in error, error
    previous = running[first.name].rsplit("/", 1)[1]
    assert f"it is back on release {previous}" in error, error
    assert error in report["errors"]
    for worker in lab.fleet.workers:
        pid = lab.on(worker.name, f"systemctl show -P MainPID {layout.unit(chat.port)}").stdout
        cwd = lab.on(worker.name, f"readlink /proc/{pid.strip()}/cwd").stdout.strip()
        assert cwd == running[worker.name], (worker.name, cwd)
    code, report, log = deploy()
    assert code == 0, log[-3000:]
    assert report["rollout"]["steps"] == []


def redis_server_pids(lab) -> dict[str, str]:
    return {
        node.name: lab.on(node.name, "systemctl show -P MainPID redis-server").stdout.strip()
        for node in lab.fleet.redis_nodes
    }


def test_an_app_removed_from_the_inventory_is_stopped_and_removed_everywhere(lab, tmp_path):
    layout = app_layout("pyecho")
    port = lab.fleet.settings.apps["pyecho"].port
    apps = {
        name: app.model_dump(exclude_defaults=True)
        for name, app in lab.fleet.settings.apps.items()
        if name != "pyecho"
    }
    redis_before = redis_server_pids(lab)
    code, _, log = deploy(derived_inventory(tmp_path, apps=apps))
    try:
        assert code == 0, log[-3000:]
        for worker in lab.fleet.workers:
            left = lab.on(
                worker.name,
                f"systemctl list-units --all --no-legend '{layout.unit_prefix}*'; "
                f"ls -d {layout.unit_file} {layout.environment} {layout.home} 2>/dev/null; "
                f"id {layout.user} 2>/dev/null; nft list table inet wssfleet | grep -w {port}",
            ).stdout
            assert left == "", (worker.name, left)
        for master in lab.fleet.masters:
            servers = lab.on(master.name, commands.backend_servers()).stdout
            assert layout.backend not in servers, servers
        # Its route is nobody's now: the built-in service has no such path, and no other app
        # gets its clients.
        with pytest.raises(InvalidStatus) as refused:
            run(lab.connect_app("/pyecho"))
        assert refused.value.response.status_code in (404, 503)
        # Its Redis user is gone, loaded live: Redis was not restarted.
        assert "WRONGPASS" in redis_as(lab, "pyecho", "PING")
        assert redis_server_pids(lab) == redis_before
    finally:
        code, _, log = deploy()
    assert code == 0, log[-3000:]
    assert redis_as(lab, "pyecho", "PING") == "PONG"
    assert redis_server_pids(lab) == redis_before
    assert run(scenario_echo(lab, "/pyecho")) == "back"


async def scenario_echo(lab, path: str) -> str:
    async with await lab.connect_app(path) as ws:
        await hello(ws)
        await ws.send("back")
        return await asyncio.wait_for(ws.recv(), 10)
