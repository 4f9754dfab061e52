"""History reads are shared fairly between token subjects: one subject's backlog of costly
recoveries (hole 11 of Security III) does not hold up another subject's read, and a read that
waited out a failover is not then failed for the time the bus was away."""

from __future__ import annotations

import asyncio
import time

from tests.unit.clients import open_client, receive, request, run
from tests.unit.test_hostile_recovery import fill_history
from wssfleet import hub as hub_module
from wssfleet.turns import Turns

HOG_RECOVERIES = 40


def test_turns_go_round_the_subjects_and_survive_cancelled_waiters():
    async def scenario() -> list[str]:
        turns, served = Turns(1), []
        release = asyncio.Event()

        async def read(subject: str, number: int) -> None:
            async with turns.turn(subject):
                served.append(f"{subject}{number}")
                await release.wait()
                release.clear()

        tasks = [asyncio.create_task(read("hog", n)) for n in range(5)]
        await asyncio.sleep(0)
        tasks.append(asyncio.create_task(read("other", 0)))
        doomed = asyncio.create_task(read("gone", 0))
        await asyncio.sleep(0)
        doomed.cancel()  # waiting: leaves the rotation without taking a turn
        tasks.append(asyncio.create_task(read("late", 0)))
        while not all(task.done() for task in tasks):
            await asyncio.sleep(0)
            release.set()
        assert turns.waiting == 0
        async with turns.turn("after"):  # every slot came back
            pass
        return served

    # The hog's first read holds the slot; then the others in turn, not the hog's backlog.
    assert run(scenario()) == ["hog0", "hog1", "other0", "late0", "hog2", "hog3", "hog4"]


def test_one_subjects_recoveries_do_not_hold_up_anothers(start_service, redis_server):
    service = start_service(redis_server.url, metrics=True, WSSFLEET_MESSAGES_PER_SECOND="1000")
    since = fill_history(redis_server, "big")
    small_since = fill_small(redis_server, "small")

    async def scenario() -> tuple[int, int]:
        answered: list[float] = []

        async def hog() -> None:
            path = f"/ws/big?since={since}"
            ws = await open_client(service, path, subject="hog", subscribed=False)
            assert (await receive(ws, timeout=60))["type"] == "subscribed"
            answered.append(time.monotonic())

        # Connected first, so that its read is asked for at a known moment.
        bystander = await open_client(service, "/ws", subject="bystander", subscribed=False)
        hogs = [asyncio.create_task(hog()) for _ in range(HOG_RECOVERIES)]
        while waiting(service) < HOG_RECOVERIES // 2:
            await asyncio.sleep(0.01)
        answered_before = len(answered)
        await request(bystander, type="subscribe", channel="small", since=small_since)
        answer = await receive(bystander, timeout=60)
        assert answer["type"] == "subscribed" and answer["recovered"] is True, answer
        ahead = len(answered) - answered_before
        await asyncio.gather(*hogs)
        return ahead, len(answered)

    ahead, total = run(scenario())
    # Served in turn: its read starts after the reads in progress and one more of the hog's
    # (the rotation), and while it runs the other slots may end one hog read each: at most
    # 2 x HISTORY_READS hog answers come first, not the hog's whole backlog (first come,
    # first served: the 20 or more waiting when it asked).
    assert total == HOG_RECOVERIES
    assert ahead <= 2 * hub_module.HISTORY_READS, f"{ahead} of the hog's reads went first"


def waiting(service) -> float:
    return service.metrics()[("wssfleet_history_reads_waiting", ())]


def fill_small(redis_server, channel: str) -> str:
    """Three small messages in ``channel``'s history; an offset before them."""
    import redis

    from roles.redis import ADMIN_REDIS_USER

    with redis.Redis(
        port=redis_server.port, username=ADMIN_REDIS_USER, password=redis_server.admin_password
    ) as admin:
        admin.hset(f"wssfleet:history-state:{channel}", mapping={"epoch": "e0", "trimmed": "0-0"})
        head = '{"type":"message","channel":"' + channel + '","data":1,"from":"x","offset":"'
        first, *_ = [admin.xadd(f"wssfleet:history:{channel}", {"f": head}) for _ in range(3)]
    milliseconds, sequence = first.decode().split("-")
    return f"e0:{int(milliseconds):013d}-{int(sequence) - 1 if int(sequence) else 0:06d}"


class FailingOverBus:
    """A bus edge that fails one read while connected, is then away for a while (ready()
    waits out a failover), fails once more after it came back, then answers."""

    def __init__(self, away: float) -> None:
        self.connected = True
        self.connected_at = 0.0
        self.away = away
        self.calls = 0

    async def ready(self, channel: str) -> None:
        if self.calls == 1:
            await asyncio.sleep(self.away)
            self.connected_at = asyncio.get_running_loop().time()

    async def wait_connected(self) -> None:
        pass

    async def since(self, channel: str, offset: str | None):
        self.calls += 1
        if self.calls <= 2:
            raise hub_module.BusUnavailable("the primary does not answer")
        return hub_module.History(latest="e0:1", recovered=True, missed=[])


def test_time_the_bus_was_away_does_not_count_against_a_read(monkeypatch):
    monkeypatch.setattr(hub_module, "HISTORY_READ_DEADLINE", 0.5)

    async def scenario():
        hub = hub_module.Hub.__new__(hub_module.Hub)
        hub.bus = FailingOverBus(away=1.0)
        hub.reads = Turns(1)
        return await hub._history("room", "e0:0", "alice")

    history = run(scenario())
    assert history.recovered is True


def test_a_wave_of_joins_to_one_channel_makes_one_history_read(start_service, redis_server):
    """Joins without since want the latest offset only: those waiting at once share one read
    (before, each made its own, and 1,000 of them queued 1,000 coroutines for the turns)."""
    service = start_service(redis_server.url, WSSFLEET_MESSAGES_PER_SECOND="1000")

    def reads() -> int:
        stats = redis_server.cli("INFO", "commandstats")
        return int(stats.get("cmdstat_fcall_ro", {}).get("calls", 0))

    before = reads()

    async def scenario() -> list[str]:
        clients = await asyncio.gather(
            *(
                open_client(service, "/ws/wave", subject=f"c{n}", subscribed=False)
                for n in range(60)
            )
        )
        answers = [await receive(ws, timeout=20) for ws in clients]
        for ws in clients:
            await ws.close()
        return [answer["type"] for answer in answers]

    assert run(scenario()) == ["subscribed"] * 60
    # One read for the wave (a few if it arrived in parts), not one a client.
    assert reads() - before <= 5, reads() - before
