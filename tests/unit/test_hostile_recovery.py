"""Recovering a huge history cannot jam a process: clients asking ``since`` of a channel that
holds far more than a channel may (as a release before the byte bound could store) are each
answered, bystanders' subscribes stay quick, memory comes back and SIGTERM still drains."""

from __future__ import annotations

import asyncio
import statistics
import time

from tests.unit.clients import open_client, receive, request, run
from tests.unit.helpers import resident_kib

RECOVERING = 8
ENTRIES, ENTRY_BYTES = 1000, 60_000


def fill_history(redis_server, channel: str) -> str:
    """A history of ENTRIES messages of ENTRY_BYTES, written as the store script lays it out;
    the offset of its first message."""
    import redis

    from roles.redis import ADMIN_REDIS_USER

    head = '{"type":"message","channel":"' + channel + '","data":"' + "h" * ENTRY_BYTES
    head += '","from":"old","offset":"'
    with redis.Redis(
        port=redis_server.port, username=ADMIN_REDIS_USER, password=redis_server.admin_password
    ) as admin:
        admin.hset(f"wssfleet:history-state:{channel}", mapping={"epoch": "e0", "trimmed": "0-0"})
        pipeline = admin.pipeline(transaction=False)
        for _ in range(ENTRIES):
            pipeline.xadd(f"wssfleet:history:{channel}", {"f": head})
        first = pipeline.execute()[0].decode()
    milliseconds, sequence = first.split("-")
    return f"e0:{int(milliseconds):013d}-{int(sequence) - 1 if int(sequence) else 0:06d}"


def test_recovering_a_huge_history_answers_everyone_and_jams_nothing(start_service, redis_server):
    service = start_service(redis_server.url, WSSFLEET_MESSAGES_PER_SECOND="1000")
    since = fill_history(redis_server, "big")
    started = resident_kib(service.process.pid)

    async def scenario() -> tuple[list[float], list[float]]:
        bystander = await open_client(service, subject="bystander")
        t0 = time.monotonic()
        recovering = [
            asyncio.create_task(open_recovering(service, since, t0)) for _ in range(RECOVERING)
        ]
        subscribe_times = []
        while not all(task.done() for task in recovering) or len(subscribe_times) < 50:
            sent = time.monotonic()
            channel = f"quiet.{len(subscribe_times)}"
            await request(bystander, type="subscribe", channel=channel)
            answer = await receive(bystander, timeout=10)
            assert answer["type"] == "subscribed", answer
            subscribe_times.append(time.monotonic() - sent)
            await request(bystander, type="unsubscribe", channel=channel)
            assert (await receive(bystander))["type"] == "unsubscribed"
            await asyncio.sleep(0.02)
        return [await task for task in recovering], subscribe_times

    answered, subscribe_times = run(scenario())
    # Every recovering client heard an answer, within 10 s, and the bystander's subscribes
    # kept their pace throughout.
    assert max(answered) < 10, answered
    p99 = statistics.quantiles(subscribe_times, n=100, method="inclusive")[98]
    assert p99 < 0.1, subscribe_times
    deadline = time.monotonic() + 10
    while service.health()["connections"] and time.monotonic() < deadline:
        time.sleep(0.1)
    grown = resident_kib(service.process.pid) - started
    assert grown < 50 * 1024, f"RSS grew by {grown} KiB"
    assert service.stop() == 0


async def open_recovering(service, since: str, t0: float) -> float:
    """A client recovering the big channel; seconds until it hears how."""
    ws = await open_client(service, f"/ws/big?since={since}", subscribed=False)
    answer = await receive(ws, timeout=20)
    assert answer["type"] == "subscribed", answer
    # More than a channel may hold: not recovered, the client refetches its state.
    assert answer["recovered"] is False
    return time.monotonic() - t0


def test_sigterm_drains_while_clients_still_recover(start_service, redis_server):
    service = start_service(redis_server.url)
    since = fill_history(redis_server, "big")

    async def scenario() -> None:
        for _ in range(RECOVERING):
            await open_client(service, f"/ws/big?since={since}", subscribed=False)
        service.process.terminate()

    run(scenario())
    assert service.process.wait(timeout=15) == 0


def test_a_recovery_longer_than_a_page_is_whole_and_in_order(start_service, redis_server):
    # A page is about 256 KiB: 30 messages of 12 KB take two.
    service = start_service(redis_server.url, WSSFLEET_MESSAGES_PER_SECOND="1000")

    async def scenario() -> tuple[dict, list[int]]:
        publisher = await open_client(service, "/ws/paged")
        offsets = []
        for n in range(30):
            await request(publisher, type="publish", channel="paged", data=[n, "p" * 12000], id=n)
            while (answer := await receive(publisher))["type"] != "published":
                pass
            offsets.append(answer["offset"])
        reader = await open_client(service, f"/ws/paged?since={offsets[0]}", subscribed=False)
        answer = await receive(reader)
        return answer, [(await receive(reader))["data"][0] for _ in range(answer["missed"])]

    answer, numbers = run(scenario())
    assert answer["recovered"] is True
    assert numbers == list(range(1, 30))
