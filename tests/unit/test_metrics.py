"""The service's Prometheus metrics: what clients did shows up, counted exactly, on the private
metrics port, which serves nothing else."""

from __future__ import annotations

import asyncio
import signal
import socket
import time
import urllib.error
import urllib.request

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed, InvalidStatus

from tests.unit.clients import message, open_client, receive, request, run, subscribed
from tests.unit.helpers import token, wait_until
from wssfleet import config


def counter(samples, name: str, **labels: str) -> float:
    return samples[(name, tuple(sorted(labels.items())))]


def test_every_kind_of_traffic_is_counted_exactly(start_service):
    service = start_service(metrics=True, WSSFLEET_MESSAGES_PER_SECOND="10")

    async def scenario():
        alice = await open_client(service, "/ws/room", subject="alice")
        bob = await open_client(service, "/ws/room", subject="bob")
        assert (await subscribed(bob, "other")) == ""
        for n in range(3):
            await request(alice, type="publish", channel="room", data=n)
        for reader in (alice, bob):
            assert [(await message(reader))["data"] for _ in range(3)] == [0, 1, 2]
        await request(bob, type="echo", data="hi")
        assert (await receive(bob))["type"] == "echo"
        await request(bob, type="nonsense")
        assert (await receive(bob))["type"] == "error"
        # A token for lobby only: a subscribe elsewhere is refused, the connection stays.
        limited = await open_client(service, token_text=token("carol", channels=("lobby",)))
        await request(limited, type="subscribe", channel="room")
        assert (await receive(limited))["reason"] == "not allowed"
        # Past the rate limit (10 a second, a second's burst): some echoes are dropped.
        for n in range(15):
            await request(limited, type="echo", data=n)
        answers = [(await receive(limited))["type"] for _ in range(15)]
        with pytest.raises(InvalidStatus):
            await connect(f"{service.url}/ws?token=forged")
        with pytest.raises(InvalidStatus):
            await connect(f"{service.url}/ws?token={token()}", origin="https://evil.test")
        binary = await open_client(service, subject="dave")
        await binary.send(b"\x00")
        with pytest.raises(ConnectionClosed):
            await receive(binary)
        return answers.count("error")

    rate_limited = run(scenario())
    samples = service.metrics()
    assert counter(samples, "wssfleet_connections_opened_total") == 4
    assert counter(samples, "wssfleet_handshakes_refused_total", reason="token") == 1
    assert counter(samples, "wssfleet_handshakes_refused_total", reason="origin") == 1
    assert counter(samples, "wssfleet_messages_received_total", type="publish") == 3
    assert counter(samples, "wssfleet_messages_received_total", type="subscribe") == 2
    # A message past the rate limit is dropped before it is parsed: no type is counted for it.
    assert counter(samples, "wssfleet_messages_received_total", type="echo") == 16 - rate_limited
    assert counter(samples, "wssfleet_messages_received_total", type="invalid") == 1
    # Three messages to two subscribers; four welcomes; room twice and other once subscribed.
    assert counter(samples, "wssfleet_messages_delivered_total", type="message") == 6
    assert counter(samples, "wssfleet_messages_delivered_total", type="welcome") == 4
    assert counter(samples, "wssfleet_messages_delivered_total", type="subscribed") == 3
    echoed = 1 + 15 - rate_limited
    assert counter(samples, "wssfleet_messages_delivered_total", type="echo") == echoed
    assert rate_limited > 0
    assert counter(samples, "wssfleet_drops_total", cause="rate_limit") == rate_limited
    assert counter(samples, "wssfleet_drops_total", cause="unsupported") == 1
    assert counter(samples, "wssfleet_requests_refused_total", reason="not_allowed") == 1
    assert counter(samples, "wssfleet_connections") == 0
    assert counter(samples, "wssfleet_bus_connected") == 1
    assert counter(samples, "process_resident_memory_bytes") > 0


def test_live_gauges_and_a_too_big_message(start_service):
    service = start_service(metrics=True, WSSFLEET_MAX_MESSAGE_BYTES="1000")

    async def scenario():
        holders = [await open_client(service, f"/ws/room{n}") for n in range(3)]
        live = service.metrics()
        big = await open_client(service, subject="big")
        await request(big, type="echo", data="x" * 2000)
        with pytest.raises(ConnectionClosed) as closed:
            await receive(big)
        assert closed.value.rcvd.code == 1009
        return live, len(holders)

    live, holders = run(scenario())
    assert counter(live, "wssfleet_connections") == holders
    assert counter(live, "wssfleet_channels") == holders
    wait_until(
        lambda: counter(service.metrics(), "wssfleet_drops_total", cause="too_big") == 1,
        5,
        "the oversized frame's drop is counted once",
    )


