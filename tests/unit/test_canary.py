"""The canary's tokens, frames and arithmetic (hostside/canary.py): what the workers grant its
key, what it owes, what it serves to Prometheus. The lab test (tests/e2e/test_observability.py)
runs it against the fleet."""

from __future__ import annotations

import argparse
import asyncio
import subprocess

import pytest

from tests.unit.test_monitoring_rules import PROMTOOL
from wssfleet import auth
from wssfleet_control.hostside import canary

SECRET = "the deployment's client signing key, long enough"
CANARY_KEY = "the masters' canary key, another long value"


def test_a_canary_token_grants_the_canary_channels_only_whatever_it_claims():
    token = canary.mint(CANARY_KEY, "wssfleet-canary.m", 60)
    grant = auth.verify(SECRET, token, canary=CANARY_KEY)
    assert grant.subject == "wssfleet-canary.m"
    assert grant.subscribe == grant.publish == auth.CANARY_CHANNELS
    # A token signed with the canary key that claims every channel gets the same.
    greedy = auth.mint(CANARY_KEY, "intruder", 60, subscribe=["*"], publish=["*"])
    grant = auth.verify(SECRET, greedy, canary=CANARY_KEY)
    assert grant.subscribe == grant.publish == auth.CANARY_CHANNELS
    assert not auth.allows(grant.publish, "lobby")
    assert auth.allows(grant.publish, "wssfleet.canary.m")


def test_a_canary_token_is_refused_where_no_canary_key_is_set():
    token = canary.mint(CANARY_KEY, "wssfleet-canary.m", 60)
    with pytest.raises(auth.TokenError, match="unknown signing key"):
        auth.verify(SECRET, token)


def test_the_canary_key_never_stands_in_for_the_client_key():
    # Misconfigured alike: the client key's tokens keep what they claim.
    token = auth.mint(SECRET, "alice", 60, publish=["lobby"])
    assert auth.verify(SECRET, token, canary=SECRET).publish == ("lobby",)
    # A token with no kid is checked against the client keys only.
    claims = token.split(".")[1]
    header = canary._segment(b'{"alg":"HS256","typ":"JWT"}')
    unsigned = f"{header}.{claims}"
    forged = f"{unsigned}.{canary._segment(auth._signature(CANARY_KEY, unsigned))}"
    with pytest.raises(auth.TokenError, match="forged"):
        auth.verify(SECRET, forged, canary=CANARY_KEY)


def test_a_masked_frame_carries_its_payload():
    for payload in (b"", b"x" * 125, b"y" * 126, b"z" * 70000):
        frame = canary.masked(0x1, payload)
        assert frame[0] == 0x81 and frame[1] & 0x80
        length = frame[1] & 0x7F
        offset = {126: 4, 127: 10}.get(length, 2)
        mask, body = frame[offset : offset + 4], frame[offset + 4 :]
        assert bytes(b ^ mask[i % 4] for i, b in enumerate(body)) == payload


def the_canary(instances: int = 2) -> canary.Canary:
    args = argparse.Namespace(
        name="m",
        token_ttl=60,
        interval=1.0,
        stall_after=5.0,
        front_door="10.0.0.100",
        server_name="example.test",
        ca_file=[],
        instance_ca="",
        instance=[f"w1-800{n}=10.0.0.2:800{n}" for n in range(1, instances + 1)],
    )
    return canary.Canary(args, CANARY_KEY)


def message(sequence: int, run: str, sender: str = "wssfleet-canary.m") -> dict:
    return {
        "type": "message",
        "channel": "wssfleet.canary.m",
        "from": sender,
        "data": {"seq": sequence, "run": run},
    }


class RecordingSocket:
    """Takes what the canary sends; answers each publish with the acknowledgement given."""

    def __init__(self, answer) -> None:
        self.sent: list[dict] = []
        self.replies: asyncio.Queue[dict] = asyncio.Queue()
        self.answer = answer

    def send(self, frame: dict) -> None:
        self.sent.append(frame)
        self.replies.put_nowait(self.answer(frame))

    async def receive(self) -> dict:
        reply = await self.replies.get()
        if reply is None:
            raise canary.Closed("closed with 1000")
        return reply


