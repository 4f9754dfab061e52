"""The message plane's guarantee under a fault, as the end-to-end tests check it: 400
subscribers on 4 channels come back with ``since`` after every reconnection, 4 publishers
publish with ids and retry until acknowledged, and every acknowledged message must reach every
subscriber exactly once and in order, with no history ever reported lost. Beside them, one
application per channel on the shipped Python client (clients/python) must receive the same."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import time
import uuid
from collections.abc import Callable

from wssfleet_client import Client  # the shipped Python client (clients/python)

from tests.contract_client import Publisher, Subscribers
from tests.e2e.conftest import run

CHANNELS = 4
PER_CHANNEL = 100
# Each channel 5 messages a second: 20 a second in all, 2,000 deliveries a second.
INTERVAL = 0.2


class ShippedSubscriber:
    """An application on the shipped Python client, subscribed to one channel beside the
    crowd: it must receive what the crowd receives, through the same fault."""

    def __init__(self, lab, channel: str, source: str, host: str | None) -> None:
        self.channel = channel
        self.received: list[tuple[int, str]] = []
        self.gaps = 0
        self.connections = 0
        # What happened to it, in order, for a failure to tell: (monotonic time, what).
        self.timeline: list[tuple[float, str]] = []
        self.client = Client(
            f"wss://{lab.domain}/ws",
            token=lambda: lab.token("shipped-client"),
            ssl=lab._client_tls,
            host=host or lab.master_address,
            port=443,
            server_hostname=lab.domain,
            origin=f"https://{lab.domain}",
            proxy=None,
            local_addr=(source, 0),
            on_event=self._event,
        )
        self.task: asyncio.Task | None = None

    def _event(self, kind: str, detail: dict) -> None:
        self.connections += kind == "connected"
        said = {key: detail[key] for key in ("code", "reason", "error", "worker") if key in detail}
        self.timeline.append((time.monotonic(), f"{kind} {said}" if said else kind))

    def start(self) -> None:
        self.client.start()
        self.task = asyncio.create_task(self._read())

    async def _read(self) -> None:
        async with self.client.subscribe(self.channel) as subscription:
            async for message in subscription:
                if message.gap:
                    self.gaps += 1
                    self.timeline.append((time.monotonic(), f"gap after {self.received[-1:]}"))
                else:
                    self.received.append((message.data, message.offset))

    async def finish(self) -> None:
        assert self.task is not None
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task
        await self.client.close()


def through(
    lab,
    source: str | list[str],
    fault: Callable[[], object],
    after: float = 5,
    host: str | None = None,
) -> dict:
    """Run the crowd through ``fault`` (called in a thread while messages flow), keep
    publishing ``after`` more seconds, then check every subscriber's messages. The clients
    reach the front door, or ``host`` (one master's own address) when given, from
    ``source``, or from each of several sources in turn (clients behind as many addresses:
    each address's admission pace is its own)."""
    sources = itertools.cycle([source] if isinstance(source, str) else source)
    source = source if isinstance(source, str) else source[0]

    # Fresh channels each run: an earlier run's history and publish ids would answer for them.
    run_id = uuid.uuid4().hex[:8]
    channels = [f"plane-{run_id}-{n}" for n in range(CHANNELS)]

    def connect(path: str, subject: str):
        reach = {"host": host} if host else {}
        return lab.connect(
            path, subject=subject, local_addr=(next(sources), 0), open_timeout=15, **reach
        )

    async def scenario():
        subscribers = Subscribers(lambda path: connect(path, "subscriber"), channels, PER_CHANNEL)
        subscribers.start()
        shipped = [ShippedSubscriber(lab, channel, source, host) for channel in channels]
        for application in shipped:
            application.start()
        await subscribers.until_subscribed(90)
        assert await subscribers.until_even(60), "the crowd never spread evenly"
        await asyncio.sleep(3)
        settled, settled_at = subscribers.reconnections(), time.monotonic()
        publishers = [
            Publisher(lambda: connect("/ws", "publisher"), channel, INTERVAL)
            for channel in channels
        ]
        for publisher in publishers:
            publisher.start()
        await asyncio.sleep(3)
        started = time.monotonic()
        outcome = await asyncio.to_thread(fault)
        fault_seconds = time.monotonic() - started
        await asyncio.sleep(after)
        for publisher in publishers:
            await publisher.finish()
        last = {publisher.channel: publisher.last for publisher in publishers}
        await subscribers.until_caught_up(last, 60)
        await subscribers.finish()
        # The shipped clients catch up too (their own reconnections, their own backoff).
        acked = {publisher.channel: publisher.acked for publisher in publishers}
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and any(
            len(application.received) < len(acked[application.channel]) for application in shipped
        ):
            await asyncio.sleep(0.2)
        for application in shipped:
            await application.finish()
        return (
            subscribers,
            publishers,
            outcome,
            started,
            fault_seconds,
            settled,
            settled_at,
            shipped,
        )

    subscribers, publishers, outcome, started, fault_seconds, settled, settled_at, shipped = run(
        scenario(), timeout=400
    )
    unanswered = [
        seen
        for inbox, seen in zip(subscribers.inboxes, subscribers.seen, strict=True)
        if not inbox.answers
    ]
    assert not unanswered, (
        f"{len(unanswered)} subscribers never subscribed; one saw connects "
        f"{unanswered[0].connects[:3]}, refusals {unanswered[0].refusals[:5]}, "
        f"closes {unanswered[0].closes[:3]}"
    )
    acked = {publisher.channel: publisher.acked for publisher in publishers}
    problems = []
    for number, inbox in enumerate(subscribers.inboxes):
        expected, received = acked[inbox.channel], inbox.received
        if received != expected:
            missing = sorted(set(expected) - set(received))
            extra = len(received) - len(set(received))
            problems.append(
                f"subscriber {number} on {inbox.channel}: {len(received)} received of "
                f"{len(expected)}, missing {[n for n, _ in missing[:5]]}, repeated {extra}"
            )
        lost = [answer for answer in inbox.answers if answer.get("recovered") is False]
        if lost:
            problems.append(f"subscriber {number}: history reported lost: {lost[0]}")
    for application in shipped:
        expected, received = acked[application.channel], application.received
        if received != expected or application.gaps:
            problems.append(
                f"the shipped Python client on {application.channel}: {len(received)} received "
                f"of {len(expected)}, {len(received) - len(set(received))} repeated, "
                f"{application.gaps} history gaps; since the fault began: "
                + ", ".join(f"{at - started:+.1f} s {what}" for at, what in application.timeline)
            )
    summary = {
        "acknowledged": sum(len(messages) for messages in acked.values()),
        "deliveries": sum(len(inbox.received) for inbox in subscribers.inboxes),
        "reconnections": subscribers.reconnections() - settled,
        "publish retries": sum(publisher.retries for publisher in publishers),
        "refused publishes": sum(len(publisher.refused) for publisher in publishers),
        # Connection attempts that did not end in a welcome, once the crowd was settled.
        "failed handshakes": sum(
            len([refusal for refusal in seen.refusals if refusal[0] >= settled_at])
            for seen in [*subscribers.seen, *(publisher.seen for publisher in publishers)]
        ),
        "fault seconds": round(fault_seconds, 1),
        # Once the crowd was settled: how each connection ended, and the longest any client
        # was without one (from a close to its next welcome).
        "close codes": dict(
            collections.Counter(
                code
                for seen in [*subscribers.seen, *(publisher.seen for publisher in publishers)]
                for closed_at, code, _ in seen.closes
                if closed_at >= settled_at
            )
        ),
        "longest without a connection": round(
            max(
                (
                    span
                    for seen in [*subscribers.seen, *(p.seen for p in publishers)]
                    for span, (closed_at, _, _) in zip(
                        seen.offline_spans(time.monotonic()), seen.closes, strict=True
                    )
                    if closed_at >= settled_at
                ),
                default=0.0,
            ),
            2,
        ),
        "shipped client connections": sum(application.connections for application in shipped),
        "outcome": outcome,
    }
    if isinstance(outcome, dict) and "cut_at" in outcome:
        summary |= _since_the_cut(outcome["cut_at"], subscribers, publishers)
    print(f"\n{summary}")
    # The figures first: what the crowd saw tells where a problem came from.
    assert problems == [], f"{summary}\n" + "\n".join(problems[:10])
    assert summary["acknowledged"] >= CHANNELS * 10, "too few messages to prove anything"
    return summary


def _since_the_cut(cut_at: float, subscribers: Subscribers, publishers: list[Publisher]) -> dict:
    """Seconds from a cut until the last subscriber that lost its connection had a new one,
    and until every publisher had an acknowledgement again."""

    def back(seen) -> float:
        if not any(closed_at >= cut_at for closed_at, _, _ in seen.closes):
            return 0.0
        return min((at for at, _ in seen.connects if at >= cut_at), default=float("inf")) - cut_at

    return {
        "subscribers cut off": sum(
            any(closed_at >= cut_at for closed_at, _, _ in seen.closes) for seen in subscribers.seen
        ),
        "every subscriber back after": round(max(back(seen) for seen in subscribers.seen), 1),
        "publishes acknowledged again after": round(
            max(_longest_silence(publisher.acked_at, cut_at) for publisher in publishers), 1
        ),
    }


def _longest_silence(moments: list[float], cut_at: float) -> float:
    """The longest time without an acknowledgement, counted from ``cut_at`` on: how long
    publishing was unavailable."""
    later = [at for at in moments if at >= cut_at]
    if not later:
        return float("inf")
    before = max((at for at in moments if at < cut_at), default=cut_at)
    edges = [max(before, cut_at), *later]
    return max(b - a for a, b in itertools.pairwise(edges))
