"""What one token holder can store in Redis is bounded: a channel's history by bytes, the
channels with history (all of them, and those one subject started), the publish ids one
subject has pending, and the size of a published message. Real redis-server, deployed ACLs."""

from __future__ import annotations

import time

from tests.unit.clients import open_client, receive, request, run

BOUNDS = {
    "WSSFLEET_MESSAGES_PER_SECOND": "100000",
    "WSSFLEET_MAX_PUBLISH_BYTES": "8192",
    "WSSFLEET_HISTORY_MAX_BYTES": "32768",
    "WSSFLEET_HISTORY_CHANNELS": "40",
    "WSSFLEET_HISTORY_CHANNELS_PER_SUBJECT": "5",
    "WSSFLEET_PUBLISH_IDS_PER_SUBJECT": "200",
}


async def publish(ws, channel: str, data: object, message_id: object = None) -> dict:
    """Publish and wait for the answer: with an id, its acknowledgement or error; without, the
    error if there is one, else the message itself, which the publisher (subscribed to every
    channel it publishes on in these tests) hears back."""
    frame = {"type": "publish", "channel": channel, "data": data}
    if message_id is not None:
        frame["id"] = message_id
    await request(ws, **frame)
    if message_id is None:
        await request(ws, type="echo", data="sync")
        while (answer := await receive(ws))["type"] != "echo":
            if answer["type"] == "error":
                return answer
        return {"type": "published"}
    while True:
        answer = await receive(ws)
        if answer["type"] in ("published", "error"):
            return answer


def test_one_subject_cannot_fill_redis_and_others_keep_publishing(start_service, redis_server):
    # Small enough that the attack below, unbounded, would fill it many times over.
    redis_server.cli("CONFIG", "SET", "maxmemory", "16mb")
    service = start_service(redis_server.url, **BOUNDS)
    payload = "x" * 7000

    async def scenario() -> tuple[dict[str, int], int]:
        attacker = await open_client(service, subject="mallory")
        victim = await open_client(service, subject="victim")
        refusals: dict[str, int] = {}
        acknowledged = 0
        deadline = time.monotonic() + 20
        for n in range(2000):
            if time.monotonic() > deadline:
                break
            # New channels, new ids (every other message), messages as large as allowed.
            message_id = f"m{n}" if n % 2 else None
            answer = await publish(attacker, f"x.{n % 10}", payload, message_id)
            if answer["type"] == "error":
                reason = answer["reason"]
                refusals[reason] = refusals.get(reason, 0) + 1
            if n % 20 == 0:
                ack = await publish(victim, "lobby", {"n": n}, f"v{n}")
                assert ack["type"] == "published", ack
                acknowledged += 1
        return refusals, acknowledged

    refusals, acknowledged = run(scenario())
    assert acknowledged >= 50
    assert refusals.get("not published: this subject started history on too many channels")
    assert refusals.get("not published: too many publish ids of this subject await expiry")
    assert not any("unavailable" in reason or "OOM" in reason for reason in refusals)
    used = redis_server.cli("INFO", "memory")["used_memory"]
    assert used < 12 * 2**20, used
    # The attacker's histories are within their byte budget.
    for n in range(5):
        state = redis_server.cli("HGET", f"wssfleet:history-state:x.{n}", "bytes")
        if state is not None:
            assert int(state) <= 32768


def test_a_published_message_over_max_publish_bytes_is_refused_and_echo_is_not(start_service):
    service = start_service(**BOUNDS)

    async def scenario() -> tuple[dict, dict]:
        ws = await open_client(service)
        refused = await publish(ws, "room", "y" * 9000, 1)
        await request(ws, type="echo", data="y" * 9000)
        return refused, await receive(ws)

    refused, echoed = run(scenario())
    assert refused == {
        "type": "error",
        "reason": "not published: over max_publish_bytes=8192",
        "channel": "room",
        "id": 1,
    }
    assert echoed == {"type": "echo", "data": "y" * 9000}


