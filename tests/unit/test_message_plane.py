"""The message plane on loopback: offsets, history and recovery, acknowledged publishes and
per-channel routing, with the in-memory bus (a process alone) and with a real redis-server
between two processes."""

from __future__ import annotations

import asyncio
import json
import signal

import pytest
import redis
from websockets.asyncio.client import ClientConnection

from tests.attacks import REDIS_ADMIN_COMMANDS
from tests.unit.clients import (
    expect_nothing,
    message,
    open_client,
    receive,
    request,
    run,
    subscribed,
)
from tests.unit.helpers import two_services_on_redis, wait_until_redis
from wssfleet.broker import Limits
from wssfleet.hub import publish_key
from wssfleet.redis_broker import RedisBus

FAST = {"WSSFLEET_MESSAGES_PER_SECOND": "100000"}


@pytest.fixture(params=["memory", "redis"])
def plane(request, start_service, tmp_path):
    """(publishing process, subscribing process): the same process without Redis, two
    processes joined by a real redis-server with it."""

    def start(**overrides: str):
        settings = {**FAST, **overrides}
        if request.param == "memory":
            alone = start_service(**settings)
            return alone, alone
        redis_server = request.getfixturevalue("redis_server")
        first = start_service(redis_server.url, **settings)
        second = start_service(redis_server.url, **settings)
        wait_until_redis(first, "connected")
        wait_until_redis(second, "connected")
        return first, second

    return start


async def publish(ws: ClientConnection, data, message_id: str) -> str:
    """Publish with an id; the stored message's offset (other frames in between are kept)."""
    await request(ws, type="publish", channel="room", data=data, id=message_id)
    while True:
        frame = await receive(ws)
        if frame["type"] == "published" and frame["id"] == message_id:
            return frame["offset"]
        assert frame["type"] == "message", frame


async def subscribe_since(ws: ClientConnection, since: str) -> dict:
    await request(ws, type="subscribe", channel="room", since=since)
    return await receive(ws)


def test_offsets_increase_and_a_subscribe_answers_the_latest(plane):
    publisher_process, subscriber_process = plane()

    async def scenario():
        publisher = await open_client(publisher_process, subject="pub")
        listener = await open_client(subscriber_process, subject="listener")
        assert await subscribed(listener, "room") == ""
        offsets = [await publish(publisher, n, f"m{n}") for n in range(5)]
        assert offsets == sorted(offsets) and len(set(offsets)) == 5
        received = [await message(listener) for _ in range(5)]
        assert [frame["data"] for frame in received] == list(range(5))
        newcomer = await open_client(subscriber_process, subject="newcomer")
        assert await subscribed(newcomer, "room") == offsets[-1]
        await expect_nothing(newcomer)

    run(scenario())


def test_since_sends_what_was_missed_in_order_then_the_live_messages(plane):
    publisher_process, subscriber_process = plane()

    async def scenario():
        publisher = await open_client(publisher_process, subject="pub")
        first = [await publish(publisher, n, f"m{n}") for n in range(3)]
        missed = [await publish(publisher, n, f"m{n}") for n in range(3, 8)]
        path = f"/ws/room?since={first[-1]}"
        # The same recovery through the path's ?since= and through a subscribe frame.
        client = await open_client(subscriber_process, path, subject="back")
        again = await open_client(subscriber_process, subject="again")
        answer = await subscribe_since(again, first[-1])
        assert answer == {"type": "subscribed", "channel": "room", "recovered": True, "missed": 5}
        for ws in (client, again):
            frames = [await receive(ws) for _ in range(5)]
            assert [frame["data"] for frame in frames] == list(range(3, 8))
            assert [frame["offset"] for frame in frames] == missed
        live = await publish(publisher, 8, "m8")
        for ws in (client, again):
            frame = await receive(ws)
            assert (frame["data"], frame["offset"]) == (8, live)
            await expect_nothing(ws)

    run(scenario())


