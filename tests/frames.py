"""Reading a service's frames as a client does: heartbeats are only a sign of life."""

from __future__ import annotations

import asyncio
import json
import os
import struct


async def next_frame(ws, timeout: float = 10.0) -> dict:
    """The next frame that is not a heartbeat, within ``timeout`` seconds."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        frame = json.loads(await asyncio.wait_for(ws.recv(), max(0.0, deadline - loop.time())))
        if frame.get("type") != "heartbeat":
            return frame


def masked(opcode: int, payload: bytes) -> bytes:
    """One masked, final client frame."""
    mask = os.urandom(4)
    length = len(payload)
    if length < 126:
        header = bytes((0x80 | opcode, 0x80 | length))
    elif length < 2**16:
        header = struct.pack("!BBH", 0x80 | opcode, 0x80 | 126, length)
    else:
        header = struct.pack("!BBQ", 0x80 | opcode, 0x80 | 127, length)
    key = int.from_bytes((mask * (length // 4 + 1))[:length], "big")
    body = (int.from_bytes(payload, "big") ^ key).to_bytes(length, "big")
    return header + mask + body
