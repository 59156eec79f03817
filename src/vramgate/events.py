"""Fan-out of live updates to whoever listens (SSE clients): recent items kept, slow readers cut.

Used for the gateway's events (state changes and decisions) and for each engine's output lines.
A listener that falls more than its queue behind misses items rather than holding memory or
slowing the gateway: it gets a marker saying how many it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Iterator
from typing import Generic, TypeVar

T = TypeVar("T")
LISTENER_QUEUE = 1000


class Fanout(Generic[T]):
    def __init__(self, keep: int) -> None:
        self.recent: deque[T] = deque(maxlen=keep)
        self._listeners: dict[asyncio.Queue[T], int] = {}  # queue -> items dropped for it

    def publish(self, item: T) -> None:
        self.recent.append(item)
        for queue in self._listeners:
            try:
                queue.put_nowait(item)
            except asyncio.QueueFull:
                self._listeners[queue] += 1

    def dropped(self, queue: asyncio.Queue[T]) -> int:
        """Items `queue` missed since last asked (it was full), and resets the count."""
        missed, self._listeners[queue] = self._listeners.get(queue, 0), 0
        return missed

    @contextlib.contextmanager
    def listen(self) -> Iterator[asyncio.Queue[T]]:
        queue: asyncio.Queue[T] = asyncio.Queue(LISTENER_QUEUE)
        self._listeners[queue] = 0
        try:
            yield queue
        finally:
            self._listeners.pop(queue, None)