def test_an_offset_the_history_no_longer_reaches_is_not_recovered(plane):
    publisher_process, subscriber_process = plane(WSSFLEET_HISTORY_SIZE="3")

    async def scenario():
        publisher = await open_client(publisher_process, subject="pub")
        offsets = [await publish(publisher, n, f"m{n}") for n in range(6)]
        client = await open_client(subscriber_process, subject="late")
        answer = await subscribe_since(client, offsets[0])
        assert answer == {
            "type": "subscribed",
            "channel": "room",
            "recovered": False,
            "offset": offsets[-1],
        }
        await expect_nothing(client)
        # Having seen the channel empty does not help once the history was trimmed.
        assert (await subscribe_since(await open_client(subscriber_process), ""))[
            "recovered"
        ] is False
        # The oldest offset still in the history does recover what follows it.
        other = await open_client(subscriber_process, subject="in-time")
        answer = await subscribe_since(other, offsets[3])
        assert (answer["recovered"], answer["missed"]) == (True, 2)
        assert [(await message(other))["data"] for _ in range(2)] == [4, 5]
        await publish(publisher, 6, "m6")
        assert (await message(client))["data"] == 6

    run(scenario())


def test_unknown_offsets_and_empty_channels_are_not_recovered(plane):
    publisher_process, subscriber_process = plane()

    async def scenario():
        client = await open_client(subscriber_process, subject="c")
        # No history at all: nothing to recover from, nothing claimed.
        answer = await subscribe_since(client, "0badc0de:1700000000000-000000")
        assert answer == {"type": "subscribed", "channel": "room", "recovered": False, "offset": ""}
        publisher = await open_client(publisher_process, subject="pub")
        latest = await publish(publisher, "x", "m0")
        assert (await message(client))["data"] == "x"
        beyond = latest.rsplit("-", 1)[0] + "-999999"
        for unknown in ("0badc0de:1700000000000-000000", "not an offset", beyond):
            other = await open_client(subscriber_process, subject="o")
            answer = await subscribe_since(other, unknown)
            assert (answer["recovered"], answer.get("offset")) == (False, latest), (unknown, answer)
        # A client that saw the channel empty ("offset": "") asks for all of it with since "".
        empty_then = await open_client(subscriber_process, subject="e")
        answer = await subscribe_since(empty_then, "")
        assert answer == {"type": "subscribed", "channel": "room", "recovered": True, "missed": 1}
        assert (await message(empty_then))["data"] == "x"
        await request(client, type="subscribe", channel="other", since=5)
        refused = await receive(client)
        assert refused["type"] == "error" and "since" in refused["reason"]

    run(scenario())


def test_a_retried_publish_is_stored_and_delivered_once(plane):
    publisher_process, subscriber_process = plane()

    async def scenario():
        publisher = await open_client(publisher_process, subject="pub")
        listener = await open_client(subscriber_process, "/ws/room", subject="listener")
        first = await publish(publisher, "once", "same-id")
        assert await publish(publisher, "once", "same-id") == first
        assert (await message(listener))["data"] == "once"
        await expect_nothing(listener, 0.5)
        # The id is the publisher's own: another user's equal id is another message.
        someone = await open_client(publisher_process, subject="someone")
        assert await publish(someone, "mine", "same-id") != first

    run(scenario())


def test_resubscribing_with_since_during_a_stream_of_publishes_loses_and_repeats_nothing(plane):
    publisher_process, subscriber_process = plane()
    total = 300

    async def scenario():
        publisher = await open_client(publisher_process, subject="pub")
        acked: list[int] = []

        async def publish_all():
            for n in range(total):
                await publish(publisher, n, f"m{n}")
                acked.append(n)

        # Unread frames never pause its reading: a paused reader would not see the server's
        # answer to its close, and each hop would wait out the close timeout.
        hopper = {"subject": "hopper", "max_queue": None}
        client = await open_client(subscriber_process, **hopper)
        offset = await subscribed(client, "room")
        publishing = asyncio.create_task(publish_all())
        seen: list[int] = []
        while len(seen) < total:
            # Read a few, then drop the connection and come back with since.
            for _ in range(7):
                if len(seen) == total:
                    break
                frame = await message_with_offset(client)
                seen.append(frame["data"])
                offset = frame["offset"]
            await client.close()
            client = await open_client(subscriber_process, **hopper)
            answer = await subscribe_since(client, offset)
            assert answer["recovered"] is True, answer
        await publishing
        assert seen == list(range(total)) == acked
        await expect_nothing(client)

    run(scenario())


