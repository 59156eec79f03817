"""Fan-out of live updates to whoever listens (SSE clients): recent items kept, slow readers cut.

Used for the gateway's events (state changes and decisions) and for each engine's output lines.
A listener that falls more than its queue behind misses items rather than holding memory or
slowing the gateway: it gets a marker saying how many it missed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable, Iterator
from typing import Any, Generic, TypeVar

T = TypeVar("T")
LISTENER_QUEUE = 1000
log = logging.getLogger("vramgate.scheduler")


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


Event = dict[str, Any]


class Events(Fanout[Event]):
    """The gateway's decisions and state changes: logged (decisions), fanned out, and passed to
    hooks (metrics). Engine output never goes in here: events reach every key, logs only admins."""

    def __init__(self, keep: int = 200) -> None:
        super().__init__(keep)
        self.hooks: list[Callable[[Event], None]] = []

    def record(self, kind: str, model: str, message: str, **data: Any) -> None:
        log.log(logging.WARNING if data.get("level") == "warning" else logging.INFO, message)
        self._emit({"time": time.time(), "kind": kind, "model": model, "message": message, **data})

    def state(self, model: str, old: str, new: str) -> None:
        message = f"{model}: {old} -> {new}"
        self._emit(
            {"time": time.time(), "kind": "state", "model": model, "message": message,
             "state": new, "previous": old}
        )  # fmt: skip

    def _emit(self, event: Event) -> None:
        self.publish(event)
        for hook in self.hooks:
            hook(event)
