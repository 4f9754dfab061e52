"""The bus of a service run without Redis: history and delivery inside one process."""

from __future__ import annotations

import asyncio
import uuid
from collections import Counter, deque

from wssfleet.broker import (
    FRAME_TAIL,
    Bus,
    Deliver,
    History,
    Limits,
    Position,
    PublishRefused,
    Resync,
    is_after,
)


class MemoryBus(Bus):
    """The bus of a process that runs alone: history in memory, same offsets and answers."""

    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.history_size = limits.history_size
        self.history_ttl = limits.history_ttl
        self.connected = True
        self.connected_at = 0.0
        self.received = 0
        self.epoch = uuid.uuid4().hex[:8]
        self._histories: dict[str, deque[tuple[str, str]]] = {}
        self._bytes: dict[str, int] = {}
        self._started_by: dict[str, str] = {}
        self._trimmed: dict[str, str] = {}
        self._sequence = 0
        # (channel, subject, publish id) -> (offset, when)
        self._keys: dict[tuple[str, str, str], tuple[str, float]] = {}
        # Per subject: publish ids remembered, channels whose history it started.
        self._ids_of: Counter[str] = Counter()
        self._channels_of: Counter[str] = Counter()
        self._touched: dict[str, float] = {}
        self._swept = 0.0
        self._deliver: Deliver = lambda channel, run: None

    def _expire(self, now: float) -> None:
        """Forget histories and publish keys older than history_ttl, as Redis would."""
        if now - self._swept < 1.0:
            return
        self._swept = now
        for channel in [c for c, at in self._touched.items() if now - at > self.history_ttl]:
            del self._touched[channel]
            self._histories.pop(channel, None)
            self._bytes.pop(channel, None)
            self._channels_of[self._started_by.pop(channel)] -= 1
            self._trimmed.pop(channel, None)
        for key in [k for k, (_, at) in self._keys.items() if now - at > self.history_ttl]:
            del self._keys[key]
            self._ids_of[key[1]] -= 1

    def start(self, deliver: Deliver, resync: Resync) -> None:
        self._deliver = deliver

    async def stop(self) -> None:
        return None

    def want(self, channel: str) -> None:
        return None

    async def ready(self, channel: str) -> None:
        return None

    def is_ready(self, channel: str) -> bool:
        return True

    def release(self, channel: str) -> None:
        return None

    async def wait_connected(self) -> None:
        return None

    async def publish(self, channel: str, head: str, subject: str, message_key: str | None) -> str:
        now = asyncio.get_running_loop().time()
        self._expire(now)
        limits = self.limits
        key = None if message_key is None else (channel, subject, message_key)
        if key is not None:
            if key in self._keys:
                return self._keys[key][0]
            if self._ids_of[subject] >= limits.publish_ids_per_subject:
                raise PublishRefused("too many publish ids of this subject await expiry")
            if len(self._keys) >= limits.publish_ids:
                raise PublishRefused("too many publish ids await expiry")
        if channel not in self._histories:
            if len(self._histories) >= limits.history_channels:
                raise PublishRefused("too many channels have history")
            if self._channels_of[subject] >= limits.history_channels_per_subject:
                raise PublishRefused("this subject started history on too many channels")
            self._started_by[channel] = subject
            self._channels_of[subject] += 1
        self._touched[channel] = now
        self._sequence += 1
        offset = f"{self.epoch}:{int(now * 1000):013d}-{self._sequence:06d}"
        history = self._histories.setdefault(channel, deque())
        history.append((offset, head))
        held = self._bytes.get(channel, 0) + len(head.encode())
        while len(history) > self.history_size or held > limits.history_max_bytes:
            trimmed, trimmed_head = history.popleft()
            self._trimmed[channel] = trimmed
            held -= len(trimmed_head.encode())
        self._bytes[channel] = held
        if key is not None:
            self._keys[key] = (offset, now)
            self._ids_of[subject] += 1
        self.received += 1
        self._deliver(channel, [(offset, head + offset + FRAME_TAIL)])
        return offset

    async def since(self, channel: str, offset: str | None) -> History:
        self._expire(asyncio.get_running_loop().time())
        history = self._histories.get(channel, deque())
        latest = history[-1][0] if history else ""
        if offset is None:
            return History(latest, False)
        trimmed = self._trimmed.get(channel)
        if offset == "":
            if trimmed is not None:
                return History(latest, False)
            return History(latest, True, [(o, head + o + FRAME_TAIL) for o, head in history])
        position = Position.parse(offset)
        if (
            position is None
            or position.epoch != self.epoch
            or (latest and is_after(offset, latest))
            or not latest
            or (trimmed is not None and is_after(trimmed, offset))
        ):
            return History(latest, False)
        missed = [(o, head + o + FRAME_TAIL) for o, head in history if is_after(o, offset)]
        return History(latest, True, missed)