async def message_with_offset(ws: ClientConnection) -> dict:
    frame = await receive(ws)
    assert frame["type"] == "message", frame
    return frame


def test_a_redis_restart_between_two_publishes_loses_neither(start_service, redis_server):
    # The bug this guards: the first command over a pooled connection that the restarted
    # server had closed failed, and the message was dropped in silence.
    first, second = two_services_on_redis(start_service, redis_server)

    async def scenario():
        publisher = await open_client(first, subject="pub")
        listener = await open_client(second, "/ws/room", subject="listener")
        await publish(publisher, "before", "m1")
        assert (await message(listener))["data"] == "before"
        redis_server.stop()
        redis_server.start()
        await asyncio.to_thread(wait_until_redis, second, "connected")
        await asyncio.to_thread(wait_until_redis, first, "connected")
        await publish(publisher, "after", "m2")
        assert (await message(listener))["data"] == "after"

    run(scenario())


def test_a_process_catches_up_on_what_its_bus_connection_missed(start_service, redis_server):
    first, second = two_services_on_redis(start_service, redis_server, **FAST)
    total = 400

    async def scenario():
        publisher = await open_client(first, subject="pub")
        listener = await open_client(second, "/ws/room", subject="listener")

        async def publish_all():
            for n in range(total):
                await publish(publisher, n, f"m{n}")

        async def cut_the_bus():
            # The listener's process loses its pub/sub connection again and again while
            # messages keep being stored; the publisher's process is untouched.
            for _ in range(5):
                await asyncio.sleep(0.15)
                await asyncio.to_thread(redis_server.cli, "CLIENT", "KILL", "TYPE", "pubsub")

        publishing = asyncio.create_task(publish_all())
        await cut_the_bus()
        await publishing
        seen = [(await message(listener, timeout=10))["data"] for _ in range(total)]
        assert seen == list(range(total))
        await expect_nothing(listener)

    run(scenario())


def test_a_process_subscribes_only_to_the_channels_its_clients_are_on(start_service, redis_server):
    first, second = two_services_on_redis(start_service, redis_server, **FAST)

    async def scenario():
        here = await open_client(first, "/ws/here", subject="a")
        there = await open_client(second, "/ws/there", subject="b")
        for n in range(20):
            await request(here, type="publish", channel="here", data=n)
        assert [(await message(here))["data"] for _ in range(20)] == list(range(20))
        await expect_nothing(there)
        return first.health(), second.health()

    first_health, second_health = run(scenario())
    assert (first_health["bus_messages"], first_health["channels"]) == (20, 1)
    assert (second_health["bus_messages"], second_health["channels"]) == (0, 1)


def test_publishes_without_redis_are_refused_with_their_id_and_retries_land_once(
    start_service, redis_server
):
    service = start_service(redis_server.url)
    wait_until_redis(service, "connected")

    async def scenario():
        publisher = await open_client(service, "/ws/room", subject="pub")
        redis_server.stop()
        await asyncio.to_thread(wait_until_redis, service, "disconnected")
        await request(publisher, type="publish", channel="room", data="x", id=7)
        refused = await receive(publisher, timeout=10)
        assert (refused["type"], refused["id"]) == ("error", 7)
        await request(publisher, type="publish", channel="room", data="no id")
        assert (await receive(publisher, timeout=10))["type"] == "error"
        redis_server.start()
        await asyncio.to_thread(wait_until_redis, service, "connected")
        await request(publisher, type="publish", channel="room", data="x", id=7)
        frames = {frame["type"]: frame for frame in [await receive(publisher) for _ in range(2)]}
        assert frames["published"]["id"] == 7
        assert frames["message"]["data"] == "x"
        assert frames["message"]["offset"] == frames["published"]["offset"]
        await expect_nothing(publisher)

    run(scenario())


