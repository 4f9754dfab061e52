"""Slots for costly work (history reads), shared fairly between the token subjects that want
them: a subject with a thousand reads waiting delays another subject's one read by at most a
read per subject ahead of it, not by its whole backlog."""

from __future__ import annotations

import asyncio
import contextlib
from collections import OrderedDict, deque
from collections.abc import AsyncIterator


class Turns:
    def __init__(self, slots: int) -> None:
        self._free = slots
        # Subject: its waiters, first come first served; subjects served in rotation.
        self._waiting: OrderedDict[str, deque[asyncio.Future[None]]] = OrderedDict()

    @property
    def waiting(self) -> int:
        return sum(len(queue) for queue in self._waiting.values())

    @contextlib.asynccontextmanager
    async def turn(self, subject: str) -> AsyncIterator[None]:
        """Hold one slot for ``subject`` while the block runs."""
        if self._free and not self._waiting:
            self._free -= 1
        else:
            future = asyncio.get_running_loop().create_future()
            self._waiting.setdefault(subject, deque()).append(future)
            try:
                await future
            except asyncio.CancelledError:
                if future.cancelled():
                    self._forget(subject, future)
                else:
                    self._hand_on()  # cancelled just after it was handed a slot
                raise
        try:
            yield
        finally:
            self._hand_on()

    def _forget(self, subject: str, future: asyncio.Future[None]) -> None:
        queue = self._waiting.get(subject)
        if queue is not None and future in queue:
            queue.remove(future)
            if not queue:
                del self._waiting[subject]

    def _hand_on(self) -> None:
        """A slot is free: to the next subject in rotation, which then goes to the back."""
        while self._waiting:
            subject, queue = next(iter(self._waiting.items()))
            future = queue.popleft()
            if queue:
                self._waiting.move_to_end(subject)
            else:
                del self._waiting[subject]
            if not future.done():
                future.set_result(None)
                return
        self._free += 1
