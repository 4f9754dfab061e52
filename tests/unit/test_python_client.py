"""The shipped Python client (clients/python/wssfleet_client.py) under faults, on loopback:
two service processes on one real redis-server, as two masters' paths in DNS mode would
lead to two instances. A process killed, one frozen (a dead path), a publisher's process
killed mid-stream, a token refused: each message acknowledged is received once, in order."""

from __future__ import annotations

import asyncio
import os
import signal

import pytest
from wssfleet_client import Client, ClientClosed, PublishRefused, SubscriptionRefused

from tests.unit.clients import run
from tests.unit.helpers import ORIGIN, token, two_services_on_redis

FAST = {"WSSFLEET_MESSAGES_PER_SECOND": "100000", "WSSFLEET_HEARTBEAT_INTERVAL": "1"}


def client(*services, **options) -> Client:
    urls = [f"{service.url}/ws" for service in services]
    return Client(urls, lambda: token("app"), origin=ORIGIN, first_delay=0.2, **options)


async def publish_numbers(publisher: Client, count: int, interval: float) -> list[str]:
    offsets = []
    for number in range(count):
        offsets.append(await publisher.publish("room", number, id=f"n-{number}"))
        await asyncio.sleep(interval)
    return offsets


async def receive_numbers(subscription, count: int) -> list[int]:
    received = []
    while len(received) < count:
        message = await subscription.get(timeout=20)
        assert not message.gap, "history reported lost"
        received.append(message.data)
    return received


@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_a_subscriber_whose_process_is_lost_gets_every_message_once_in_order(
    start_service, redis_server, fault
):
    lost, kept = two_services_on_redis(start_service, redis_server, **FAST)

    async def scenario():
        events = []
        async with (
            client(lost, kept, on_event=lambda kind, _: events.append(kind)) as subscriber,
            client(kept) as publisher,
        ):
            subscription = subscriber.subscribe("room")
            while not subscriber.connected:
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            publishing = asyncio.create_task(publish_numbers(publisher, 60, 0.1))
            await asyncio.sleep(1.5)
            if fault == "killed":
                lost.process.kill()
            else:
                # No FIN, no close frame: only the heartbeat's silence tells.
                os.kill(lost.process.pid, signal.SIGSTOP)
            try:
                received = await receive_numbers(subscription, 60)
            finally:
                if fault == "frozen":
                    os.kill(lost.process.pid, signal.SIGCONT)
            offsets = await publishing
            return received, offsets, events

    received, offsets, events = run(scenario())
    assert received == list(range(60))
    assert len(set(offsets)) == 60
    assert events.count("connected") == 2 and "closed" in events, events


def test_a_publisher_whose_process_is_killed_resends_and_each_message_is_stored_once(
    start_service, redis_server
):
    lost, kept = two_services_on_redis(start_service, redis_server, **FAST)

    async def scenario():
        async with client(kept) as subscriber, client(lost, kept) as publisher:
            subscription = subscriber.subscribe("room")
            while not (subscriber.connected and publisher.connected):
                await asyncio.sleep(0.05)
            await asyncio.sleep(0.3)
            publishing = asyncio.create_task(publish_numbers(publisher, 60, 0.05))
            await asyncio.sleep(1)
            lost.process.kill()
            offsets = await asyncio.wait_for(publishing, 30)
            received = await receive_numbers(subscription, 60)
            with pytest.raises(TimeoutError):
                await subscription.get(timeout=1)
            return received, offsets

    received, offsets = run(scenario())
    assert received == list(range(60)), received
    assert len(set(offsets)) == 60


def test_a_refused_token_stops_the_client_and_says_why(start_service):
    service = start_service()

    async def scenario():
        refused = Client(f"{service.url}/ws", "not-a-token", origin=ORIGIN)
        async with refused:
            with pytest.raises(ClientClosed) as closed:
                await asyncio.wait_for(refused.publish("room", "x"), 10)
        return closed.value

    closed = run(scenario())
    assert "handshake refused: HTTP 401" in str(closed), closed


def test_the_token_is_renewed_on_the_open_connection_and_refusals_are_said(start_service):
    """A 3 s token renewed before it expires: the connection outlives it (no reconnect, no
    4001). A subscribe and a publish the token does not allow fail at once with the reason,
    instead of being resent every second forever; a fixed token that expires stops."""
    service = start_service()
    issued = iter([token("app", ttl=3, channels=("room",))])
    events: list[str] = []

    def fetch() -> str:
        return next(issued, token("app", ttl=120, channels=("room",)))

    async def scenario():
        renewing = Client(
            f"{service.url}/ws",
            fetch,
            origin=ORIGIN,
            on_event=lambda kind, detail: events.append(f"{kind} {detail.get('code', '')}".strip()),
        )
        async with renewing:
            forbidden = renewing.subscribe("forbidden")
            with pytest.raises(SubscriptionRefused, match="not allowed"):
                await forbidden.get(timeout=5)
            with pytest.raises(PublishRefused, match="not allowed"):
                await asyncio.wait_for(renewing.publish("forbidden", "x"), 5)
            room = renewing.subscribe("room")
            await asyncio.sleep(5)  # past the first token's exp
            offset = await asyncio.wait_for(renewing.publish("room", "still here"), 5)
            assert (await room.get(timeout=5)).data == "still here"
        fixed = Client(f"{service.url}/ws", token("app", ttl=2), origin=ORIGIN)
        async with fixed:
            with pytest.raises(ClientClosed) as closed:
                await asyncio.wait_for(fixed.subscribe("room").get(), 10)
        return offset, closed.value

    offset, closed = run(scenario())
    assert offset
    # One connection, closed by the application only.
    assert events == ["connected", "closed 1000"], events
    assert closed.code == 4001, closed


def test_an_idle_path_is_probed_by_tcp_keepalive_and_unacknowledged_data_ends_it():
    """A moved front door answers a probe with a reset; a path that answers nothing is dead
    after two probes: the socket options that make it so."""
    import socket

    from wssfleet_client import probe_path

    with (
        socket.create_server(("127.0.0.1", 0)) as server,
        socket.create_connection(server.getsockname()) as sock,
    ):
        probe_path(sock, 1.0)
        assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPIDLE) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPINTVL) == 1
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_KEEPCNT) == 2
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_USER_TIMEOUT) == 3000
    # No socket to probe (another transport): nothing to do, nothing raised.
    probe_path(None, 1.0)
