"""Reading a service's frames as a client does: heartbeats are only a sign of life."""

from __future__ import annotations

import asyncio
import json


async def next_frame(ws, timeout: float = 10.0) -> dict:
    """The next frame that is not a heartbeat, within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), max(0.0, deadline - loop.time())))
        if frame.get("type") != "heartbeat":
            return frame
