"""One configured model and, when it runs, its engine: state, in-flight count, last use."""

from __future__ import annotations

import asyncio
import enum
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vramgate.config import ModelConfig
from vramgate.events import Fanout
from vramgate.runtime import EngineProcess


class State(enum.Enum):
    STOPPED = "stopped"  # no engine; the next request starts one
    STARTING = "starting"  # engine spawned, not ready yet; requests wait for it
    READY = "ready"  # serving requests
    STOPPING = "stopping"  # being stopped (ttl, eviction, admin); requests wait, then start it anew
    FAILED = "failed"  # last start failed or the engine died; the next request starts it again


@dataclass
class Instance:
    name: str
    model: ModelConfig
    state: State = State.STOPPED
    process: EngineProcess | None = None
    in_flight: int = 0
    # Requests waiting for a max_concurrency slot, oldest first; a release hands its slot over.
    slot_waiters: deque[asyncio.Future[None]] = field(default_factory=deque)
    last_used: float = (
        0.0  # time.monotonic() when the last request finished (or the engine started)
    )
    last_used_wall: float | None = None
    ready_at: float | None = None
    starts: int = 0
    failures: int = 0
    requests: int = 0
    last_error: str | None = None
    gpus: tuple[int, ...] = ()  # where its engine holds memory (GPU accounting on)
    measured_requests: int = 0  # requests after which its memory was measured, this load
    start_task: asyncio.Task[None] | None = None
    stop_task: asyncio.Task[None] | None = None
    served_warm: int = 0  # requests that found the engine ready
    needed_start: int = 0  # requests that had to wait for a start
    evictions: int = 0  # stops to make room (lru, discovery, oom)
    priority: float = 0.0  # GreedyDual-Size-Frequency: kept longer the higher (eviction: frequency)
    output: Fanout[str] = field(default_factory=lambda: Fanout(keep=0), repr=False)
    replacement: ModelConfig | None = None  # a reload changed it: applied at its next stop
    removed: bool = False  # a reload removed it: stopped and dropped once idle
    # Told of every state change (old, new): the scheduler publishes them as events.
    on_state: Callable[[Instance, State, State], None] | None = field(
        default=None, repr=False, compare=False
    )

    def __setattr__(self, key: str, value: Any) -> None:
        if key == "state" and self.on_state is not None:
            old = self.__dict__.get("state")
            object.__setattr__(self, key, value)
            if old is not None and old is not value:
                self.on_state(self, old, value)
            return
        object.__setattr__(self, key, value)

    @property
    def is_running(self) -> bool:
        """Holds (or is about to hold) resources: counts toward max_running."""
        return self.state in (State.STARTING, State.READY, State.STOPPING)

    @property
    def is_idle(self) -> bool:
        return self.in_flight == 0 and not self.slot_waiters

    def touch(self) -> None:
        self.last_used = time.monotonic()
        self.last_used_wall = time.time()

    def status(self, ttl_s: float) -> dict[str, Any]:
        proc = self.process
        return {
            "name": self.name,
            "engine": self.model.engine,
            "task": self.model.task,
            "aliases": list(self.model.aliases),
            "state": self.state.value,
            "pid": proc.pid if proc else None,
            "port": proc.port if proc else None,
            "started_at": proc.started_at if proc else None,
            "ready_at": self.ready_at,
            "last_used": self.last_used_wall,
            "in_flight": self.in_flight,
            "queued": len(self.slot_waiters),
            "ttl_s": ttl_s,
            "starts": self.starts,
            "failures": self.failures,
            "requests": self.requests,
            "served_warm": self.served_warm,
            "needed_start": self.needed_start,
            "evictions": self.evictions,
            "last_error": self.last_error,
        }
