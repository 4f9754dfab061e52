"""The message protocol: JSON text frames, one object per frame.

Client to server::

    {"type": "subscribe", "channel": "c"}
    {"type": "unsubscribe", "channel": "c"}
    {"type": "publish", "channel": "c", "data": <any JSON>}
    {"type": "echo", "data": <any JSON>}

Server to client::

    {"type": "welcome", "worker": "host:port", "channels": [...], "sub": "name"}
    {"type": "subscribed" | "unsubscribed", "channel": "c"}
    {"type": "message", "channel": "c", "data": ..., "from": "<sub>"}
    {"type": "echo", "data": ...}
    {"type": "error", "reason": "..."}
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

CHANNEL = re.compile(r"^[A-Za-z0-9_.:-]{1,64}$")
CHANNEL_RULE = "a channel is 1-64 characters of A-Z a-z 0-9 _ . : -"
MAX_CHANNELS_PER_CLIENT = 100


class ProtocolError(ValueError):
    """A frame the server answers with an error reply; the connection stays open."""


@dataclass(frozen=True)
class Request:
    type: str
    channel: str | None = None
    data: Any = None


def valid_channel(name: str) -> bool:
    return bool(CHANNEL.match(name))


def parse(text: str) -> Request:
    """Parse one client frame or raise ProtocolError saying what is wrong."""
    try:
        frame = json.loads(text)
    except ValueError:
        raise ProtocolError("malformed JSON") from None
    if not isinstance(frame, dict):
        raise ProtocolError("a frame must be a JSON object")
    kind = frame.get("type")
    if kind in ("subscribe", "unsubscribe", "publish"):
        channel = frame.get("channel")
        if not isinstance(channel, str):
            raise ProtocolError(f"{kind} needs a string field 'channel'")
        if not valid_channel(channel):
            raise ProtocolError(CHANNEL_RULE)
        if kind == "publish":
            if "data" not in frame:
                raise ProtocolError("publish needs a field 'data'")
            return Request(kind, channel, frame["data"])
        return Request(kind, channel)
    if kind == "echo":
        if "data" not in frame:
            raise ProtocolError("echo needs a field 'data'")
        return Request(kind, data=frame["data"])
    if kind is None:
        raise ProtocolError("missing field 'type'")
    raise ProtocolError(f"unknown type {str(kind)[:32]!r}")


def encode(kind: str, **fields: Any) -> str:
    return json.dumps({"type": kind, **fields}, separators=(",", ":"))
