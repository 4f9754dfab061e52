"""The message plane: where a published message is stored, numbered and carried to every process
that serves its channel.

Every message gets an offset when it is stored: ``<epoch>:<milliseconds>-<sequence>``, zero
padded so that, within a channel, a later message's offset sorts after an earlier one's. The
epoch names one life of a channel's history: when the history is gone (expired, flushed,
evicted) the next message starts a new epoch, so an offset from before can never be mistaken for
one the history still reaches.

Two buses share one interface (this module):

- ``RedisBus`` (redis_broker.py) keeps each channel's history in a Redis stream (trimmed to
  ``history_size``, expiring ``history_ttl`` after the last message) and carries messages to
  the processes over pub/sub, one Redis channel per wssfleet channel, subscribed only while a
  process serves it. A Redis function (redis_functions.py) stores and publishes in one step,
  so pub/sub order is history order.
- ``MemoryBus`` (memory_broker.py) does the same inside one process, for a service run
  without Redis.

Frames are built once: the hub passes the message frame without its closing offset (``head``),
the bus appends ``offset"}``; nothing on the hot path decodes JSON.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field

OFFSET = re.compile(r"([0-9a-f]{1,32}):([0-9]{13,20})-([0-9]{6,20})")
FRAME_TAIL = '"}'


class BusUnavailable(Exception):
    """The bus could not store or read a message now; the caller says so to its client."""


class PublishRefused(Exception):
    """A publish past one of the deployment's bounds (history channels, pending ids): the
    message is not stored, and the publisher hears why."""


class NotConfirmed(Exception):
    """A publish with an id that the primary stored but no replica confirmed in time: it might
    not survive the primary, so it is not acknowledged; sent again with the same id, it is
    stored once and confirmed then."""


@dataclass(frozen=True)
class Limits:
    """The bounds a bus enforces on what publishers store (see ClientPolicy)."""

    history_size: int
    history_ttl: int
    history_max_bytes: int = 512 * 2**10
    max_publish_bytes: int = 16384
    history_channels: int = 200
    history_channels_per_subject: int = 50
    publish_ids_per_subject: int = 50_000
    publish_ids: int = 50_000


@dataclass(frozen=True, order=True)
class Position:
    """Where an offset points: its epoch and its place in that epoch's history."""

    epoch: str
    milliseconds: int
    sequence: int

    @classmethod
    def parse(cls, offset: str) -> Position | None:
        match = OFFSET.fullmatch(offset)
        if match is None:
            return None
        return cls(match[1], int(match[2]), int(match[3]))

    @property
    def stream_id(self) -> str:
        return f"{self.milliseconds}-{self.sequence}"


def offset_of(epoch: str, stream_id: str) -> str:
    milliseconds, sequence = stream_id.split("-")
    return f"{epoch}:{int(milliseconds):013d}-{int(sequence):06d}"


def is_after(offset: str, reference: str | None) -> bool:
    """Whether ``offset`` comes after ``reference`` in its channel. A message of another
    epoch counts as later: a new history starts after the old one ended. (Called for every
    message: compares the padded text instead of parsing.)"""
    if not reference:
        return True
    epoch, _, place = offset.partition(":")
    reference_epoch, _, reference_place = reference.partition(":")
    if epoch != reference_epoch:
        return True
    return (len(place), place) > (len(reference_place), reference_place)


@dataclass(frozen=True)
class History:
    """A channel's history as seen from an offset: what came after it, and whether that is
    all of it."""

    latest: str
    recovered: bool
    missed: list[tuple[str, str]] = field(default_factory=list)


# A channel and a run of its messages in order: (offset, complete frame) each.
Deliver = Callable[[str, list[tuple[str, str]]], None]
# Called with the channels whose messages may have been missed while the bus was away.
Resync = Callable[[list[str]], None]


class Bus:
    """What the hub needs from a bus."""

    connected: bool
    received: int

    def start(self, deliver: Deliver, resync: Resync) -> None:
        raise NotImplementedError

    async def stop(self) -> None:
        raise NotImplementedError

    def want(self, channel: str) -> None:
        """This process serves ``channel``: carry its messages here (see ``ready``)."""
        raise NotImplementedError

    async def ready(self, channel: str) -> None:
        """Return once messages of a wanted ``channel`` published from now on reach
        ``deliver``."""
        raise NotImplementedError

    def is_ready(self, channel: str) -> bool:
        """Whether ``ready`` would return at once: the bus is connected and carries the
        channel's messages here."""
        raise NotImplementedError

    def release(self, channel: str) -> None:
        """This process no longer serves ``channel``."""
        raise NotImplementedError

    async def publish(self, channel: str, head: str, subject: str, message_key: str | None) -> str:
        """Store and carry a message of ``subject``; its offset. ``message_key`` (the publish
        id) makes a retry return the first attempt's offset instead of storing it again."""
        raise NotImplementedError

    async def since(self, channel: str, offset: str | None) -> History:
        """What the channel's history holds after ``offset``: None asks only for its latest
        offset, "" (a client that saw the channel empty) for all of it."""
        raise NotImplementedError

    async def wait_connected(self) -> None:
        raise NotImplementedError
