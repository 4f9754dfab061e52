"""Cheap work before the limits (issue #33, 11): a frame past the rate is dropped before its
JSON is parsed; a recovery holds at most a channel's history of live messages."""

from __future__ import annotations

import json
from types import SimpleNamespace

from tests.unit.clients import open_client, receive, run
from wssfleet.client import Client, ClientLimits


def test_frames_past_the_rate_are_not_parsed(start_service):
    service = start_service(metrics=True, WSSFLEET_MESSAGES_PER_SECOND="5")
    heavy = json.dumps({"type": "echo", "data": ["x" * 60] * 800})

    async def scenario():
        ws = await open_client(service)
        for _ in range(200):
            await ws.send(heavy)
        return [(await receive(ws))["type"] for _ in range(200)]

    answers = run(scenario())
    samples = service.metrics()
    parsed = samples[("wssfleet_messages_received_total", (("type", "echo"),))]
    dropped = samples[("wssfleet_drops_total", (("cause", "rate_limit"),))]
    assert parsed == answers.count("echo") <= 10, (parsed, answers.count("echo"))
    assert dropped == 200 - parsed


class RecordingClient(Client):
    """A Client without a connection: what it would close with is recorded."""

    __slots__ = ("closed_with",)

    def close(self, code: int, reason: str) -> None:
        self.closed_with.append((code, reason))


def test_a_recovery_holds_at_most_a_channels_history_of_live_messages():
    limits = ClientLimits(
        max_size=65536, close_timeout=1.0, backlog=2**20, rate=50, recovery_backlog=10
    )
    client = RecordingClient.__new__(RecordingClient)
    client.closed_with = closed = []
    client.limits = limits
    client.pending = None
    client.sent_up_to = None
    client.subject = "alice"
    client.stats = SimpleNamespace(closes={"recovery_backlog": 0})
    client.ws = SimpleNamespace(is_close_frame_sent=False, is_disconnected=False)
    waiting = client.recovering("room")
    run_of = [(f"0:{n:013d}-000000", "{}") for n in range(6)]
    assert client.first_owed("room", run_of) == 6 and len(waiting) == 6
    assert client.first_owed("room", run_of) == 6
    # Twelve would pass the channel's history of ten: what was kept goes, and the client is
    # told to come back and recover from its last offset.
    assert client.waiting("room") is None and client.pending is None
    assert closed == [(1012, "recovery fell behind: reconnect")]
    assert client.stats.closes["recovery_backlog"] == 1
