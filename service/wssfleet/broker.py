"""The Redis pub/sub bus that carries every published message to every service process.

Each process holds one subscription to one Redis channel and fans messages out in process.
Redis is optional at any moment: when it is down, publishing is skipped (local delivery
already happened) and a background task reconnects with capped, jittered backoff.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import random
import uuid
from collections.abc import Callable

import redis.asyncio as redis
from redis.exceptions import RedisError

BUS_CHANNEL = "wssfleet:bus"
# Messages waiting for Redis; past this a burst is dropped from the bus, not from memory.
PUBLISH_BACKLOG = 10_000

log = logging.getLogger("wssfleet.broker")

Deliver = Callable[[str, str], None]


class RedisBus:
    """One process's link to Redis: a subscriber task, a publisher task, a health flag."""

    def __init__(self, url: str, deliver: Deliver) -> None:
        """
        + url: redis:// URL, password included
        + deliver: called with (channel, serialized message) for messages of other processes
        """
        self.url = url
        self.deliver = deliver
        self.origin = uuid.uuid4().hex
        self.connected = False
        self._outbox: asyncio.Queue[str] = asyncio.Queue(PUBLISH_BACKLOG)
        self._tasks: list[asyncio.Task[None]] = []

    def start(self) -> None:
        self._tasks = [
            asyncio.create_task(self._subscribe_forever(), name="redis-subscriber"),
            asyncio.create_task(self._publish_forever(), name="redis-publisher"),
        ]

    async def stop(self) -> None:
        for task in self._tasks:
            task.cancel()
        for task in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task

    def publish(self, channel: str, message: str) -> None:
        """Queue a message for the other processes; never blocks the caller."""
        if not self.connected:
            return
        envelope = json.dumps({"origin": self.origin, "channel": channel, "message": message})
        with contextlib.suppress(asyncio.QueueFull):
            self._outbox.put_nowait(envelope)

    def _client(self) -> redis.Redis:
        return redis.Redis.from_url(
            self.url, socket_connect_timeout=2, socket_timeout=None, health_check_interval=10
        )

    async def _subscribe_forever(self) -> None:
        delay = 0.1
        while True:
            client = self._client()
            try:
                async with client.pubsub() as pubsub:
                    await pubsub.subscribe(BUS_CHANNEL)
                    self._set_connected(True)
                    delay = 0.1
                    async for item in pubsub.listen():
                        if item.get("type") == "message":
                            self._receive(item["data"])
            except (RedisError, OSError) as error:
                if self.connected:
                    log.warning("redis lost: %s", error)
            finally:
                self._set_connected(False)
                await client.aclose()
            # Full jitter keeps a fleet of processes from reconnecting in lockstep.
            await asyncio.sleep(random.uniform(0, delay))
            delay = min(delay * 2, 2.0)

    async def _publish_forever(self) -> None:
        client = self._client()
        try:
            while True:
                envelope = await self._outbox.get()
                try:
                    await asyncio.wait_for(client.publish(BUS_CHANNEL, envelope), timeout=2)
                except (RedisError, OSError, TimeoutError):
                    # The subscriber notices the outage and flips the flag; the message
                    # was already delivered locally.
                    continue
        finally:
            await client.aclose()

    def _set_connected(self, connected: bool) -> None:
        if connected != self.connected:
            self.connected = connected
            log.info("redis %s", "connected" if connected else "disconnected")
            if not connected:
                while not self._outbox.empty():
                    self._outbox.get_nowait()

    def _receive(self, raw: bytes) -> None:
        try:
            envelope = json.loads(raw)
        except ValueError:
            return
        if envelope.get("origin") == self.origin:
            return
        channel, message = envelope.get("channel"), envelope.get("message")
        if isinstance(channel, str) and isinstance(message, str):
            self.deliver(channel, message)
