"""The service end to end on loopback: real processes, a real redis-server, real sockets."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path

import jwt
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.processes import http_status
from tests.unit.clients import (
    expect_nothing,
    message,
    open_client,
    receive,
    request,
    run,
    subscribed,
)
from tests.unit.helpers import (
    ORIGIN,
    SECRET,
    refusal,
    token,
    two_services_on_redis,
    wait_until,
    wait_until_redis,
)
from wssfleet import auth
from wssfleet.node import LISTEN_BACKLOG


def test_healthz_without_redis_says_redis_disabled(start_service):
    health = start_service().health()
    assert health["status"] == "ok"
    assert health["redis"] == "disabled"


def raw_http(port: int, request: bytes) -> bytes:
    """What the service answers to these bytes, read until it closes."""
    with socket.create_connection(("127.0.0.1", port), timeout=5) as connection:
        connection.sendall(request)
        answer = b""
        while chunk := connection.recv(65536):
            answer += chunk
    return answer


def test_a_load_balancer_s_http_1_0_health_check_is_answered(start_service):
    # HAProxy's `option httpchk GET /healthz`: HTTP/1.0, no Host.
    service = start_service()
    answer = raw_http(service.port, b"GET /healthz HTTP/1.0\r\n\r\n")
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200 "), answer
    assert json.loads(body)["status"] == "ok"
    # Any other HTTP/1.0 request is still refused: an upgrade needs HTTP/1.1 (RFC 6455).
    upgrade = (
        b"GET /ws HTTP/1.0\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert raw_http(service.port, upgrade).startswith(b"HTTP/1.1 400 ")
    assert raw_http(service.port, b"GET / HTTP/1.0\r\n\r\n").startswith(b"HTTP/1.1 400 ")
    # And HTTP/1.1 as before.
    again = raw_http(service.port, b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
    assert again.startswith(b"HTTP/1.1 200 "), again


def test_the_listening_socket_queues_a_reconnect_storm(start_service):
    """The kernel queues thousands of connections for accept, not asyncio's default 100: a
    reconnect storm past that would lose SYNs, each retried a second later."""
    service = start_service()
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    shown = subprocess.run(
        ["ss", "-ltnH", f"sport = :{service.port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    # For a listening socket ss shows the accept queue's bound as Send-Q (the third column).
    assert int(shown[2]) == min(LISTEN_BACKLOG, somaxconn) > 100, shown


def test_healthz_says_redis_connected(start_service, redis_server):
    service = start_service(redis_server.url)
    deadline = time.monotonic() + 10
    while service.health()["redis"] != "connected" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert service.health() == {
        "status": "ok",
        "redis": "connected",
        "worker": f"test:{service.port}",
        "connections": 0,
        "channels": 0,
        "bus_messages": 0,
        "draining": False,
    }


def test_demo_page_is_served_with_a_content_security_policy(start_service):
    service = start_service()
    with urllib.request.urlopen(f"http://127.0.0.1:{service.port}/", timeout=5) as reply:
        page = reply.read().decode()
        assert "default-src 'none'" in reply.headers["Content-Security-Policy"]
    assert '<script type="module" src="/app.js">' in page
    # The demo follows the contract through the very module applications import.
    with urllib.request.urlopen(f"http://127.0.0.1:{service.port}/app.js", timeout=5) as reply:
        assert 'import { Client } from "/wssfleet-client.js"' in reply.read().decode()
    # The contract as an ES module for applications' pages: a module needs a JavaScript type.
    module = f"http://127.0.0.1:{service.port}/wssfleet-client.js"
    with urllib.request.urlopen(module, timeout=5) as reply:
        assert reply.headers["Content-Type"].startswith("text/javascript")
        assert "export class Client" in reply.read().decode()


@pytest.mark.parametrize("path", ["/nope", "//x/healthz", "//internal/shed?count=1", "/ws/../x"])
def test_unknown_path_is_404(start_service, path):
    # Routes are exact paths: '//x/healthz' is not '/healthz' (urlsplit would say it is).
    service = start_service(WSSFLEET_INTERNAL_KEY="k")
    with socket.create_connection(("127.0.0.1", service.port), timeout=5) as raw:
        raw.sendall(f"GET {path} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer k\r\n\r\n".encode())
        assert raw.recv(100).startswith(b"HTTP/1.1 404"), path


def test_welcome_names_the_worker_and_the_channel_of_the_path(start_service):
    service = start_service()

    async def scenario():
        async with connect(f"{service.url}/ws/news?token={token('bob')}", origin=ORIGIN) as ws:
            return await receive(ws)

    minted = time.time()
    welcome = run(scenario())
    # The token's exp (300 s after it was minted): when the client must have refreshed it.
    assert minted + 299 <= welcome.pop("expires") <= minted + 301
    assert welcome == {
        "type": "welcome",
        "worker": f"test:{service.port}",
        "channels": ["news"],
        "sub": "bob",
        "heartbeat": 5,
    }


def test_echo_answers_the_sender_only(start_service):
    service = start_service()

    async def scenario():
        sender = await open_client(service, "/ws/room")
        other = await open_client(service, "/ws/room")
        await request(sender, type="echo", data={"n": 1})
        assert await receive(sender) == {"type": "echo", "data": {"n": 1}}
        await expect_nothing(other)

    run(scenario())


def test_publish_reaches_subscribers_only(start_service):
    service = start_service()

    async def scenario():
        alice = await open_client(service, subject="alice")
        bob = await open_client(service, subject="bob")
        carol = await open_client(service, subject="carol")
        await subscribed(alice, "room")
        await subscribed(bob, "room")
        await request(alice, type="publish", channel="room", data="hi")
        expected = {"type": "message", "channel": "room", "data": "hi", "from": "alice"}
        assert await message(alice) == expected
        assert await message(bob) == expected
        await expect_nothing(carol)
        await request(bob, type="unsubscribe", channel="room")
        assert await receive(bob) == {"type": "unsubscribed", "channel": "room"}
        await request(alice, type="publish", channel="room", data="again")
        assert (await message(alice))["data"] == "again"
        await expect_nothing(bob)

    run(scenario())


def test_publish_crosses_processes_through_redis(start_service, redis_server):
    first, second = two_services_on_redis(start_service, redis_server)

    async def scenario():
        sender = await open_client(first, "/ws/room", subject="alice")
        receiver = await open_client(second, "/ws/room", subject="bob")
        await request(sender, type="publish", channel="room", data={"text": "across"})
        expected = {
            "type": "message",
            "channel": "room",
            "data": {"text": "across"},
            "from": "alice",
        }
        assert await message(receiver) == expected
        # Delivered once to the sender too, through Redis like everyone else.
        assert await message(sender) == expected
        await expect_nothing(sender)

    run(scenario())


def test_a_redis_outage_refuses_publishes_aloud_and_delivery_resumes(start_service, redis_server):
    first, second = two_services_on_redis(start_service, redis_server)

    async def scenario():
        local_a = await open_client(first, "/ws/room", subject="a")
        local_b = await open_client(first, "/ws/room", subject="b")
        remote = await open_client(second, "/ws/room", subject="r")

        redis_server.stop()
        await asyncio.to_thread(wait_until_redis, first, "disconnected")
        assert first.health()["status"] == "degraded"
        await request(local_a, type="publish", channel="room", data="during outage", id="m1")
        refused = await receive(local_a, timeout=10)
        assert (refused["type"], refused["id"]) == ("error", "m1")
        assert refused["reason"].startswith("not published: the message bus")
        await request(local_a, type="echo", data="still here")
        assert await receive(local_a) == {"type": "echo", "data": "still here"}
        await expect_nothing(local_b)
        await expect_nothing(remote)

        redis_server.start()
        await asyncio.to_thread(wait_until_redis, first, "connected")
        await asyncio.to_thread(wait_until_redis, second, "connected")
        assert first.health()["status"] == "ok"
        await request(local_a, type="publish", channel="room", data="during outage", id="m1")
        frames = [await receive(local_a), await receive(local_a)]
        assert {frame["type"] for frame in frames} == {"published", "message"}
        assert (await message(remote))["data"] == "during outage"
        assert (await message(local_b))["data"] == "during outage"

    run(scenario())


@pytest.mark.parametrize(
    ("frame", "reason"),
    [
        ("{not json", "malformed JSON"),
        ("[1, 2]", "a frame must be a JSON object"),
        ('{"channel": "c"}', "missing field 'type'"),
        ('{"type": "shout"}', "unknown type 'shout'"),
        ('{"type": "publish", "channel": "c"}', "publish needs a field 'data'"),
        ('{"type": "subscribe"}', "subscribe needs a string field 'channel'"),
        ('{"type": "subscribe", "channel": "bad channel!"}', "a channel is 1-64 characters"),
        ('{"type": "echo"}', "echo needs a field 'data'"),
    ],
)
def test_bad_frames_get_an_error_reply_and_the_connection_stays_open(start_service, frame, reason):
    service = start_service()

    async def scenario():
        ws = await open_client(service)
        await ws.send(frame)
        reply = await receive(ws)
        assert reply["type"] == "error"
        assert reply["reason"].startswith(reason)
        await request(ws, type="echo", data="still open")
        assert await receive(ws) == {"type": "echo", "data": "still open"}

    run(scenario())


def closed_with(service, send, **options) -> int:
    async def scenario() -> int:
        ws = await open_client(service, **options)
        bystander = await open_client(service, "/ws/room")
        await send(ws)
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await receive(ws)
        # Nobody else notices: the bystander still echoes.
        await request(bystander, type="echo", data="ok")
        assert await receive(bystander) == {"type": "echo", "data": "ok"}
        return closed.value.rcvd.code

    return run(scenario())


def test_binary_frame_closes_1003(start_service):
    async def send(ws):
        await ws.send(b"\x00\x01")

    assert closed_with(start_service(), send) == 1003


def test_oversized_message_closes_1009(start_service):
    async def send(ws):
        await ws.send(json.dumps({"type": "echo", "data": "x" * 2048}))

    service = start_service(WSSFLEET_MAX_MESSAGE_BYTES="1024")
    assert closed_with(service, send, max_size=None) == 1009


def test_invalid_utf8_closes_1007(start_service):
    async def send(ws):
        await ws.send(b'{"type": "echo", "data": "\xc3\x28"}', text=True)

    assert closed_with(start_service(), send) == 1007


def test_a_fragmented_message_is_reassembled_and_answered(start_service):
    async def scenario():
        ws = await open_client(start_service())
        text = json.dumps({"type": "echo", "data": "in three parts: é, 😀"})
        await ws.send([text[:10], text[10:25], text[25:]])
        return await receive(ws)

    assert run(scenario()) == {"type": "echo", "data": "in three parts: é, 😀"}


def test_a_fragmented_message_over_the_size_limit_closes_1009(start_service):
    async def send(ws):
        await ws.send(['{"type": "echo", "data": "', "x" * 600, "x" * 600, '"}'])

    service = start_service(WSSFLEET_MAX_MESSAGE_BYTES="1024")
    assert closed_with(service, send, max_size=None) == 1009


def test_a_message_in_too_many_fragments_closes_1009(start_service):
    async def send(ws):
        await ws.send(["x"] * 5000)

    assert closed_with(start_service(), send) == 1009


def test_invalid_utf8_across_fragments_closes_1007(start_service):
    async def send(ws):
        await ws.send([b'{"type": "echo", "data": "\xc3', b'\x28"}'], text=True)

    assert closed_with(start_service(), send) == 1007


def client_frame(opcode: int, payload: bytes, fin: bool = True, rsv: int = 0) -> bytes:
    """One masked client frame as RFC 6455 5.2 lays it out, reserved bits as given: what a
    broken or hostile client library could send."""
    mask = os.urandom(4)
    masked = bytes(byte ^ mask[n % 4] for n, byte in enumerate(payload))
    assert len(masked) < 126
    return bytes(((0x80 if fin else 0) | rsv | opcode, 0x80 | len(masked))) + mask + masked


@pytest.mark.parametrize(
    "frames",
    [
        # RSV1 set: no extension was agreed that would give it a meaning.
        [client_frame(0x1, b'{"type": "echo", "data": 1}', rsv=0x40)],
        # A continuation that continues nothing.
        [client_frame(0x0, b'"}')],
        # A new text message before the fragmented one ends.
        [client_frame(0x1, b'{"type": ', fin=False), client_frame(0x1, b'"echo"}')],
    ],
    ids=["reserved bit", "lone continuation", "interleaved message"],
)
def test_a_frame_that_breaks_the_protocol_closes_1002(start_service, frames):
    async def send(ws):
        ws.transport.write(b"".join(frames))

    assert closed_with(start_service(), send) == 1002


def test_frames_are_answered_in_order_while_a_publish_waits_for_redis(start_service, redis_server):
    service = start_service(redis_server.url)
    wait_until_redis(service, "connected")

    async def scenario():
        ws = await open_client(service, subject="p")
        assert redis_server.process is not None
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            sent = time.monotonic()
            await request(ws, type="publish", channel="room", data="stuck", id="m1")
            await request(ws, type="echo", data="after the publish")
            await ws.send("not json")
            await request(ws, type="unsubscribe", channel="room")
            answers = [await receive(ws, timeout=10) for _ in range(4)]
            waited = time.monotonic() - sent
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        return answers, waited

    answers, waited = run(scenario())
    assert [(answer["type"], answer.get("id")) for answer in answers] == [
        ("error", "m1"),
        ("echo", None),
        ("error", None),
        ("unsubscribed", None),
    ], answers
    # The publish failed aloud when Redis did not answer (2 s, redis_broker.py); nothing behind
    # it was answered first.
    assert waited >= 1.5, waited


def test_foreign_origin_is_refused_403(start_service):
    status = refusal(start_service(), f"/ws?token={token()}", origin="https://evil.example")
    assert status == 403


def test_no_origin_is_allowed_with_a_valid_token(start_service):
    service = start_service()

    async def scenario():
        async with connect(f"{service.url}/ws?token={token()}") as ws:
            return (await receive(ws))["type"]

    assert run(scenario()) == "welcome"


def test_token_in_authorization_header_is_accepted(start_service):
    service = start_service()

    async def scenario():
        headers = {"Authorization": f"Bearer {token('hdr')}"}
        async with connect(f"{service.url}/ws", additional_headers=headers, origin=ORIGIN) as ws:
            return (await receive(ws))["sub"]

    assert run(scenario()) == "hdr"


@pytest.mark.parametrize(
    "query",
    [
        "",
        "?token=",
        f"?token={auth.mint(SECRET, 'late', 1, now=time.time() - 3600)}",
        f"?token={auth.mint('another-secret-of-sufficient-length-0123456789', 'mallory', 300)}",
        "?token=not.a.jwt",
    ],
    ids=["missing", "empty", "expired", "forged", "garbage"],
)
def test_bad_token_is_refused_401_before_the_upgrade(start_service, query):
    assert refusal(start_service(), f"/ws{query}", origin=ORIGIN) == 401


def test_refusals_are_logged_with_a_reason_but_never_the_token(start_service):
    service = start_service()
    # Signed with another key, under the real key's id.
    forged = jwt.encode(
        {"sub": "mallory", "exp": int(time.time()) + 300},
        "another-secret-of-sufficient-length-0123456789",
        algorithm="HS256",
        headers={"kid": auth.key_id(SECRET)},
    )
    refusal(service, f"/ws?token={forged}", origin=ORIGIN)
    service.stop()
    lines = [json.loads(line) for line in service.log.read_text().splitlines()]
    rejects = [line for line in lines if line["event"] == "reject"]
    assert rejects and rejects[0]["reason"] == "forged token" and rejects[0]["status"] == 401
    assert forged not in service.log.read_text()


def test_rate_limit_drops_messages_with_an_error(start_service):
    service = start_service(WSSFLEET_MESSAGES_PER_SECOND="5")

    async def scenario():
        ws = await open_client(service)
        for n in range(20):
            await request(ws, type="echo", data=n)
        replies = [await receive(ws) for _ in range(20)]
        return [reply["type"] for reply in replies]

    kinds = run(scenario())
    assert kinds.count("echo") <= 6
    assert "error" in kinds


def test_slow_consumer_is_closed_and_others_keep_receiving(start_service):
    service = start_service(
        WSSFLEET_SEND_BUFFER_BYTES="65536",
        WSSFLEET_HISTORY_MAX_BYTES="65536",
        WSSFLEET_MAX_PUBLISH_BYTES="65536",
        WSSFLEET_MESSAGES_PER_SECOND="100000",
    )

    async def scenario():
        # max_queue=1: the slow client stops reading its socket after one frame.
        slow = await open_client(service, "/ws/room", subject="slow", max_queue=1, close_timeout=1)
        fast = await open_client(service, "/ws/room", subject="fast")
        payload = "x" * 60000
        # The fast client reads each of its messages before publishing the next one.
        for n in range(200):
            await request(fast, type="publish", channel="room", data=[n, payload])
            assert (await message(fast))["data"][0] == n
        return slow

    run(scenario())
    service.stop()
    events = [json.loads(line)["event"] for line in service.log.read_text().splitlines()]
    assert "overflow" in events


def test_sigterm_closes_every_client_with_1001_and_exits_0(start_service):
    service = start_service()

    async def scenario():
        clients = [await open_client(service) for _ in range(3)]
        started = time.monotonic()
        service.process.send_signal(signal.SIGTERM)
        codes = []
        for ws in clients:
            with pytest.raises(ConnectionClosed) as closed:
                await receive(ws, timeout=10)
            codes.append(closed.value.rcvd.code)
        return codes, time.monotonic() - started

    codes, elapsed = run(scenario())
    assert codes == [1001, 1001, 1001]
    assert elapsed < 10
    assert service.process.wait(timeout=10) == 0


def test_a_drain_closes_every_client_with_1012_evenly_over_drain_seconds(start_service):
    service = start_service(WSSFLEET_DRAIN_SECONDS="2")
    count = 40

    async def closed_at(ws, started: float) -> tuple[int, float]:
        with pytest.raises(ConnectionClosed) as closed:
            while True:
                await receive(ws, timeout=10)
        return closed.value.rcvd.code, time.monotonic() - started

    async def scenario():
        clients = [await open_client(service) for _ in range(count)]
        started = time.monotonic()
        watchers = [asyncio.create_task(closed_at(ws, started)) for ws in clients]
        service.process.send_signal(signal.SIGUSR1)
        health = await asyncio.to_thread(
            wait_until, lambda: service.health()["draining"] and service.health(), 5, "draining"
        )
        return health, await asyncio.gather(*watchers)

    health, closes = run(scenario())
    assert health["draining"] is True
    assert {code for code, _ in closes} == {1012}
    times = sorted(moment for _, moment in closes)
    assert times[-1] < 3.0 and times[-1] - times[0] > 1.5, times
    # No second closes more than ceil(clients / drain_seconds) + 1 clients.
    per_second = [sum(1 for moment in times if start <= moment < start + 1) for start in times]
    assert max(per_second) <= count // 2 + 1, per_second
    # A drained process still stops on SIGTERM, cleanly.
    assert service.stop() == 0


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        (
            "WSSFLEET_PORT",
            "99999",
            "WSSFLEET_PORT is invalid: Input should be less than or equal to 65535",
        ),
        ("WSSFLEET_JWT_SECRET", "short", "WSSFLEET_JWT_SECRET is invalid: must be at least 32"),
        ("WSSFLEET_REDIS_URL", "http://pw@x", "WSSFLEET_REDIS_URL is invalid: must be a redis"),
        ("WSSFLEET_ALLOWED_ORIGINS", "example.com", "each origin is scheme://host"),
        ("WSSFLEET_PORTT", "1", "unknown variable WSSFLEET_PORTT"),
    ],
)
def test_bad_configuration_stops_the_process_naming_the_variable(variable, value, message):
    env = {"WSSFLEET_JWT_SECRET": SECRET, "PATH": "/usr/bin:/bin", variable: value}
    result = subprocess.run(
        [sys.executable, "-m", "wssfleet", "serve"],
        env=env,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 2
    assert message in result.stderr
    # Never the value: it may be a key, or a URL with a password in it.
    assert f"{variable}={value!r}" not in result.stderr
    if variable in ("WSSFLEET_JWT_SECRET", "WSSFLEET_REDIS_URL"):
        assert value not in result.stderr


def test_keepalive_drops_a_peer_that_stops_answering_pings(start_service):
    import base64
    import os
    import socket as sockets

    service = start_service(WSSFLEET_PING_INTERVAL="1", WSSFLEET_PING_TIMEOUT="1")
    key = base64.b64encode(os.urandom(16)).decode()
    with sockets.create_connection(("127.0.0.1", service.port), timeout=10) as peer:
        peer.sendall(
            f"GET /ws?token={token('silent')} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Key: {key}\r\n"
            "Sec-WebSocket-Version: 13\r\n\r\n".encode()
        )
        # Read the 101, the welcome and the pings, never answering; the server must hang up.
        started, received = time.monotonic(), b""
        while chunk := peer.recv(65536):
            received += chunk
        elapsed = time.monotonic() - started
    assert received.startswith(b"HTTP/1.1 101")
    assert elapsed < 8
    service.stop()
    events = [json.loads(line) for line in service.log.read_text().splitlines()]
    disconnects = [event for event in events if event["event"] == "disconnect"]
    assert [event["sub"] for event in disconnects] == ["silent"]
    assert disconnects[0]["code"] == 1011  # keepalive ping timeout


def test_keepalive_pings_every_client_and_keeps_those_that_answer(start_service):
    service = start_service(WSSFLEET_PING_INTERVAL="1", WSSFLEET_PING_TIMEOUT="1")

    async def scenario():
        clients = [await open_client(service, subject=f"live{n}") for n in range(3)]
        pings = 0
        for ws in clients:
            # websockets' client answers pings itself; count them through its protocol.
            ws.protocol.receive_data = counting(ws.protocol.receive_data)
        await asyncio.sleep(4.5)
        for ws in clients:
            await request(ws, type="echo", data="still here")
            assert (await receive(ws))["data"] == "still here"
            pings += ws.protocol.receive_data.pings
        return pings

    def counting(receive_data):
        def counted(data):
            counted.pings += data.count(b"\x89")
            return receive_data(data)

        counted.pings = 0
        return counted

    # Each of the 3 clients is pinged about once a second for 4.5 s.
    assert run(scenario()) >= 9


async def close_code(ws) -> int | None:
    """How the service closed this client's connection (1006: without a close frame); None
    while it still answers an echo."""
    try:
        await request(ws, type="echo", data="x")
        await receive(ws, timeout=2)
        return None
    except ConnectionClosed as closed:
        return closed.rcvd.code if closed.rcvd else 1006


def test_a_shed_request_closes_that_many_clients_with_1012_and_no_more(start_service):
    service = start_service(WSSFLEET_INTERNAL_KEY="the-rebalancer-s-internal-key")
    base = f"http://127.0.0.1:{service.port}/internal/shed"
    key = {"Authorization": "Bearer the-rebalancer-s-internal-key"}

    async def scenario():
        clients = [await open_client(service) for _ in range(10)]
        # Without the key, or through HAProxy (X-Forwarded-For), the path does not exist;
        # nonsense is refused.
        keyless = await asyncio.to_thread(http_status, f"{base}?count=3")
        wrong = await asyncio.to_thread(
            http_status, f"{base}?count=3", Authorization="Bearer guess"
        )
        forwarded = await asyncio.to_thread(
            http_status, f"{base}?count=3", **key, **{"X-Forwarded-For": "1.2.3.4"}
        )
        nonsense = await asyncio.to_thread(http_status, f"{base}?count=0", **key)
        accepted = await asyncio.to_thread(http_status, f"{base}?count=3&seconds=0.5", **key)
        await asyncio.sleep(1.5)
        codes = [await close_code(ws) for ws in clients]
        return (keyless, wrong, forwarded, nonsense, accepted), codes

    answers, codes = run(scenario())
    assert answers == (404, 404, 404, 400, 202)
    assert sorted(codes, key=str) == [1012] * 3 + [None] * 7


@pytest.mark.parametrize("length", [0, 125, 126, 2**16 - 1, 2**16])
def test_a_prebuilt_frame_is_the_frame_websockets_would_send(length):
    from websockets.frames import Frame, Opcode

    from wssfleet.client import text_frame

    payload = ("é" * length).encode()[:length]
    assert text_frame(payload) == Frame(Opcode.TEXT, payload).serialize(mask=False)


def test_a_frozen_redis_is_noticed_by_the_health_check_and_delivery_resumes(
    start_service, redis_server
):
    # A frozen Redis keeps its sockets open: only the bus's own health check can tell.
    first, second = two_services_on_redis(start_service, redis_server)

    async def scenario():
        publisher = await open_client(first, subject="p")
        remote = await open_client(second, "/ws/room", subject="r")
        assert redis_server.process is not None
        os.kill(redis_server.process.pid, signal.SIGSTOP)
        try:
            frozen_at = time.monotonic()
            # A PING after 5 s of silence, dropped 2 s after that (redis_broker.py).
            await asyncio.to_thread(wait_until_redis, second, "disconnected", 12.0)
            noticed = time.monotonic() - frozen_at
            await request(publisher, type="publish", channel="room", data="frozen", id="m1")
            refused = await receive(publisher, timeout=10)
            assert (refused["type"], refused["id"]) == ("error", "m1")
        finally:
            os.kill(redis_server.process.pid, signal.SIGCONT)
        await asyncio.to_thread(wait_until_redis, second, "connected")
        await request(publisher, type="publish", channel="room", data="thawed", id="m2")
        assert (await receive(publisher))["type"] == "published"
        assert (await message(remote))["data"] == "thawed"
        return noticed

    noticed = run(scenario())
    assert noticed <= 9.0, f"a frozen Redis went unnoticed for {noticed:.1f} s"


def test_a_shed_request_via_a_master_closes_only_the_clients_that_came_through_it(
    start_service,
):
    # A planned move of the front door: the old holder's clients only (their TCP peer is
    # that master's address; here every client comes from 127.0.0.1).
    service = start_service(WSSFLEET_INTERNAL_KEY="the-masters-internal-key")
    base = f"http://127.0.0.1:{service.port}/internal/shed"
    key = {"Authorization": "Bearer the-masters-internal-key"}

    async def scenario():
        clients = [await open_client(service) for _ in range(4)]
        bogus = await asyncio.to_thread(http_status, f"{base}?count=9&via=not-an-address", **key)
        elsewhere = await asyncio.to_thread(
            http_status, f"{base}?count=9&seconds=0.2&via=10.9.9.9", **key
        )
        await asyncio.sleep(0.5)
        # None of them came through 10.9.9.9: all still answer.
        for ws in clients:
            await request(ws, type="echo", data="still here")
            assert (await receive(ws, timeout=2))["data"] == "still here"
        through = await asyncio.to_thread(
            http_status, f"{base}?count=9&seconds=0.5&via=127.0.0.1", **key
        )
        await asyncio.sleep(1.5)
        codes = [await close_code(ws) for ws in clients]
        return (bogus, elsewhere, through), codes

    answers, codes = run(scenario())
    assert answers == (400, 202, 202)
    assert codes == [1012] * 4
