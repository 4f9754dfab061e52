"""Frames an attacker sends once upgraded: floods of pings and pongs that it never reads the
answers to, and a stream of frames faster than the service reads. Each costs the service a
bounded amount of memory, and a flood is closed with 1008. Raw sockets, because a client
library would answer, pace or refuse what an attacker sends."""

from __future__ import annotations

import asyncio
import struct
import time

import pytest

from tests.frames import masked
from tests.unit.clients import open_client, run
from tests.unit.helpers import ORIGIN, resident_kib, token

CLIENTS = 20
# What each flooding client sends at most, and for how long at most.
FLOOD_BYTES = 8 * 2**20
FLOOD_SECONDS = 6.0
# The service's default messages_per_second: a client may overdraw it by one second's worth.
RATE = 50
# Before these bounds, 20 clients grew the process by 150-560 MiB (issue #33: 40 clients
# flooding pings left 58 MiB each buffered; unsolicited pongs grew each read buffer to 4 MiB).
GROWTH_BOUND_KIB = 24 * 1024


async def upgraded(port: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A raw connection past its 101."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        f"GET /ws?token={token()} HTTP/1.1\r\nHost: wss.example.test\r\nUpgrade: websocket\r\n"
        "Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
        f"Sec-WebSocket-Version: 13\r\nOrigin: {ORIGIN}\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return reader, writer


async def close_code(reader: asyncio.StreamReader, timeout: float = 10.0) -> int | None:
    """The code of the service's close frame, skipping what comes before it; None if the
    connection ends without one."""
    deadline = time.monotonic() + timeout
    try:
        while True:
            left = deadline - time.monotonic()
            first, second = await asyncio.wait_for(reader.readexactly(2), left)
            length = second & 0x7F
            if length == 126:
                (length,) = struct.unpack("!H", await reader.readexactly(2))
            elif length == 127:
                (length,) = struct.unpack("!Q", await reader.readexactly(8))
            payload = await reader.readexactly(length)
            if first & 0x0F == 0x8:
                return struct.unpack("!H", payload[:2])[0] if payload else 1005
    except (asyncio.IncompleteReadError, ConnectionError):
        return None


async def flood(port: int, frame: bytes) -> int | None:
    """Send ``frame`` over and over without reading, then read the close code."""
    reader, writer = await upgraded(port)
    chunk = frame * (65536 // len(frame))
    sent, started = 0, time.monotonic()
    try:
        while sent < FLOOD_BYTES and time.monotonic() - started < FLOOD_SECONDS:
            writer.write(chunk)
            await asyncio.wait_for(writer.drain(), FLOOD_SECONDS)
            sent += len(chunk)
    except (ConnectionError, TimeoutError):
        pass  # the service stopped reading, or hung up: what is measured is what it kept
    code = await close_code(reader)
    writer.close()
    return code


async def burst(port: int, frame: bytes) -> int | None:
    """Send four seconds' worth of ``frame`` at once (it fits the sockets' buffers), then read:
    the close frame is there before the service drops the connection."""
    reader, writer = await upgraded(port)
    writer.write(frame * (4 * RATE))
    await writer.drain()
    code = await close_code(reader)
    writer.close()
    return code


def flooded(service, frame: bytes) -> tuple[list[int | None], int]:
    """The close codes of CLIENTS flooding ``frame``, and how much the process grew."""
    before = resident_kib(service.process.pid)

    async def scenario():
        return await asyncio.gather(*(flood(service.port, frame) for _ in range(CLIENTS)))

    codes = run(scenario())
    return codes, resident_kib(service.process.pid) - before


def closed_for_flooding(service) -> float:
    return service.metrics()[("wssfleet_closes_total", (("reason", "control_flood"),))]


@pytest.mark.parametrize(("opcode", "kind"), [(0x9, "pings"), (0xA, "unsolicited pongs")])
def test_a_control_frame_flood_that_never_reads_is_closed_1008(start_service, opcode, kind):
    service = start_service(metrics=True)
    frame = masked(opcode, b"p" * 125)
    codes, growth = flooded(service, frame)
    assert closed_for_flooding(service) == CLIENTS
    # A client that reads nothing may find its connection reset before it reads the close
    # frame (the service drops it close_timeout after that frame, and the reset discards what
    # the client had not read; on a loaded machine every flooder may miss it): none saw
    # another code.
    assert set(codes) <= {1008, None}, codes
    assert growth < GROWTH_BOUND_KIB, f"{kind}: the process grew by {growth} KiB"
    # One that sends a bounded burst, then reads, is told why.
    assert run(burst(service.port, frame)) == 1008
    assert closed_for_flooding(service) == CLIENTS + 1


def test_a_ping_within_the_rate_is_answered_with_its_payload(start_service):
    service = start_service(metrics=True)

    async def scenario():
        ws = await open_client(service)
        for n in range(5):
            waiter = await ws.ping(f"ping {n}".encode())
            await asyncio.wait_for(waiter, 5)
        return True

    assert run(scenario())
    assert closed_for_flooding(service) == 0


def test_frames_sent_faster_than_they_are_read_keep_the_read_buffer_small(start_service):
    """Clients that stream small frames (each answered, rate-limited or not) and read what
    they are sent. Before the bound, picows doubled a read buffer at each full read and never
    shrank it: measured while the clients stay connected, 40 of them grew the process by 34
    MiB (1.6 MiB with the bound)."""
    service = start_service()
    frame = masked(0x1, b'{"type":"echo","data":1}')
    chunk = frame * (65536 // len(frame))
    clients = 2 * CLIENTS

    async def stream(measured: asyncio.Event, done: list[int]) -> None:
        reader, writer = await upgraded(service.port)

        async def drain_answers() -> None:
            while await reader.read(65536):
                pass

        reading = asyncio.create_task(drain_answers())
        started = time.monotonic()
        try:
            while time.monotonic() - started < 2.0:
                writer.write(chunk)
                await writer.drain()
            done.append(1)
            await measured.wait()
        finally:
            writer.close()
            reading.cancel()

    async def scenario() -> int:
        measured, done = asyncio.Event(), []
        streams = asyncio.gather(*(stream(measured, done) for _ in range(clients)))
        while len(done) < clients:
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)  # what the kernel still held is read
        growth = resident_kib(service.process.pid) - before
        measured.set()
        await streams
        return growth

    before = resident_kib(service.process.pid)
    growth = run(scenario())
    assert growth < 8 * 1024, f"the process grew by {growth} KiB"
