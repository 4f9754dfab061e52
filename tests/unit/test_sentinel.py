"""Redis that fails over: a primary, a replica and three Sentinels on loopback (real
redis-server processes, the deploy's users), and service processes that find the primary
through the Sentinels. An acknowledged message is on two nodes, so it survives the primary."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest

from roles.redis import SENTINEL_CLIENT_USER, sentinel_users
from tests.attacks import SENTINEL_ADMIN_COMMANDS
from tests.processes import RedisServer, Replica, free_port, wait_for_port
from tests.unit.clients import open_client, receive, request, run
from tests.unit.helpers import wait_until, wait_until_redis
from wssfleet.broker import Limits
from wssfleet.redis_broker import COMMAND_TIMEOUT, RedisBus

PRIMARY_NAME = "wssfleet"


SENTINEL_PASSWORD = "the-workers-sentinel-password"
PEER_PASSWORD = "the-sentinels-own-password"
GUARD_PASSWORD = "the-promotion-guards-password"


class Sentinels:
    """Three Sentinels watching the primary, quick to decide as the lab's are."""

    def __init__(self, directory: Path, primary: RedisServer, down_after_ms: int = 1000) -> None:
        self.ports = [free_port() for _ in range(3)]
        self.processes = []
        for port in self.ports:
            config = directory / f"sentinel-{port}.conf"
            config.write_text(
                f"port {port}\nbind 127.0.0.1\ndir {directory}\n"
                f"sentinel monitor {PRIMARY_NAME} 127.0.0.1 {primary.port} 2\n"
                f"sentinel down-after-milliseconds {PRIMARY_NAME} {down_after_ms}\n"
                f"sentinel failover-timeout {PRIMARY_NAME} 4000\n"
                f"sentinel auth-user {PRIMARY_NAME} wssfleet-admin\n"
                f"sentinel auth-pass {PRIMARY_NAME} {primary.admin_password}\n"
                # As deployed: the Sentinels' users, the workers' limited to asking where the
                # primary is (roles/redis.py), and each other's password.
                + "".join(
                    f"user {name} {rules}\n"
                    for name, rules in sentinel_users(
                        PEER_PASSWORD, SENTINEL_PASSWORD, GUARD_PASSWORD
                    ).items()
                )
                + f"sentinel sentinel-pass {PEER_PASSWORD}\n"
            )
            self.processes.append(
                subprocess.Popen(
                    [primary.binary, str(config), "--sentinel"], stdout=subprocess.DEVNULL
                )
            )
        for port in self.ports:
            wait_for_port(port)

    @property
    def setting(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.ports)

    def stop(self) -> None:
        for process in self.processes:
            process.terminate()
        for process in self.processes:
            process.wait(timeout=10)


def started_pair(directory: Path, primary_type=RedisServer, replica_type=Replica):
    """A primary and its replica, started, each in a directory of its own."""
    (directory / "primary").mkdir()
    (directory / "replica").mkdir()
    primary = primary_type(directory / "primary")
    primary.start()
    replica = replica_type(directory / "replica", primary)
    replica.start()
    return primary, replica


@pytest.fixture
def replicated(tmp_path):
    primary, replica = started_pair(tmp_path)
    sentinels = Sentinels(tmp_path, primary)
    deadline = time.monotonic() + 10
    while primary.cli("ROLE")[2] == [] and time.monotonic() < deadline:
        time.sleep(0.1)
    yield primary, replica, sentinels
    sentinels.stop()
    replica.stop()
    primary.stop()


def on_sentinels(start_service, primary, sentinels, **settings):
    service = start_service(
        primary.url,
        WSSFLEET_REDIS_SENTINELS=sentinels.setting,
        WSSFLEET_REDIS_SENTINEL_USER=SENTINEL_CLIENT_USER,
        WSSFLEET_REDIS_SENTINEL_PASSWORD=SENTINEL_PASSWORD,
        **settings,
    )
    wait_until_redis(service, "connected")
    return service


def waiting_for_the_replica(start_service, primary, sentinels):
    """A publishing process that waits 200 ms for a replica's confirmation, and a listening
    one: the pair the frozen-replica tests run."""
    publishing = on_sentinels(
        start_service, primary, sentinels, WSSFLEET_REDIS_REPLICA_WAIT_MS="200"
    )
    return publishing, on_sentinels(start_service, primary, sentinels)


@contextlib.contextmanager
def frozen(server):
    """A Redis process stopped (SIGSTOP) for the block: still connected, confirming nothing.
    Yields the moment it froze."""
    os.kill(server.process.pid, signal.SIGSTOP)
    try:
        yield time.monotonic()
    finally:
        os.kill(server.process.pid, signal.SIGCONT)