def test_drain_closes_and_recoveries_are_counted(start_service, redis_server):
    service = start_service(redis_server.url, metrics=True, WSSFLEET_DRAIN_SECONDS="1")

    async def scenario():
        publisher = await open_client(service, subject="pub")
        for n in range(2):
            await request(publisher, type="publish", channel="room", data=n, id=n)
            assert (await receive(publisher))["type"] == "published"
        # since= (empty): the whole history, recovered; an offset of another epoch: not.
        everything = await open_client(service, "/ws/room?since=", subscribed=False)
        assert (await receive(everything))["missed"] == 2
        elsewhere = "0:0000000000001-000000"
        stranger = await open_client(service, f"/ws/room?since={elsewhere}", subscribed=False)
        assert (await receive(stranger))["recovered"] is False
        service.process.send_signal(signal.SIGUSR1)
        # The drain closes each client while it is still there to be closed.
        for ws in (publisher, everything, stranger):
            await asyncio.wait_for(ws.wait_closed(), 10)
        return [ws.close_code for ws in (publisher, everything, stranger)]

    assert run(scenario()) == [1012, 1012, 1012]

    def once_drained():
        samples = service.metrics()
        return samples if counter(samples, "wssfleet_closes_total", reason="drain") == 3 else None

    # The drain (1 s) closes the three clients.
    samples = wait_until(once_drained, 10, "the drain's three closes are counted")
    assert counter(samples, "wssfleet_recoveries_total", result="recovered") == 1
    assert counter(samples, "wssfleet_recovered_messages_total") == 2
    assert counter(samples, "wssfleet_recoveries_total", result="not_recovered") == 1
    assert counter(samples, "wssfleet_closes_total", reason="drain") == 3
    assert counter(samples, "wssfleet_draining") == 1
    assert counter(samples, "wssfleet_bus_connected") == 1


def test_a_subscribe_to_a_channel_live_here_reads_no_history(start_service, redis_server):
    """The second subscriber of a channel this process serves begins at the last offset the
    process delivered, without a read from Redis, and misses nothing after it."""
    service = start_service(redis_server.url, metrics=True)

    async def scenario():
        first = await open_client(service, subject="first")
        assert (await subscribed(first, "room")) == ""
        await request(first, type="publish", channel="room", data="before", id=1)
        # The message and the publish's answer, in either order.
        delivered = {frame["type"]: frame for frame in [await receive(first) for _ in "ab"]}
        second = await open_client(service, subject="second")
        offset = await subscribed(second, "room")
        await request(first, type="publish", channel="room", data="after", id=2)
        answers = {frame["type"]: frame for frame in [await receive(first) for _ in "ab"]}
        after = [answers["message"], await receive(second)]
        return delivered["message"]["offset"], offset, after

    delivered, offset, after = run(scenario())
    assert offset == delivered
    assert [frame["data"] for frame in after] == ["after", "after"]
    assert after[0]["offset"] == after[1]["offset"] != offset
    samples = service.metrics()
    assert counter(samples, "wssfleet_joins_live_total") == 1


def test_the_metrics_port_serves_metrics_only(start_service):
    service = start_service(metrics=True)
    with pytest.raises(urllib.error.HTTPError) as missing:
        urllib.request.urlopen(f"http://127.0.0.1:{service.metrics_port}/healthz", timeout=5)
    assert missing.value.code == 404

    async def upgrade():
        with pytest.raises(InvalidStatus) as refused:
            await connect(f"ws://127.0.0.1:{service.metrics_port}/metrics?token={token()}")
        return refused.value.response.status_code

    assert run(upgrade()) == 200


def test_a_metrics_port_outside_the_range_is_refused_naming_the_variable():
    environment = {
        "WSSFLEET_JWT_SECRET": "x" * 40,
        "WSSFLEET_PORT": "65000",
        "WSSFLEET_METRICS_PORT_OFFSET": "1000",
    }
    with pytest.raises(config.ConfigError, match="WSSFLEET_METRICS_PORT_OFFSET=1000"):
        config.load(environment)


def test_a_client_that_keeps_its_connection_open_does_not_hold_a_stopping_process(
    start_service,
):
    # A rollout restarts every instance: none may wait the library's default 10 s on a
    # metrics client that leaves its connection open (here one that asked for an upgrade,
    # got the metrics and went quiet).
    service = start_service(metrics=True)
    quiet = socket.create_connection(("127.0.0.1", service.metrics_port), timeout=5)
    quiet.sendall(
        b"GET /metrics HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
        b"Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    )
    assert quiet.recv(12) == b"HTTP/1.1 200"
    started = time.monotonic()
    service.stop()
    took = time.monotonic() - started
    quiet.close()
    assert took < 5, f"the process took {took:.1f} s to stop with a quiet client connected"
