"""The WebSocket service through the master, as clients on the internet see it."""

from __future__ import annotations

import http.client
import json
import socket

import pytest
from websockets.exceptions import InvalidStatus

from tests.e2e.conftest import run
from tests.frames import next_frame
from wssfleet_control.hostside.layout import INSTANCE_PREFIX


async def receive(ws, timeout: float = 10) -> dict:
    return await next_frame(ws, timeout)


def test_echo_through_the_master(lab):
    async def scenario():
        async with await lab.connect() as ws:
            welcome = await receive(ws)
            await ws.send(json.dumps({"type": "echo", "data": {"hello": "fleet"}}))
            return welcome, await receive(ws)

    welcome, echo = run(scenario())
    assert welcome["type"] == "welcome" and welcome["sub"] == "e2e"
    assert echo == {"type": "echo", "data": {"hello": "fleet"}}


def test_a_message_crosses_workers(lab):
    """Clients pinned to different worker hosts (known from the welcome) share a channel."""

    async def scenario():
        by_host: dict[str, object] = {}
        opened = []
        for _ in range(16):
            ws = await lab.connect("/ws/cross", subject=f"c{len(opened)}")
            opened.append(ws)
            host = (await receive(ws))["worker"].rsplit(":", 1)[0]
            # Subscribed from this answer on: messages published after it reach this client.
            assert (await receive(ws))["type"] == "subscribed"
            by_host.setdefault(host, ws)
            if len(by_host) >= 2:
                break
        assert len(by_host) >= 2, f"every client landed on {list(by_host)}"
        sender, receiver = list(by_host.values())[:2]
        await sender.send(json.dumps({"type": "publish", "channel": "cross", "data": "over"}))
        message = await receive(receiver)
        for ws in opened:
            await ws.close()
        return sorted(by_host), message

    hosts, message = run(scenario())
    assert len(hosts) == 2
    assert message["type"] == "message" and message["data"] == "over"


@pytest.mark.parametrize(
    ("path", "options", "status"),
    [
        ("/ws", {"origin": "https://evil.example"}, 403),
    ],
)
def test_foreign_origin_is_refused(lab, path, options, status):
    async def scenario():
        with pytest.raises(InvalidStatus) as refused:
            await lab.connect(path, **options)
        return refused.value.response.status_code

    assert run(scenario()) == status


@pytest.mark.parametrize("token", ["", "forged.token.value"], ids=["missing", "forged"])
def test_bad_token_is_refused_401(lab, token):
    async def scenario():
        from websockets.asyncio.client import connect

        with pytest.raises(InvalidStatus) as refused:
            await connect(
                f"wss://{lab.domain}/ws?token={token}",
                ssl=lab.tls_context(),
                host=lab.master_address,
                port=443,
                server_hostname=lab.domain,
                origin=f"https://{lab.domain}",
                proxy=None,
            )
        return refused.value.response.status_code

    assert run(scenario()) == 401


def test_demo_page_is_served_over_https(lab):
    context = lab.tls_context()
    context.check_hostname = False
    connection = http.client.HTTPSConnection(lab.master_address, 443, timeout=10, context=context)
    connection.request("GET", "/", headers={"Host": lab.domain})
    reply = connection.getresponse()
    assert reply.status == 200
    assert "<title>wssfleet</title>" in reply.read().decode()


def reachable(address: str, port: int) -> bool:
    try:
        with socket.create_connection((address, port), timeout=2):
            return True
    except OSError:
        return False


def test_worker_ports_and_redis_are_unreachable_from_outside(lab):
    fleet = lab.fleet
    assert reachable(lab.master_address, 443)  # the probe itself works
    for worker in fleet.workers:
        for port in (fleet.settings.worker_base_port, fleet.settings.worker_base_port + 1):
            assert not reachable(worker.address, port), f"{worker.name}:{port} is exposed"
    assert not reachable(fleet.redis.address, fleet.settings.redis_port), "Redis is exposed"


def test_logs_record_connections_but_never_a_token(lab):
    run(_echo_once(lab))
    # Every token auth.mint makes starts with the base64 of '{"alg"'.
    for node in lab.fleet.nodes:
        journal = lab.on(node.name, "journalctl -o cat --no-pager")
        assert journal.returncode == 0
        assert "eyJhbGci" not in journal.stdout, f"a token reached {node.name}'s journal"
        assert "token=" not in journal.stdout, f"a token query reached {node.name}'s journal"
    events = []
    for worker in lab.fleet.workers:
        lines = lab.on(worker.name, f"journalctl -u '{INSTANCE_PREFIX}*' -o cat --no-pager").stdout
        events += [json.loads(line) for line in lines.splitlines() if line.startswith("{")]
    kinds = {event["event"] for event in events}
    assert {"listening", "connect", "disconnect", "reject"} <= kinds
    assert any(event.get("reason") == "origin not allowed" for event in events)


async def _echo_once(lab):
    async with await lab.connect(subject="logged") as ws:
        await receive(ws)
