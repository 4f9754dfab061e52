"""WebSocket clients for the service tests: open, send, receive, expect, and close them all."""

from __future__ import annotations

import asyncio
import json

import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.frames import next_frame
from tests.unit.helpers import ORIGIN, token

OPENED: list[ClientConnection] = []


def run(coroutine):
    """Run a scenario, then close every client it opened, as a well-behaved client does."""

    async def scenario():
        try:
            return await asyncio.wait_for(coroutine, timeout=30)
        finally:
            clients = [OPENED.pop() for _ in range(len(OPENED))]
            await asyncio.gather(*(ws.close() for ws in clients), return_exceptions=True)

    return asyncio.run(scenario())


async def open_client(
    service,
    path: str = "/ws",
    subject: str = "alice",
    token_text: str | None = None,
    subscribed: bool = True,
    **options,
) -> ClientConnection:
    """A client past its welcome (and, with ``subscribed``, its path channel's answer)."""
    options.setdefault("origin", ORIGIN)
    separator = "&" if "?" in path else "?"
    credential = token_text or token(subject)
    ws = await connect(f"{service.url}{path}{separator}token={credential}", **options)
    OPENED.append(ws)
    welcome = await receive(ws)
    assert welcome["type"] == "welcome"
    if path.startswith("/ws/") and subscribed:
        # The path's channel is subscribed as by a subscribe frame, with the same answer.
        answer = await receive(ws)
        assert answer["type"] == "subscribed", answer
    return ws


async def receive(ws: ClientConnection, timeout: float = 5.0) -> dict:
    return await next_frame(ws, timeout)


async def request(ws: ClientConnection, **frame) -> None:
    await ws.send(json.dumps(frame))


async def expect_nothing(ws: ClientConnection, seconds: float = 0.3) -> None:
    with pytest.raises(TimeoutError):
        await asyncio.wait_for(ws.recv(), seconds)


async def subscribed(ws: ClientConnection, channel: str) -> str:
    """Subscribe and return the channel's latest offset."""
    await request(ws, type="subscribe", channel=channel)
    answer = await receive(ws)
    assert answer.keys() == {"type", "channel", "offset"}, answer
    assert (answer["type"], answer["channel"]) == ("subscribed", channel)
    return answer["offset"]


async def message(ws: ClientConnection, timeout: float = 5.0) -> dict:
    """The next frame, a message; its offset checked and left out, for comparing."""
    frame = await receive(ws, timeout)
    assert frame["type"] == "message", frame
    assert isinstance(frame.pop("offset"), str)
    return frame