def test_a_channels_history_keeps_its_newest_messages_within_its_byte_budget(
    start_service, redis_server
):
    service = start_service(redis_server.url, **BOUNDS)

    async def scenario() -> dict:
        ws = await open_client(service)
        for n in range(40):
            assert (await publish(ws, "room", [n, "z" * 4000], n))["type"] == "published"
        late = await open_client(service, "/ws/room?since=", subscribed=False)
        answer = await receive(late)
        recovered = [await receive(late) for _ in range(answer.get("missed", 0))]
        return {"answer": answer, "numbers": [frame["data"][0] for frame in recovered]}

    seen = run(scenario())
    # Not every message fits 32 KiB: a reader from the start hears that it missed some,
    # and a reader of what is kept gets the newest ones, in order.
    assert seen["answer"]["recovered"] is False
    held = int(redis_server.cli("HGET", "wssfleet:history-state:room", "bytes"))
    entries = redis_server.cli("XRANGE", "wssfleet:history:room", "-", "+")
    assert held <= 32768
    assert held == sum(len(fields[b"f"]) for _, fields in entries)
    assert 6 <= len(entries) <= 8


def test_publish_ids_of_different_subjects_and_channels_never_collide(start_service, redis_server):
    service = start_service(redis_server.url, **BOUNDS)

    async def scenario() -> tuple[dict, dict, dict]:
        # 'a' + 'b:c' and 'a:b' + 'c' joined with ':' would make the same key.
        first = await open_client(service, subject="b:c")
        second = await open_client(service, subject="c")
        reader = await open_client(service, "/ws/a:b", subject="reader")
        stored = await publish(first, "a", "from b:c", "same")
        other = await publish(second, "a:b", "from c", "same")
        return stored, other, await receive(reader)

    stored, other, heard = run(scenario())
    assert stored["type"] == other["type"] == "published"
    assert stored["offset"] != other["offset"]
    assert (heard["type"], heard["data"], heard["from"]) == ("message", "from c", "c")


def test_channels_with_history_are_bounded_for_the_whole_deployment(start_service, redis_server):
    service = start_service(redis_server.url, **BOUNDS)

    async def scenario() -> list[str]:
        answers = []
        for subject in range(9):
            ws = await open_client(service, subject=f"user{subject}")
            for channel in range(5):
                answer = await publish(ws, f"c.{subject}.{channel}", "hi", 1 + channel)
                answers.append(answer.get("reason", answer["type"]))
        return answers

    answers = run(scenario())
    # 40 channels may have history at once; the next five are refused aloud.
    assert answers.count("published") == 40
    assert answers[40:] == ["not published: too many channels have history"] * 5
    assert redis_server.cli("ZCARD", "wssfleet:history-channels") == 40


def test_many_subjects_together_cannot_remember_more_ids_than_the_fleet_counts(
    start_service, redis_server
):
    """publish_ids_per_subject alone left any number of subjects 50,000 ids each: the fleet
    caps them together (publish_ids), which the deploy counts against redis_maxmemory."""
    service = start_service(
        redis_server.url, WSSFLEET_PUBLISH_IDS="30", WSSFLEET_PUBLISH_IDS_PER_SUBJECT="10"
    )

    async def scenario() -> tuple[list[str], dict]:
        answers = []
        for subject in range(5):
            client = await open_client(service, subject=f"s{subject}")
            for n in range(8):
                answer = await publish(client, "lobby", n, f"{subject}-{n}")
                answers.append(answer["type"] if answer["type"] != "error" else answer["reason"])
        # Without an id nothing is remembered: still published.
        plain = await open_client(service, subject="plain")
        await request(plain, type="subscribe", channel="lobby")
        await receive(plain)
        await request(plain, type="publish", channel="lobby", data="no id")
        return answers, await receive(plain)

    answers, heard = run(scenario())
    assert answers.count("published") == 30, answers
    assert answers[30:] == ["not published: too many publish ids await expiry"] * 10, answers
    assert redis_server.cli("ZCARD", "wssfleet:publish-ids") == 30
    assert heard["type"] == "message" and heard["data"] == "no id", heard
