"""A token's channel patterns: what they match, and that no pattern the grammar allows makes
a match slow (a backtracking regex took 2.75 s for ``*a*a*a*a*a*a*a*a*b`` on 40 characters,
18 s with ten stars, and the process served nobody meanwhile)."""

from __future__ import annotations

import random
import re
import time

import pytest

from tests.unit.clients import open_client, receive, request, run
from tests.unit.helpers import token
from wssfleet import auth

ALPHABET = "ab.:"


def reference(pattern: str, channel: str) -> bool:
    """The patterns' meaning, as the regex the service used before: ``*`` is any run."""
    regex = re.escape(pattern).replace(r"\*", "[A-Za-z0-9_.:-]*")
    return re.fullmatch(regex, channel) is not None


@pytest.mark.parametrize("seed", range(4))
def test_patterns_match_what_they_always_meant(seed):
    rng = random.Random(seed)
    for _ in range(3000):
        pattern = "".join(rng.choice(ALPHABET + "**") for _ in range(rng.randint(1, 8)))
        channel = "".join(rng.choice(ALPHABET) for _ in range(rng.randint(1, 10)))
        assert auth.allows((pattern,), channel) == reference(pattern, channel), (pattern, channel)


@pytest.mark.parametrize(
    ("patterns", "channel", "allowed"),
    [
        (("lobby",), "lobby", True),
        (("lobby",), "lobby2", False),
        (("user.alice.*",), "user.alice.inbox", True),
        (("user.alice.*",), "user.alice.", True),
        (("user.alice.*",), "user.bob.inbox", False),
        (("*.news",), "eu.news", True),
        (("a*a",), "a", False),
        (("a*b*a",), "aba", True),
        (("a*b*a",), "ab", False),
        (("*",), "anything", True),
        ((), "lobby", False),
        (("x", "y*"), "yes", True),
    ],
)
def test_examples(patterns, channel, allowed):
    assert auth.allows(patterns, channel) is allowed


def worst_patterns() -> list[str]:
    """The slowest patterns the grammar allows (64 characters): many stars between parts
    that almost match, against a channel of 64 characters that fails only at its end."""
    return [
        "*a" * 31 + "*b",
        "*" + "a*" * 31 + "b",
        "a*" * 32,
        "*aa" * 21 + "*",
    ]


def test_the_worst_pattern_the_grammar_allows_matches_in_under_a_millisecond():
    channel = "a" * 64
    patterns = tuple(worst_patterns()) + tuple(f"*{'a' * n}*b" for n in range(1, 60))
    assert len(patterns) <= auth.MAX_PATTERNS
    auth.check_patterns(patterns)
    auth.allows(patterns, "warm")  # the patterns are prepared once per token's list
    started = time.perf_counter()
    for _ in range(100):
        auth.allows(patterns, channel)
    each = (time.perf_counter() - started) / 100
    assert each < 0.001, f"{each * 1000:.2f} ms a match"


def test_a_client_holding_the_worst_pattern_leaves_others_served(start_service):
    """Against the real service: the worst pattern's subscribes are refused at once, and a
    bystander connects and subscribes meanwhile within a second."""
    service = start_service()
    hostile = token("mallory", channels=("*a" * 9 + "*b", "*" + "a*" * 31 + "b"))

    async def scenario():
        attacker = await open_client(service, subject="mallory", token_text=hostile)
        started = time.monotonic()
        for n in range(20):
            await request(attacker, type="subscribe", channel="a" * 63 + str(n % 10))
        answers = [await receive(attacker) for _ in range(20)]
        bystander = await open_client(service, subject="bob")
        await request(bystander, type="subscribe", channel="lobby")
        answer = await receive(bystander)
        return answers, answer, time.monotonic() - started

    answers, answer, took = run(scenario())
    assert {a["type"] for a in answers} == {"error"}, answers
    assert answer["type"] == "subscribed", answer
    assert took < 1.0, took