def acknowledged_after_publishing(watcher: canary.Canary, answer) -> list[dict]:
    """One publish through a socket whose only acknowledgement is answer(publish)."""

    async def one_publish():
        socket = RecordingSocket(answer)
        reading = asyncio.create_task(watcher.hear_acknowledgements(socket))
        publishing = asyncio.create_task(watcher.publish_on(socket, reading))
        await asyncio.sleep(0.05)
        socket.replies.put_nowait(None)
        with pytest.raises(canary.Closed):
            await publishing
        return socket.sent

    return asyncio.run(one_publish())


def test_a_restarted_canary_is_never_acknowledged_with_an_earlier_runs_message():
    # The service answers a publish id it has seen with the first publish's offset and does
    # not publish again: a canary counting from 1 after a restart would be acknowledged for
    # messages nobody receives (a lab deploy stalled every instance's alert for 90 s).
    before, after = the_canary(), the_canary()
    sent = acknowledged_after_publishing(
        before, lambda frame: {"type": "published", "id": frame["id"], "offset": "e:1"}
    )
    assert len(sent) == 1 and before.acknowledged.keys() == {1}
    again = acknowledged_after_publishing(
        after, lambda frame: {"type": "published", "id": sent[0]["id"], "offset": "e:1"}
    )
    assert again[0]["id"] != sent[0]["id"] and again[0]["data"]["seq"] == 1
    # The earlier run's acknowledgement says nothing of this one's publish.
    assert not after.acknowledged
    # Nor does the earlier run's message, in flight when this one subscribed.
    instance = after.instances[0]
    instance.subscribed_at, instance.received = 100.0, 0
    after.heard(instance, message(1, before.run_id))
    assert instance.received == 0
    after.heard(instance, message(1, after.run_id))
    assert instance.received == 1


def test_an_instance_owes_each_message_acknowledged_after_its_subscription():
    watcher = the_canary()
    first, second = watcher.instances
    watcher.sequence = 3
    for instance in (first, second):
        instance.subscribed_at = 100.0
        instance.owed_after = instance.received = 3
    for sequence, at in ((4, 101.0), (5, 102.0)):
        watcher.sequence = sequence
        watcher.sent[sequence] = at - 0.01
        watcher.acknowledged[sequence] = at
    watcher.heard(first, message(4, watcher.run_id))
    watcher.heard(first, message(5, watcher.run_id))
    assert watcher.overdue(first, 110.0) == 0
    # The second heard nothing: it owes message 4 since its acknowledgement.
    assert watcher.overdue(second, 110.0) == pytest.approx(9.0)
    # Someone else's message on the channel proves nothing.
    watcher.heard(second, message(4, watcher.run_id, sender="intruder"))
    assert watcher.overdue(second, 110.0) == pytest.approx(9.0)
    watcher.heard(second, message(4, watcher.run_id))
    assert watcher.overdue(second, 110.0) == pytest.approx(8.0)
    # Not subscribed (reconnecting): it owes nothing; its clients are elsewhere.
    second.subscribed_at = None
    assert watcher.overdue(second, 110.0) == 0


def test_the_metrics_are_prometheus_text_with_a_histogram_per_instance():
    watcher = the_canary(1)
    (instance,) = watcher.instances
    instance.observe(0.004)
    instance.observe(0.3)
    text = watcher.metrics()
    assert 'wssfleet_canary_delivery_seconds_bucket{server="w1-8001",le="0.005"} 1' in text
    assert 'wssfleet_canary_delivery_seconds_bucket{server="w1-8001",le="0.5"} 2' in text
    assert 'wssfleet_canary_delivery_seconds_bucket{server="w1-8001",le="+Inf"} 2' in text
    assert 'wssfleet_canary_delivery_seconds_count{server="w1-8001"} 2' in text
    assert 'wssfleet_canary_subscribed{server="w1-8001"} 0' in text
    assert "# TYPE wssfleet_canary_overdue_seconds gauge" in text
    checked = subprocess.run(
        [str(PROMTOOL), "check", "metrics"], input=text, capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_the_handshake_is_checked_as_rfc_6455_derives_it():
    # RFC 6455, 1.3's own example.
    assert canary.accept_for("dGhlIHNhbXBsZSBub25jZQ==") == "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