def test_an_acknowledged_publish_is_on_the_replica_too(replicated, start_service):
    primary, replica, sentinels = replicated
    service = on_sentinels(start_service, primary, sentinels)

    async def scenario():
        ws = await open_client(service, subject="p")
        # The process learns within a second that the primary has a replica.
        await asyncio.sleep(1.5)
        await request(ws, type="publish", channel="room", data="kept", id="m1")
        return await receive(ws)

    answer = run(scenario())
    assert answer["type"] == "published", answer
    # Acknowledged after WAIT: the replica holds it already, no waiting here.
    assert replica.cli("XLEN", "wssfleet:history:room") == 1


def test_a_message_no_replica_confirmed_is_neither_acknowledged_nor_delivered(
    replicated, start_service
):
    primary, replica, sentinels = replicated
    service, listening = waiting_for_the_replica(start_service, primary, sentinels)

    async def scenario():
        ws = await open_client(service, subject="p")
        subscriber = await open_client(listening, "/ws/room", subject="s")
        await asyncio.sleep(1.5)
        with frozen(replica):
            await request(ws, type="publish", channel="room", data="unsure", id="m1")
            refused = await receive(ws)
            # Held by the subscriber's process: delivered now, it could be lost with the
            # primary and leave the subscriber ahead of the history.
            with pytest.raises(TimeoutError):
                await receive(subscriber, timeout=1)
        await asyncio.sleep(0.5)
        # The same message again, same id: stored once, confirmed now, delivered once.
        await request(ws, type="publish", channel="room", data="unsure", id="m1")
        acknowledged = await receive(ws)
        delivered = await receive(subscriber)
        with pytest.raises(TimeoutError):
            await receive(subscriber, timeout=1)
        return refused, acknowledged, delivered

    refused, acknowledged, delivered = run(scenario())
    assert refused["type"] == "error" and refused["id"] == "m1", refused
    assert refused["reason"].startswith("not confirmed: no replica has it yet"), refused
    assert acknowledged["type"] == "published", acknowledged
    assert primary.cli("XLEN", "wssfleet:history:room") == 1
    assert delivered["type"] == "message" and delivered["data"] == "unsure", delivered
    assert delivered["offset"] == acknowledged["offset"]


def test_a_replica_lost_for_good_stops_holding_publishes_within_seconds(replicated, start_service):
    # The primary keeps a silent replica on its list for repl-timeout (60 s): a publish
    # waiting for it all that time would be a publisher locked out for a minute.
    primary, replica, sentinels = replicated
    service, listening = waiting_for_the_replica(start_service, primary, sentinels)

    async def scenario():
        ws = await open_client(service, subject="p")
        subscriber = await open_client(listening, "/ws/room", subject="s")
        await asyncio.sleep(1.5)
        with frozen(replica) as frozen_at:
            answers = []
            while time.monotonic() - frozen_at < 15:
                await request(ws, type="publish", channel="room", data="alone", id="m1")
                answers.append(await receive(ws))
                if answers[-1]["type"] == "published":
                    break
                await asyncio.sleep(0.3)
            took = time.monotonic() - frozen_at
            delivered = await receive(subscriber)
            with pytest.raises(TimeoutError):
                await receive(subscriber, timeout=1)
        return answers, took, delivered

    answers, took, delivered = run(scenario())
    assert answers[-1]["type"] == "published", answers[-3:]
    # Refused aloud while it still counted the replica, then acknowledged (not held).
    assert all(answer["reason"].startswith("not confirmed") for answer in answers[:-1]), answers
    print(f"\nreplica frozen: acknowledged again after {took:.1f} s, {len(answers) - 1} refusals")
    assert took < 15, f"a publish waited {took:.1f} s for a replica that is gone"
    assert delivered["data"] == "alone" and delivered["offset"] == answers[-1]["offset"]


def test_the_primary_lost_for_good_costs_no_acknowledged_message(replicated, start_service):
    primary, replica, sentinels = replicated
    publishing = on_sentinels(start_service, primary, sentinels)
    listening = on_sentinels(start_service, primary, sentinels)

    async def scenario():
        publisher = await open_client(publishing, subject="p")
        subscriber = await open_client(listening, "/ws/room", subject="s")
        await asyncio.sleep(1.5)
        acknowledged: list[int] = []
        refused: list[tuple[float, str]] = []
        killed_at = None
        loop = asyncio.get_running_loop()
        number = 0
        while loop.time() < (killed_at or loop.time()) + 15 and len(acknowledged) < 400:
            if number == 40 and killed_at is None:
                os.kill(primary.process.pid, signal.SIGKILL)
                killed_at = loop.time()
            # The contract: the same message, same id, until it is acknowledged.
            await request(publisher, type="publish", channel="room", data=number, id=number)
            answer = await receive(publisher, timeout=10)
            if answer["type"] == "published":
                acknowledged.append(number)
                if killed_at is not None and len(acknowledged) > 45:
                    break
                number += 1
            else:
                refused.append((loop.time(), answer["reason"]))
                await asyncio.sleep(0.2)
        resumed = loop.time() - killed_at
        received = []
        while len(received) < len(acknowledged):
            frame = await receive(subscriber, timeout=15)
            if frame["type"] == "message":
                received.append(frame["data"])
        return acknowledged, refused, resumed, received

    acknowledged, refused, resumed, received = run(scenario())
    assert acknowledged == list(range(len(acknowledged))) and len(acknowledged) > 45
    # Refused aloud while there was no primary, acknowledged again well within 15 s.
    assert refused and all(
        reason.startswith(("not published", "not confirmed")) for _, reason in refused
    )
    assert resumed < 15, resumed
    # Every acknowledged message reached the subscriber, once and in order, through the new
    # primary (its process caught up from history after it followed the failover).
    assert received == acknowledged
    new_primary = replica.cli("ROLE")
    assert new_primary[0] == b"master", new_primary
    assert replica.cli("XLEN", "wssfleet:history:room") >= len(acknowledged)

    # The old primary comes back as a replica of the new one.
    primary.start()
    # A Sentinel converts a returning primary only once it has reported that role for four
    # publish periods (8 s) after it answers again: about 10-15 s, longer on a busy machine.
    wait_until(lambda: primary.cli("ROLE")[0] == b"slave", 60, "the old primary is a replica", 0.2)