def test_a_flushed_history_starts_a_new_epoch_and_old_offsets_are_not_recovered(
    start_service, redis_server
):
    service = start_service(redis_server.url)
    wait_until_redis(service, "connected")

    async def scenario():
        publisher = await open_client(service, subject="pub")
        old = await publish(publisher, "old", "m1")
        await asyncio.to_thread(redis_server.cli, "FLUSHDB")
        new = await publish(publisher, "new", "m2")
        assert new.split(":")[0] != old.split(":")[0]
        client = await open_client(service, subject="c")
        answer = await subscribe_since(client, old)
        assert (answer["recovered"], answer["offset"]) == (False, new)

    run(scenario())


@pytest.mark.parametrize(
    "command",
    [
        ("FLUSHDB",),
        ("FLUSHALL",),
        ("KEYS", "*"),
        ("CLIENT", "LIST"),
        ("CLIENT", "KILL", "TYPE", "normal"),
        ("SHUTDOWN", "NOSAVE"),
        ("CONFIG", "GET", "*"),
        ("DEL", "wssfleet:history:room"),
        ("XTRIM", "wssfleet:history:room", "MAXLEN", "0"),
        ("EVAL", "return 1", "0"),
        ("SCRIPT", "LOAD", "while true do end"),
        ("EVALSHA", "e0e1f9fabfc9d4800c877a703b823ac0578ff8db", "0"),
        ("FUNCTION", "LOAD", "#!lua name=mine\nredis.register_function('f', function() end)"),
        ("FUNCTION", "FLUSH"),
        ("FUNCTION", "DELETE", "wssfleet"),
        ("GET", "someone-elses:key"),
        ("SET", "someone-elses:key", "x"),
        ("PUBLISH", "someone-elses-channel", "x"),
    ],
    ids=lambda command: " ".join(command[:2]),
)
def test_the_workers_redis_user_may_do_nothing_but_the_message_plane(redis_server, command):
    with pytest.raises(redis.exceptions.NoPermissionError):
        redis_server.cli(*command, as_worker=True)
    assert redis_server.cli("PING", as_worker=True)


def test_a_process_that_finds_its_history_gone_after_an_outage_says_so(start_service, redis_server):
    first, second = two_services_on_redis(start_service, redis_server, **FAST)

    async def scenario():
        publisher = await open_client(first, subject="pub")
        listener = await open_client(second, "/ws/room", subject="listener")
        await publish(publisher, "before", "m1")
        assert (await message(listener))["data"] == "before"
        # The listener's process loses its bus connection while the history is flushed.
        await asyncio.to_thread(redis_server.cli, "FLUSHDB")
        await asyncio.to_thread(redis_server.cli, "CLIENT", "KILL", "TYPE", "pubsub")
        notice = await receive(listener, timeout=10)
        assert (notice["type"], notice["recovered"]) == ("subscribed", False), notice
        # Live delivery goes on from the new history.
        await publish(publisher, "after", "m2")
        assert (await message(listener))["data"] == "after"

    run(scenario())


def test_redis_exporters_user_may_look_but_not_touch(redis_server):
    from roles.redis import MONITOR_REDIS_USER

    with redis.Redis(
        port=redis_server.port, username=MONITOR_REDIS_USER, password=redis_server.monitor_password
    ) as monitor:
        assert monitor.info("server")["tcp_port"] == redis_server.port
        assert monitor.client_setname("redis_exporter")
        for command in (
            ("GET", "wssfleet:history-state:room"),
            ("XRANGE", "wssfleet:history:room", "-", "+"),
            ("SUBSCRIBE", "wssfleet:channel:room"),
            ("FLUSHDB",),
            ("KEYS", "*"),
            ("CONFIG", "SET", "maxmemory", "1"),
            # It answered masterauth, the replication password (issue #33).
            ("CONFIG", "GET", "masterauth"),
            ("CLIENT", "KILL", "TYPE", "normal"),
        ):
            with pytest.raises(redis.exceptions.NoPermissionError):
                monitor.execute_command(*command)
        # What its alerts need of the memory budget is in INFO.
        assert monitor.info("memory")["maxmemory"] >= 0


