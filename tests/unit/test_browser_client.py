"""The browser module of the client contract (service/wssfleet/static/wssfleet-client.js,
which the demo page uses) under the Python client's faults, run by Node's WebSocket on
loopback: a subscriber's process killed or frozen (a dead path), a publisher's process
killed mid-stream. Every acknowledged message is received once, in order."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import pytest

from tests.unit.helpers import token, two_services_on_redis
from wssfleet_control.checkout import REPO

MODULE = REPO / "service" / "wssfleet" / "static" / "wssfleet-client.js"
RUNNER = Path(__file__).parent / "js" / "contract_run.mjs"
FAST = {"WSSFLEET_MESSAGES_PER_SECOND": "100000", "WSSFLEET_HEARTBEAT_INTERVAL": "1"}
COUNT = 40


def urls(*services) -> str:
    return ",".join(f"{service.url}/ws" for service in services)


def run_module(subscribing: str, publishing: str, fault) -> dict:
    """Run the Node scenario; ``fault`` is applied once 10 messages are published."""
    node = subprocess.Popen(
        [
            "node",
            "--experimental-websocket",
            "--no-warnings",
            str(RUNNER),
            MODULE.as_uri(),
            subscribing,
            publishing,
            token("app"),
            str(COUNT),
            "100",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert node.stdout is not None
        for line in node.stdout:
            event = json.loads(line)
            if event["event"] == "published 10":
                fault()
            elif event["event"] == "done":
                return event
        raise AssertionError(f"the scenario ended early: {node.stderr.read()[-2000:]}")
    finally:
        node.kill()
        node.wait(timeout=10)


@pytest.mark.parametrize("fault", ["killed", "frozen"])
def test_a_subscriber_whose_process_is_lost_gets_every_message_once_in_order(
    start_service, redis_server, fault
):
    lost, kept = two_services_on_redis(start_service, redis_server, **FAST)

    def lose() -> None:
        if fault == "killed":
            lost.process.kill()
        else:
            os.kill(lost.process.pid, signal.SIGSTOP)

    try:
        outcome = run_module(urls(lost, kept), urls(kept), lose)
    finally:
        if fault == "frozen":
            os.kill(lost.process.pid, signal.SIGCONT)
    assert outcome["received"] == list(range(COUNT)), outcome
    assert outcome["gaps"] == 0 and len(set(outcome["offsets"])) == COUNT
    assert outcome["events"].count("connected") == 2, outcome["events"]


def test_a_publisher_whose_process_is_killed_resends_and_each_is_stored_once(
    start_service, redis_server
):
    lost, kept = two_services_on_redis(start_service, redis_server, **FAST)
    outcome = run_module(urls(kept), urls(lost, kept), lost.process.kill)
    assert outcome["received"] == list(range(COUNT)), outcome
    assert len(set(outcome["offsets"])) == COUNT


def test_the_token_is_renewed_on_the_open_connection_and_refusals_are_said(start_service):
    """A 3 s token renewed before it expires: the connection outlives it (no reconnect, no
    4001). A subscribe and a publish the token does not allow fail at once with the reason,
    instead of being resent every second forever."""
    service = start_service()
    short = token("app", ttl=3, channels=("room",))
    fresher = token("app", ttl=120, channels=("room",))
    node = subprocess.run(
        [
            "node",
            "--experimental-websocket",
            "--no-warnings",
            str(Path(__file__).parent / "js" / "refresh_run.mjs"),
            MODULE.as_uri(),
            f"{service.url}/ws",
            f"{short},{fresher}",
            "5",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert node.returncode == 0, node.stderr[-2000:]
    outcome = json.loads(node.stdout)
    assert outcome["events"] == ["connecting", "connected", "stopped"], outcome
    assert outcome["refusals"] == ["not allowed"], outcome
    assert outcome["rejected"] == "not allowed", outcome
    assert outcome["offset"] and outcome["messages"] == ["after the first token's expiry"]


def test_a_quiet_path_is_probed_once_per_quiet_spell_with_an_empty_frame():
    """What a moved front door answers with a reset: one empty frame after probeAfterMs of
    silence, none while the server keeps talking, and one again when it falls quiet."""
    import asyncio
    import time

    from websockets.asyncio.server import serve

    frames: list[tuple[float, str]] = []

    async def scenario() -> dict:
        async def talk_then_fall_quiet(ws) -> None:
            await ws.send(json.dumps({"type": "welcome", "worker": "w", "heartbeat": 60}))
            await asyncio.sleep(1.0)  # quiet: one probe
            for _ in range(10):  # talking, 0.1 s apart: none
                await ws.send(json.dumps({"type": "heartbeat"}))
                await asyncio.sleep(0.1)
            # Quiet again until the client leaves: one more.

        async def record(ws) -> None:
            connected = time.monotonic()
            talking = asyncio.ensure_future(talk_then_fall_quiet(ws))
            async for frame in ws:
                frames.append((time.monotonic() - connected, frame))
            talking.cancel()

        async with serve(record, "127.0.0.1", 0) as server:
            port = server.sockets[0].getsockname()[1]
            node = await asyncio.create_subprocess_exec(
                "node",
                "--experimental-websocket",
                "--no-warnings",
                str(Path(__file__).parent / "js" / "probe_run.mjs"),
                MODULE.as_uri(),
                f"ws://127.0.0.1:{port}/ws",
                "400",
                "3",
                stdout=subprocess.PIPE,
            )
            output, _ = await node.communicate()
            return json.loads(output)

    outcome = asyncio.run(scenario())
    assert outcome["events"][:2] == ["connecting", "connected"], outcome
    assert [frame for _, frame in frames] == ["", ""], frames
    # The first while the server was quiet (its first second), the second after it fell
    # quiet again (2 s on), none while it talked.
    assert frames[0][0] < 1.0 < 2.0 < frames[1][0], frames
