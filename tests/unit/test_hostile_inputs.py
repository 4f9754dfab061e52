"""What a hostile client sends, raw, against the real service process: oversized and slow
upgrades, control frames that break RFC 6455, lengths that lie, deeply nested JSON, churn over
fresh channels, ambiguous credentials, and the protocol's own limits. Each is answered as the
RFC or the protocol says, costs a bounded amount, and leaves the process serving others."""

from __future__ import annotations

import asyncio
import json
import os
import struct
import time

import pytest

from tests.unit.clients import expect_nothing, open_client, receive, request, run
from tests.unit.helpers import ORIGIN, token, wait_until
from wssfleet.redis_broker import UNSUBSCRIBE_AFTER

UPGRADE = (
    "GET {target} {version}\r\nHost: wss.example.test\r\nUpgrade: websocket\r\n"
    "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
    "Sec-WebSocket-Version: {ws_version}\r\nOrigin: {origin}\r\n{headers}\r\n"
)


def upgrade_request(
    target: str | None = None,
    version: str = "HTTP/1.1",
    ws_version: str = "13",
    headers: str = "",
) -> bytes:
    return UPGRADE.format(
        target=target or f"/ws?token={token()}",
        version=version,
        ws_version=ws_version,
        origin=ORIGIN,
        headers=headers,
    ).encode()


