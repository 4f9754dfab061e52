"""Channel permissions in the token: a request outside them gets an error, nothing is delivered,
the connection stays open; a token that names no channels gets the deployment's defaults."""

from __future__ import annotations

import jwt
import pytest

from tests.unit.clients import expect_nothing, message, open_client, receive, request, run
from tests.unit.helpers import ORIGIN, SECRET, refusal
from wssfleet import auth


@pytest.mark.parametrize(
    ("patterns", "channel", "allowed"),
    [
        (("user.alice.*",), "user.alice.inbox", True),
        (("user.alice.*",), "user.alice.a.b", True),
        (("user.alice.*",), "user.alice", False),
        (("user.alice.*",), "user.alicex.inbox", False),
        (("lobby",), "lobby", True),
        (("lobby",), "lobby2", False),
        (("*",), "anything:at-all", True),
        (("a*c",), "abc", True),
        ((), "lobby", False),
    ],
)
def test_patterns_match_whole_channel_names(patterns, channel, allowed):
    assert auth.allows(patterns, channel) is allowed


def test_a_token_says_what_it_may_do_and_nothing_else_happens(start_service):
    service = start_service()

    async def scenario():
        alice_token = auth.mint(
            SECRET, "alice", 300, subscribe=["user.alice.*", "lobby"], publish=["lobby"]
        )
        alice = await open_client(service, token_text=alice_token)
        bob = await open_client(service, "/ws/user.bob.inbox", subject="bob")

        await request(alice, type="subscribe", channel="user.alice.inbox")
        assert (await receive(alice))["type"] == "subscribed"
        await request(alice, type="subscribe", channel="user.bob.inbox")
        refused = await receive(alice)
        assert refused == {"type": "error", "reason": "not allowed", "channel": "user.bob.inbox"}

        await request(alice, type="publish", channel="user.bob.inbox", data="psst", id="p1")
        refused = await receive(alice)
        assert (refused["reason"], refused["id"]) == ("not allowed", "p1")
        await expect_nothing(bob)

        # The connection stays open and what is allowed still works.
        await request(alice, type="echo", data="still here")
        assert await receive(alice) == {"type": "echo", "data": "still here"}
        await request(alice, type="subscribe", channel="lobby")
        assert (await receive(alice))["type"] == "subscribed"
        await request(alice, type="publish", channel="lobby", data="hi", id="p2")
        frames = {frame["type"] for frame in [await receive(alice), await receive(alice)]}
        assert frames == {"published", "message"}

    run(scenario())


def test_a_path_channel_outside_the_token_is_refused_after_the_welcome(start_service):
    service = start_service()

    async def scenario():
        limited = auth.mint(SECRET, "carol", 300, subscribe=["lobby"], publish=["lobby"])
        carol = await open_client(service, "/ws/secret", token_text=limited, subscribed=False)
        refused = await receive(carol)
        assert refused == {"type": "error", "reason": "not allowed", "channel": "secret"}
        publisher = await open_client(service, subject="pub")
        await request(publisher, type="publish", channel="secret", data="x")
        await expect_nothing(carol)

    run(scenario())


def test_a_token_without_channel_claims_gets_the_deployments_defaults(start_service):
    strict = start_service()
    lobby_only = start_service(WSSFLEET_TOKEN_DEFAULT_SUBSCRIBE="lobby")

    async def scenario():
        plain = auth.mint(SECRET, "dave", 300)
        ws = await open_client(strict, token_text=plain)
        await request(ws, type="subscribe", channel="lobby")
        assert (await receive(ws))["reason"] == "not allowed"
        await request(ws, type="publish", channel="lobby", data="x")
        assert (await receive(ws))["reason"] == "not allowed"

        ws = await open_client(lobby_only, token_text=plain)
        await request(ws, type="subscribe", channel="lobby")
        assert (await receive(ws))["type"] == "subscribed"
        await request(ws, type="subscribe", channel="other")
        assert (await receive(ws))["reason"] == "not allowed"
        # The default covers subscribing only; publishing stays closed.
        await request(ws, type="publish", channel="lobby", data="x")
        assert (await receive(ws))["reason"] == "not allowed"
        other = await open_client(lobby_only, "/ws/lobby", subject="erin")
        await request(other, type="publish", channel="lobby", data="from erin")
        assert (await message(ws))["data"] == "from erin"

    run(scenario())


def test_a_token_with_malformed_channel_claims_is_refused_401(start_service):
    service = start_service()
    claims = {"sub": "mallory", "exp": 4_000_000_000, "subscribe": ["no spaces allowed"]}
    bad = jwt.encode(claims, SECRET, algorithm="HS256")
    assert refusal(service, f"/ws?token={bad}", origin=ORIGIN) == 401