def test_the_workers_sentinel_user_may_only_ask_where_the_primary_is(replicated):
    import redis

    primary, _, sentinels = replicated
    port = sentinels.ports[0]
    with redis.Redis(port=port, username=SENTINEL_CLIENT_USER, password=SENTINEL_PASSWORD) as s:
        assert s.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", PRIMARY_NAME) == [
            b"127.0.0.1",
            str(primary.port).encode(),
        ]
        for command in SENTINEL_ADMIN_COMMANDS:
            with pytest.raises(redis.exceptions.NoPermissionError):
                s.execute_command(*command)
    # Nobody gets in without a user's password; the other Sentinels' password does all.
    with redis.Redis(port=port) as anonymous, pytest.raises(redis.exceptions.AuthenticationError):
        anonymous.execute_command("SENTINEL", "GET-MASTER-ADDR-BY-NAME", PRIMARY_NAME)
    with redis.Redis(port=port, password=PEER_PASSWORD) as peer:
        assert peer.execute_command("SENTINEL", "MASTERS")


def test_a_publish_sent_again_after_a_lost_link_counts_the_new_servers_replicas(redis_server):
    """A publish whose link is lost is tried again on a new connection: after a failover,
    to a new primary that has no replica while the old one is away. Waiting for the replica
    the old server had would refuse it a second later ("not confirmed")."""

    async def scenario() -> tuple[str, float]:
        bus = RedisBus(redis_server.url, Limits(history_size=100, history_ttl=60), "unit")
        bus.start(lambda channel, run: None, lambda channels: None)
        await bus.wait_connected()
        # What the process last knew: one replica in step (the old primary's).
        bus._watching.cancel()
        bus.replicas = 1
        loop = asyncio.get_running_loop()
        with frozen(redis_server):
            started = loop.time()
            publishing = asyncio.ensure_future(
                bus.publish("room", '{"data":1,"offset":"', "p", "m1")
            )
            # The first try goes unanswered for COMMAND_TIMEOUT; the second finds the server
            # answering again, with no replica.
            await asyncio.sleep(COMMAND_TIMEOUT + 0.5)
        try:
            offset = await publishing
        finally:
            await bus.stop()
        return offset, loop.time() - started

    offset, took = run(scenario())
    # Stored once, and acknowledged with its place in the history.
    [(entry_id, _)] = redis_server.cli("XRANGE", "wssfleet:history:room", "-", "+")
    milliseconds, sequence = offset.partition(":")[2].split("-")
    assert f"{milliseconds}-{int(sequence)}" == entry_id.decode(), (offset, entry_id)
    assert took < COMMAND_TIMEOUT + 1.0, took


def test_a_replica_that_lets_a_wait_run_out_is_not_waited_for_until_it_catches_up(
    replicated, start_service
):
    """The primary counts a silent replica for seconds more (its lag is in whole seconds):
    publishes waiting for it all that time were refused one after the other. The first one
    it fails is enough; it counts again once it holds what the primary held then."""
    primary, replica, sentinels = replicated
    service, _ = waiting_for_the_replica(start_service, primary, sentinels)

    async def publish(ws, message_id: str) -> dict:
        await request(ws, type="publish", channel="room", data=message_id, id=message_id)
        return await receive(ws)

    async def scenario():
        ws = await open_client(service, subject="p")
        await asyncio.sleep(1.5)
        with frozen(replica):
            missed = await publish(ws, "m1")
            alone = await publish(ws, "m2")
        # Back and caught up: the process counts it again (its next look, within a second),
        # and waits for it again.
        await asyncio.sleep(2.5)
        with frozen(replica):
            waited_for = await publish(ws, "m3")
        return missed, alone, waited_for

    missed, alone, waited_for = run(scenario())
    assert missed["type"] == "error" and missed["reason"].startswith("not confirmed"), missed
    assert alone["type"] == "published", alone
    assert waited_for["type"] == "error", waited_for
    assert waited_for["reason"].startswith("not confirmed"), waited_for