async def answer_to(port: int, data: bytes, timeout: float = 5.0) -> bytes:
    """What the service sends back to ``data`` until it hangs up (or ``timeout``)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(data)
    received = b""
    try:
        async with asyncio.timeout(timeout):
            while chunk := await reader.read(65536):
                received += chunk
    except TimeoutError:
        pass
    except ConnectionError:
        pass
    writer.close()
    return received


def still_serves(service) -> bool:
    async def echo() -> bool:
        ws = await open_client(service)
        await request(ws, type="echo", data="ok")
        return (await receive(ws)) == {"type": "echo", "data": "ok"}

    return run(echo())


@pytest.mark.parametrize(
    ("name", "data", "status"),
    [
        ("huge request line", upgrade_request(target="/ws?pad=" + "a" * 20_000), None),
        ("huge headers", upgrade_request(headers="X-Pad: " + "b" * 20_000 + "\r\n"), None),
        ("huge token query", upgrade_request(target="/ws?token=" + "c" * 12_000), b"401"),
        ("HTTP/1.0 upgrade", upgrade_request(version="HTTP/1.0"), b"400"),
        ("wrong WebSocket version", upgrade_request(ws_version="12"), b"400"),
        (
            "a token in the header and the query",
            upgrade_request(headers=f"Authorization: Bearer {token()}\r\n"),
            b"400",
        ),
        ("two tokens in the query", upgrade_request(target=f"/ws?token=x&token={token()}"), b"400"),
    ],
    ids=lambda value: value if isinstance(value, str) else "",
)
def test_a_hostile_upgrade_is_answered_and_leaves_nothing(start_service, name, data, status):
    service = start_service()
    answer = asyncio.run(answer_to(service.port, data))
    if status is None:
        # Over picows' 16 KiB bound on a request: the connection is dropped unanswered.
        assert not answer.startswith(b"HTTP/1.1 101"), (name, answer[:100])
    else:
        assert answer.startswith(b"HTTP/1.1 " + status), (name, answer[:200])
    assert service.health()["connections"] == 0
    assert still_serves(service)


def test_a_slow_upgrade_is_dropped_after_the_handshake_deadline(start_service):
    """Slowloris: the request line, then a byte every second, never the end of the headers."""
    service = start_service()

    async def slow() -> float:
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        started = time.monotonic()
        writer.write(b"GET /ws HTTP/1.1\r\n")
        try:
            for _ in range(30):
                writer.write(b"X")
                await writer.drain()
                if reader.at_eof() or await _closed(reader):
                    break
        except ConnectionError:
            pass
        writer.close()
        return time.monotonic() - started

    took = asyncio.run(slow())
    assert took < 15, took  # HANDSHAKE_SECONDS (10 s), not the 30 s the client would take
    assert still_serves(service)


async def _closed(reader: asyncio.StreamReader) -> bool:
    try:
        return await asyncio.wait_for(reader.read(1), 1.0) == b""
    except TimeoutError:
        return False


def raw_frame(first: int, payload: bytes, mask: bool = True, length: int | None = None) -> bytes:
    """A client frame with its first byte as given (FIN, RSV, opcode), masked or not, and a
    declared length that may lie."""
    declared = len(payload) if length is None else length
    if declared < 126:
        header = bytes((first, (0x80 if mask else 0) | declared))
    elif declared < 2**16:
        header = struct.pack("!BBH", first, (0x80 if mask else 0) | 126, declared)
    else:
        header = struct.pack("!BBQ", first, (0x80 if mask else 0) | 127, declared)
    if not mask:
        return header + payload
    key = os.urandom(4)
    return header + key + bytes(byte ^ key[n % 4] for n, byte in enumerate(payload))


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        (raw_frame(0x89, b"p" * 126), 1002),  # a control frame over 125 bytes
        (raw_frame(0x09, b"ping"), 1002),  # a fragmented control frame
        (raw_frame(0x88, struct.pack("!H", 999)), 1002),  # a close code no one may send
        (raw_frame(0x88, struct.pack("!H", 1005)), 1002),  # a code reserved for "none"
        (raw_frame(0x81, b'{"type":"echo","data":1}', mask=False), 1002),  # unmasked
        (raw_frame(0x81, b"", length=2**62), 1009),  # a length far over max_message_bytes
    ],
    ids=[
        "control over 125",
        "fragmented control",
        "close code 999",
        "close code 1005",
        "unmasked",
        "huge declared length",
    ],
)
def test_a_frame_that_breaks_rfc_6455_closes_with_its_code(start_service, frame, code):
    service = start_service()

    async def scenario() -> int | None:
        reader, writer = await asyncio.open_connection("127.0.0.1", service.port)
        writer.write(upgrade_request())
        await reader.readuntil(b"\r\n\r\n")
        writer.write(frame)
        received = b""
        try:
            async with asyncio.timeout(5):
                while chunk := await reader.read(65536):
                    received += chunk
        except (TimeoutError, ConnectionError):
            pass
        writer.close()
        closing = received.rfind(b"\x88")
        return struct.unpack("!H", received[closing + 2 : closing + 4])[0] if closing >= 0 else None

    assert run(scenario()) == code
    assert still_serves(service)


def test_deeply_nested_json_is_an_error_reply_not_a_crash(start_service):
    service = start_service()
    nested = "[" * 30_000 + "]" * 30_000

    async def scenario():
        ws = await open_client(service)
        await ws.send(json.dumps({"type": "echo", "data": "x"})[:-1] + ', "deep": ' + nested + "}")
        first = await receive(ws)
        await ws.send(nested)
        second = await receive(ws)
        await request(ws, type="echo", data="after")
        return first, second, await receive(ws)

    first, second, after = run(scenario())
    assert first["type"] == second["type"] == "error", (first, second)
    assert after == {"type": "echo", "data": "after"}


def test_churn_over_fresh_channels_leaves_no_channel_behind(start_service, redis_server):
    service = start_service(redis_server.url, WSSFLEET_MESSAGES_PER_SECOND="100000")

    async def scenario():
        ws = await open_client(service)
        for n in range(1000):
            await request(ws, type="subscribe", channel=f"churn.{n}")
            await request(ws, type="unsubscribe", channel=f"churn.{n}")
        answers = [(await receive(ws))["type"] for _ in range(2000)]
        return answers

    answers = run(scenario())
    assert answers.count("subscribed") == answers.count("unsubscribed") == 1000
    assert service.health()["channels"] == 0
    # Nor in Redis, once their linger is over (UNSUBSCRIBE_AFTER, for a client that comes
    # straight back): the process holds no pub/sub subscription for them.
    wait_until(
        lambda: redis_server.cli("PUBSUB", "CHANNELS", "wssfleet:*churn*") == [],
        UNSUBSCRIBE_AFTER + 5,
        "the churned channels unsubscribed in Redis",
    )
    assert redis_server.cli("PUBSUB", "NUMPAT") == 0


def test_the_channel_and_since_limits_are_said_with_the_request(start_service):
    service = start_service(WSSFLEET_MESSAGES_PER_SECOND="100000")

    async def scenario():
        ws = await open_client(service)
        for n in range(100):
            await request(ws, type="subscribe", channel=f"c.{n}")
        subscribed = [(await receive(ws))["type"] for _ in range(100)]
        await request(ws, type="subscribe", channel="c.100", id="one-too-many")
        over = await receive(ws)
        await request(ws, type="subscribe", channel="c.0", since="x" * 81, id="long-since")
        long_since = await receive(ws)
        return subscribed, over, long_since

    subscribed, over, long_since = run(scenario())
    assert subscribed == ["subscribed"] * 100
    assert over == {
        "type": "error",
        "reason": "at most 100 channels",
        "channel": "c.100",
        "id": "one-too-many",
    }
    assert long_since["type"] == "error" and long_since["id"] == "long-since", long_since


def test_an_empty_frame_is_a_path_probe_answered_never_and_counted_against_the_rate(
    start_service,
):
    """The shipped browser client's path probe costs no parse and no answer; a flood of
    them is a flood like any other."""
    service = start_service(WSSFLEET_MESSAGES_PER_SECOND="5")

    async def scenario():
        ws = await open_client(service)
        await ws.send("")
        await expect_nothing(ws)
        await request(ws, type="echo", data="after a probe")
        answered = await receive(ws)
        for _ in range(20):
            await ws.send("")
        return answered, await receive(ws)

    answered, flooded = run(scenario())
    assert answered == {"type": "echo", "data": "after a probe"}
    assert flooded == {"type": "error", "reason": "rate limited: message dropped"}
