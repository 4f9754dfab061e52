"""Handshakes an attacker sends: repeated headers the service decides on, a client-sent
X-Forwarded-For. Each is answered as a request, never as a crash, and leaves nothing behind."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.unit.clients import open_client, receive, request, run
from tests.unit.helpers import ORIGIN, resident_kib, token

# Per kind of handshake. A connection the service keeps costs it over 10 KiB (make bench's
# memory per idle connection), so one kept per handshake passes the 5 MiB bound below within
# 500 handshakes; more would only cost CPU, which the whole unit suite shares on two cores.
HANDSHAKES = 1500
# At once: enough to overlap, few enough for two cores and the default open-file limit.
CONCURRENT = 100


async def handshake(port: int, target: str, headers: str) -> bytes:
    """The status line a raw upgrade request gets; the socket is dropped after it."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET {target} HTTP/1.1\r\nHost: wss.example.test\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\n{headers}\r\n".encode()
    )
    status = await reader.readline()
    writer.close()
    return status


async def many(port: int, target: str, headers: str) -> set[bytes]:
    statuses: set[bytes] = set()
    for _ in range(HANDSHAKES // CONCURRENT):
        answers = await asyncio.gather(
            *(handshake(port, target, headers) for _ in range(CONCURRENT))
        )
        statuses.update(answers)
    return statuses


def wait_until_no_connections(service, seconds: float = 10.0) -> int:
    deadline = time.monotonic() + seconds
    while (count := service.health()["connections"]) and time.monotonic() < deadline:
        time.sleep(0.1)
    return count


HOSTILE = {
    # A client's own X-Forwarded-For beside the one a proxy adds, with a valid token: the
    # upgrade succeeds, and the connection must still be uncounted when it goes.
    "forwarded twice, valid token": (
        "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 198.51.100.1\r\n",
        True,
        b"101",
    ),
    "forwarded twice, bad token": (
        "X-Forwarded-For: 203.0.113.7\r\nX-Forwarded-For: 198.51.100.1\r\n",
        False,
        b"401",
    ),
    "two origins": (f"Origin: {ORIGIN}\r\nOrigin: https://evil.example\r\n", True, b"400"),
    "two authorizations": ("Authorization: Bearer a\r\nAuthorization: Bearer b\r\n", False, b"400"),
}


def test_hostile_handshakes_are_answered_and_leave_no_connection_nor_memory(start_service):
    service = start_service()
    # Where it starts: after as many plain upgrades as each attack makes, so the allocator's
    # pools are as big as that many connections make them; a leak grows beyond that.
    assert asyncio.run(many(service.port, f"/ws?token={token()}", "")) == {
        b"HTTP/1.1 101 Switching Protocols\r\n"
    }
    assert wait_until_no_connections(service) == 0
    started = resident_kib(service.process.pid)
    for kind, (headers, valid, status) in HOSTILE.items():
        credential = token() if valid else "not-a-token"
        statuses = asyncio.run(many(service.port, f"/ws?token={credential}", headers))
        assert {line.split()[1] for line in statuses} == {status}, (kind, statuses)
        assert wait_until_no_connections(service) == 0, kind
        grown = resident_kib(service.process.pid) - started
        assert grown < 5 * 1024, f"{kind}: RSS grew by {grown} KiB after {HANDSHAKES}"
    log = service.log.read_text()
    assert "Traceback" not in log
    assert '"level": "error"' not in log


@pytest.mark.parametrize("header", ["Origin", "Authorization"])
def test_a_repeated_decisive_header_is_refused_400_naming_it(start_service, header):
    service = start_service()
    value = ORIGIN if header == "Origin" else f"Bearer {token()}"
    status = asyncio.run(
        handshake(service.port, f"/ws?token={token()}", f"{header}: {value}\r\n" * 2)
    )
    assert status.startswith(b"HTTP/1.1 400"), status
    assert f"repeated {header} header" in service.log.read_text()


def test_the_logged_peer_is_the_last_forwarded_address(start_service):
    service = start_service()
    headers = "X-Forwarded-For: 203.0.113.7, 192.0.2.1\r\nX-Forwarded-For: 198.51.100.1\r\n"
    assert asyncio.run(handshake(service.port, "/ws?token=bad", headers)).startswith(
        b"HTTP/1.1 401"
    )
    events = [json.loads(line) for line in service.log.read_text().splitlines()]
    refusal = next(event for event in events if event["event"] == "reject")
    assert refusal["peer"].startswith("198.51.100.1 via 127.0.0.1:"), refusal


def test_one_subject_holds_at_most_connections_per_subject_and_others_are_not_affected(
    start_service,
):
    service = start_service(WSSFLEET_CONNECTIONS_PER_SUBJECT="3")

    async def scenario() -> tuple[int, str, dict]:
        held = [await open_client(service, subject="mallory") for _ in range(3)]
        extra = await connect(f"{service.url}/ws?token={token('mallory')}", origin=ORIGIN)
        with pytest.raises(ConnectionClosed) as closed:
            await receive(extra)
        bystander = await open_client(service, subject="alice")
        await request(bystander, type="echo", data=1)
        answer = await receive(bystander)
        # One leaves: its place is free again.
        await held.pop().close()
        while service.health()["connections"] > 3:
            await asyncio.sleep(0.05)
        await open_client(service, subject="mallory")
        return closed.value.rcvd.code, closed.value.rcvd.reason, answer

    code, reason, answer = run(scenario())
    assert (code, reason) == (4029, "too many connections for this subject")
    assert answer == {"type": "echo", "data": 1}
