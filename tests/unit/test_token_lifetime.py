"""A token's grants end with it on an open connection too: heartbeats kept a connection whose
60 s token had expired publishing for days. The connection is closed 4001 at the token's exp
(or at the end of its signing key's overlap) unless the client sent a fresher token for the
same subject over it (refresh)."""

from __future__ import annotations

import asyncio
import base64
import time

import pytest
from websockets.exceptions import ConnectionClosed

from tests.unit.clients import open_client, receive, request, run
from tests.unit.helpers import SECRET, token
from wssfleet import auth

OLD = "the-previous-signing-key-long-enough-0123456789"


async def closed_code(ws, timeout: float) -> int:
    with pytest.raises(ConnectionClosed) as closed:
        while True:
            await receive(ws, timeout)
    return closed.value.rcvd.code


def test_an_expired_token_closes_its_connection_4001_and_publishes_nothing(start_service):
    service = start_service(metrics=True)

    async def scenario():
        ws = await open_client(service, token_text=token("alice", ttl=2))
        started = time.monotonic()
        code = await closed_code(ws, timeout=5)
        return code, time.monotonic() - started

    code, took = run(scenario())
    assert code == 4001
    assert took < 4, took
    closes = service.metrics()[("wssfleet_closes_total", (("reason", "token_expired"),))]
    assert closes == 1


def test_a_refreshed_token_keeps_the_connection_and_its_publishes(start_service):
    service = start_service()

    async def scenario():
        ws = await open_client(service, "/ws/room", token_text=token("alice", ttl=2))
        await request(ws, type="refresh", token=token("alice", ttl=60), id="r1")
        refreshed = await receive(ws)
        await asyncio.sleep(3)  # past the first token's exp
        await request(ws, type="publish", channel="room", data="still here", id="p1")
        answers = [await receive(ws) for _ in range(2)]
        return refreshed, answers

    refreshed, answers = run(scenario())
    assert refreshed["type"] == "refreshed" and refreshed["id"] == "r1"
    assert refreshed["expires"] > time.time() + 50
    assert {answer["type"] for answer in answers} == {"published", "message"}, answers


@pytest.mark.parametrize(
    ("fresher", "reason"),
    [
        (lambda: token("mallory", ttl=60), "another subject"),
        (lambda: auth.mint("another-deployments-key-0123456789", "alice", 60), "unknown"),
        (lambda: auth.mint(SECRET, "alice", 1, now=time.time() - 10), "expired"),
    ],
    ids=["other subject", "other key", "expired"],
)
def test_a_refresh_that_does_not_hold_is_refused_and_the_old_expiry_stands(
    start_service, fresher, reason
):
    service = start_service()

    async def scenario():
        ws = await open_client(service, token_text=token("alice", ttl=3))
        await request(ws, type="refresh", token=fresher(), id=7)
        refusal = await receive(ws)
        return refusal, await closed_code(ws, timeout=6)

    refusal, code = run(scenario())
    assert refusal["type"] == "error" and refusal["id"] == 7, refusal
    assert reason in refusal["reason"], refusal
    assert code == 4001


def test_a_refresh_that_grants_less_leaves_the_channels_it_no_longer_grants(start_service):
    service = start_service()

    async def scenario():
        ws = await open_client(service, token_text=token("alice", channels=("lobby", "news")))
        for channel in ("lobby", "news"):
            await request(ws, type="subscribe", channel=channel)
            assert (await receive(ws))["type"] == "subscribed"
        await request(ws, type="refresh", token=token("alice", channels=("lobby",)))
        answers = [await receive(ws) for _ in range(2)]
        await request(ws, type="subscribe", channel="news", id="s1")
        return answers, await receive(ws)

    answers, refused = run(scenario())
    assert answers[0] == {"type": "unsubscribed", "channel": "news", "reason": "not allowed"}
    assert answers[1]["type"] == "refreshed"
    assert refused == {"type": "error", "reason": "not allowed", "channel": "news", "id": "s1"}


def test_a_connection_on_a_rotated_out_key_ends_with_the_overlap(start_service):
    until = int(time.time()) + 3
    service = start_service(
        WSSFLEET_JWT_PREVIOUS_SECRET=OLD, WSSFLEET_JWT_PREVIOUS_UNTIL=str(until)
    )

    async def scenario():
        ws = await open_client(service, token_text=auth.mint(OLD, "alice", 300, subscribe=["*"]))
        return await closed_code(ws, timeout=6)

    assert run(scenario()) == 4001
    assert time.time() >= until


def test_issued_at_may_lie_a_few_seconds_ahead_and_no_more():
    ahead = auth.mint(SECRET, "alice", 60, now=time.time() + 3)
    assert auth.verify(SECRET, ahead, skew=5).subject == "alice"
    with pytest.raises(auth.TokenError, match="iat is in the future"):
        auth.verify(SECRET, ahead)
    far = auth.mint(SECRET, "alice", 60, now=time.time() + 30)
    with pytest.raises(auth.TokenError, match="iat is in the future"):
        auth.verify(SECRET, far, skew=5)


def test_only_the_canonical_spelling_of_a_signature_is_accepted():
    good = token("alice")
    head, _, signature = good.rpartition(".")
    raw = base64.urlsafe_b64decode(signature + "=")
    assert auth.verify(SECRET, good).subject == "alice"
    # 32 bytes are 43 characters whose last carries 2 unused bits: set them, same bytes.
    last = signature[-1]
    alphabet = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"
    twin = signature[:-1] + alphabet[alphabet.index(last) | 1]
    assert twin != signature and base64.urlsafe_b64decode(twin + "=") == raw
    for spelling in (twin, signature + "=", signature + "=="):
        with pytest.raises(auth.TokenError, match="malformed"):
            auth.verify(SECRET, f"{head}.{spelling}")
