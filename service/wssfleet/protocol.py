"""The message protocol: JSON text frames, one object per frame.

Client to server::

    {"type": "subscribe", "channel": "c"}
    {"type": "subscribe", "channel": "c", "since": "<offset>"}
    {"type": "unsubscribe", "channel": "c"}
    {"type": "publish", "channel": "c", "data": <any JSON>}
    {"type": "publish", "channel": "c", "data": <any JSON>, "id": "<string or integer>"}
    {"type": "echo", "data": <any JSON>}
    {"type": "refresh", "token": "<a fresher token for the same subject>"}

Any of them may carry "id" (a string or an integer): the answer, an error included, names it.

Server to client::

    {"type": "welcome", "worker": "host:port", "channels": [...], "sub": "name", "heartbeat": S,
     "expires": <the token's exp, Unix seconds>}
    {"type": "heartbeat"}   (when nothing else was sent for S seconds)
    {"type": "subscribed", "channel": "c", "offset": "<latest offset or empty>"}
    {"type": "subscribed", "channel": "c", "recovered": true, "missed": N}  (then N messages)
    {"type": "subscribed", "channel": "c", "recovered": false, "offset": "<latest>"}
    {"type": "unsubscribed", "channel": "c"}
    {"type": "message", "channel": "c", "data": ..., "from": "<sub>", "offset": "<offset>"}
    {"type": "published", "id": "x", "offset": "<offset>"}
    {"type": "echo", "data": ...}
    {"type": "refreshed", "expires": <Unix seconds>}
    {"type": "error", "reason": "..."}   (with the request's "id" when it had one)
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

# orjson: a quarter of the standard library's time per frame (bench/), and strict: NaN,
# Infinity and lone surrogates are malformed JSON, so they never reach other clients.
import orjson

# The frames' types, each list the one the parser, the hub and the metrics read.
CLIENT_TYPES = ("echo", "subscribe", "unsubscribe", "publish", "refresh")
SERVER_TYPES = (
    "message",
    "welcome",
    "echo",
    "subscribed",
    "unsubscribed",
    "published",
    "error",
    "heartbeat",
    "refreshed",
)
# How much longer than the welcome's "heartbeat" a client waits in silence before it takes the
# connection for dead and reconnects (the client contract): room for a busy event loop.
HEARTBEAT_GRACE = 5

# The close codes the service sends (RFC 6455, 7.4.1, and its own 4xxx).
CLOSE_GOING_AWAY = 1001
CLOSE_UNSUPPORTED = 1003
CLOSE_POLICY = 1008
CLOSE_TOO_BIG = 1009
CLOSE_INTERNAL_ERROR = 1011
# Service Restart: the client reconnects (after a short random delay) and lands elsewhere.
CLOSE_SERVICE_RESTART = 1012
# The connection's token expired and no fresher one came (a refresh): the client gets a new
# token and reconnects; the shipped clients ask the application's callback for it.
CLOSE_TOKEN_EXPIRED = 4001
# A token subject already holds connections_per_subject connections on this process; like
# every 4xxx code, the client contract does not retry it.
CLOSE_TOO_MANY_CONNECTIONS = 4029

CHANNEL = re.compile(r"[A-Za-z0-9_.:-]{1,64}")
CHANNEL_RULE = "a channel is 1-64 characters of A-Z a-z 0-9 _ . : -"
MAX_CHANNELS_PER_CLIENT = 100
MAX_ID_CHARACTERS = 64
MAX_OFFSET_CHARACTERS = 80
MAX_TOKEN_CHARACTERS = 8192


class ProtocolError(ValueError):
    """A frame the server answers with an error reply (naming the frame's ``id`` when it had a
    valid one); the connection stays open."""

    id: str | int | None = None


@dataclass(slots=True)
class Request:
    type: str
    channel: str | None = None
    data: Any = None
    since: str | None = None
    id: str | int | None = None


def valid_channel(name: str) -> bool:
    return CHANNEL.fullmatch(name) is not None


def parse(text: str) -> Request:
    """Parse one client frame or raise ProtocolError saying what is wrong."""
    try:
        frame = orjson.loads(text)
    except orjson.JSONDecodeError:
        raise ProtocolError("malformed JSON") from None
    if not isinstance(frame, dict):
        raise ProtocolError("a frame must be a JSON object")
    request_id = _request_id(frame)
    try:
        return _request(frame, request_id)
    except ProtocolError as error:
        error.id = request_id
        raise


def _request(frame: dict[str, Any], request_id: str | int | None) -> Request:
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
            return Request(kind, channel, frame["data"], id=request_id)
        if kind == "subscribe" and "since" in frame:
            return Request(kind, channel, since=_since(frame["since"]), id=request_id)
        return Request(kind, channel, id=request_id)
    if kind == "echo":
        if "data" not in frame:
            raise ProtocolError("echo needs a field 'data'")
        return Request(kind, data=frame["data"], id=request_id)
    if kind == "refresh":
        token = frame.get("token")
        if not isinstance(token, str) or not 0 < len(token) <= MAX_TOKEN_CHARACTERS:
            raise ProtocolError(f"refresh needs a string 'token' of at most {MAX_TOKEN_CHARACTERS}")
        return Request(kind, data=token, id=request_id)
    if kind is None:
        raise ProtocolError("missing field 'type'")
    raise ProtocolError(f"unknown type {str(kind)[:32]!r}")


def _request_id(frame: dict[str, Any]) -> str | int | None:
    value = frame.get("id")
    if value is None:
        return None
    valid_text = isinstance(value, str) and 1 <= len(value) <= MAX_ID_CHARACTERS
    if not (valid_text or (isinstance(value, int) and not isinstance(value, bool))):
        raise ProtocolError(f"'id' is a string of 1-{MAX_ID_CHARACTERS} characters or an integer")
    return value


def _since(value: Any) -> str:
    if not isinstance(value, str) or len(value) > MAX_OFFSET_CHARACTERS:
        raise ProtocolError("'since' is an offset this service sent (a string)")
    return value


def message_head(channel: str, data: Any, sender: str) -> str:
    """A message frame up to its offset, which the bus appends when it stores the message."""
    frame = encode("message", channel=channel, data=data, **{"from": sender})
    return frame[:-1].decode() + ',"offset":"'


def encode(kind: str, **fields: Any) -> bytes:
    """A server frame's JSON text, UTF-8 encoded."""
    return orjson.dumps({"type": kind, **fields})