@pytest.mark.parametrize("command", REDIS_ADMIN_COMMANDS, ids=lambda command: " ".join(command[:2]))
def test_the_workers_redis_user_is_refused_every_admin_command(redis_server, command):
    with pytest.raises(redis.exceptions.ResponseError) as refused:
        redis_server.cli(*command, as_worker=True)
    # Refused for the user's rights (DEBUG is also off for every remote client).
    if command[0] == "DEBUG":
        assert str(refused.value).startswith("DEBUG command not allowed"), refused.value
    else:
        assert isinstance(refused.value, redis.exceptions.NoPermissionError), refused.value


@pytest.mark.parametrize("message_id", ["m1", "é", 'a"b\\c\n', "\U0001f600", 0, -7, 2**70])
def test_a_publish_key_is_the_ids_json_text_as_earlier_releases_stored_it(message_id):
    assert publish_key(message_id) == json.dumps(message_id)


def test_what_arrives_in_one_read_from_redis_is_delivered_as_one_run_in_order(redis_server):
    """Messages the bus reads from Redis together reach the hub as one run a channel, so that
    each client gets them in one write (Hub._fan_out)."""

    async def scenario():
        runs: list[list[tuple[str, str]]] = []
        bus = RedisBus(redis_server.url, Limits(history_size=100, history_ttl=60), "unit")
        bus.start(lambda channel, run: runs.append(run), lambda channels: None)
        await bus.wait_connected()
        bus.want("room")
        await bus.ready("room")
        subscriber = bus._subscriber
        assert subscriber is not None and subscriber._transport is not None
        # Held back in the socket, as behind a busy process, until all twenty are there.
        subscriber._transport.pause_reading()
        offsets = [await bus.publish("room", f'{{"n":{n},"offset":"', "p", None) for n in range(20)]
        await asyncio.sleep(0.2)
        subscriber._transport.resume_reading()
        while sum(len(run) for run in runs) < 20:
            await asyncio.sleep(0.01)
        await bus.stop()
        return runs, offsets

    runs, offsets = run(scenario())
    assert len(runs) == 1, [len(run) for run in runs]
    assert [offset for offset, _ in runs[0]] == offsets
    assert [json.loads(frame)["n"] for _, frame in runs[0]] == list(range(20))


def test_a_run_from_one_read_reaches_a_subscriber_once_and_in_order(start_service, redis_server):
    """A process frozen while twenty messages are published hears them in one read: its live
    subscriber gets each once and in order, and a client recovering from before them after
    that gets the same twenty, none twice."""
    first, second = two_services_on_redis(start_service, redis_server, **FAST)

    async def scenario():
        publisher = await open_client(first, subject="p")
        live = await open_client(second, "/ws/room", subject="live")
        first_offset = await publish(publisher, -1, "m-1")
        assert (await message(live))["data"] == -1
        second.process.send_signal(signal.SIGSTOP)
        try:
            for n in range(20):
                await publish(publisher, n, f"m{n}")
        finally:
            second.process.send_signal(signal.SIGCONT)
        recovering = await open_client(second, subject="recovering")
        await request(recovering, type="subscribe", channel="room", since=first_offset)
        assert (await receive(recovering))["type"] == "subscribed"
        heard_live = [(await message(live))["data"] for _ in range(20)]
        heard_recovering = [(await message(recovering))["data"] for _ in range(20)]
        await expect_nothing(live)
        await expect_nothing(recovering)
        return heard_live, heard_recovering

    heard_live, heard_recovering = run(scenario())
    assert heard_live == list(range(20))
    assert heard_recovering == list(range(20))
