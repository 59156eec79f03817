"""One configured model and, when it runs, its engine: state, in-flight count, last use."""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from vramgate.config import ModelConfig
from vramgate.events import Fanout
from vramgate.runtimes.base import EngineHandle
from vramgate.scheduling.snapshot import Pending, State


@dataclass(eq=False)
class Instance:
    name: str
    model: ModelConfig
    _state: State = State.STOPPED  # `state`: its changes are told to `on_state`
    handle: EngineHandle | None = None
    in_flight: int = 0
    joining: int = 0  # requests waiting for its start to end (then served together)
    # Requests waiting for a max_concurrency slot, oldest first. A finishing request hands its
    # slot over (True); when the engine goes away, each is told to decide again (False).
    slot_waiters: deque[asyncio.Future[bool]] = field(default_factory=deque)
    last_used: float = 0.0  # time.monotonic() when the last request finished (or it started)
    last_used_wall: float | None = None
    ready_at: float | None = None
    loaded_at: float = 0.0  # time.monotonic() when it became ready
    starts: int = 0
    failures: int = 0
    requests: int = 0
    last_error: str | None = None
    gpus: tuple[int, ...] = ()  # where its engine holds memory (GPU accounting on)
    measured_requests: int = 0  # requests after which its memory was measured, this load
    start_task: asyncio.Task[None] | None = None
    stop_task: asyncio.Task[None] | None = None
    watched: EngineHandle | None = None  # the engine whose exit is being watched
    keep_alive_s: float | None = None  # a client's idle time until its next stop (Ollama's)
    then_stop: tuple[str, str] | None = None  # a stop (reason, why) asked during its sleep
    leaving: str | None = None  # while stop_task runs: "sleep", or the stop's reason (lru, admin)
    served_warm: int = 0  # requests that found the engine ready
    needed_start: int = 0  # requests that had to wait for a start
    evictions: int = 0  # stops to make room (lru, discovery, oom)
    priority: float = 0.0  # GreedyDual-Size-Frequency: kept longer the higher (eviction: frequency)
    cost_weight: float = 1.0  # what a request adds to it (eviction: cost: reload s per GiB)
    output: Fanout[str] = field(default_factory=lambda: Fanout(keep=0), repr=False)
    pending: Pending | None = None  # a reload's change, applied once it is idle
    replacement: ModelConfig | None = None  # with Pending.CHANGED: the new definition
    draining_for: str | None = None  # making way for this model (or "reload"): no new requests
    notes: list[str] | None = None  # the adapter's notes on this definition (None: not read yet)
    made_way_for: str | None = None  # stopped to make room for this start (until it is in)
    admitted: bool = False  # its start was granted room; False again once its engine is gone
    health_failures: int = 0  # readiness probes in a row that a ready engine did not answer
    asleep: bool = False  # its engine sleeps (SLEEPING, or STARTING while it wakes)
    kv_key: str | None = None  # its engine was started to keep its KV caches, under this key
    # footprint_key of what its engine loaded, made at spawn: its measurements are learned
    # under it, never under the key of a file written over that one while it runs.
    loaded_key: str | None = None
    kv_restored: int = 0  # tokens restored at this start, until the first answer says if used
    kv_reused: bool | None = None  # what the first answer after the last restore said
    kv_unread: int = 0  # answers after a restore still to read for it (KV_PEEKS at most)
    placed_on: str = ""  # on a cluster: the node its start was placed on by its RAM ("": any)
    host_mib: int | None = None  # host RAM it held when it last slept (measured)
    sleeps: int = 0
    wakes: int = 0
    wake_s: float | None = None  # how long its last wake took
    # Told of every state change (old, new): the scheduler publishes them as events.
    on_state: Callable[[Instance, State, State], None] | None = field(
        default=None, repr=False, compare=False
    )

    @property
    def state(self) -> State:
        return self._state

    @state.setter
    def state(self, new: State) -> None:
        old, self._state = self._state, new
        if old is not new and self.on_state is not None:
            self.on_state(self, old, new)

    @property
    def node(self) -> str:
        """On a cluster, the node whose RAM it holds: its engine's, else (granted room, still
        spawning) the one its start was placed on, so that two starts decided at once do not
        both take one node's RAM ("": this machine, or none)."""
        return self.handle.where if self.handle is not None else self.placed_on

    @property
    def is_running(self) -> bool:
        """Has an engine (or is about to): shutdown stops it, /v1/models/loaded lists it."""
        return self.state in (State.STARTING, State.READY, State.STOPPING, State.SLEEPING)

    @property
    def is_idle(self) -> bool:
        return self.in_flight == 0 and not self.slot_waiters and self.joining == 0

    def count_request(self, inflation: float) -> None:
        self.requests += 1
        # GreedyDual-Size-Frequency with a load cost proportional to size: frequency plus the
        # priority of the last engine evicted (aging), so that past popularity fades.
        self.priority = inflation + self.requests * self.cost_weight
        if self.state is State.READY:
            self.served_warm += 1
        else:
            self.needed_start += 1

    def touch(self) -> None:
        self.last_used = time.monotonic()
        self.last_used_wall = time.time()

    def status(self, ttl_s: float) -> dict[str, Any]:
        handle = self.handle
        return {
            "name": self.name,
            "engine": self.model.engine,
            "task": self.model.task,
            "aliases": list(self.model.aliases),
            "state": self.state.value,
            "pid": handle.pid if handle else None,
            "port": handle.port if handle else None,
            "url": handle.base_url if handle else None,
            "node": (handle.where or None) if handle else None,
            "started_at": handle.started_at if handle else None,
            "ready_at": self.ready_at,
            "last_used": self.last_used_wall,
            "in_flight": self.in_flight,
            "queued": len(self.slot_waiters),
            "ttl_s": ttl_s,
            "draining_for": self.draining_for,
            "pending": self.pending.value if self.pending else None,
            "starts": self.starts,
            "failures": self.failures,
            "requests": self.requests,
            "served_warm": self.served_warm,
            "needed_start": self.needed_start,
            "evictions": self.evictions,
            "last_error": self.last_error,
            "notes": self.notes or [],
            "asleep": self.asleep,
            "host_mib": self.host_mib if self.asleep else None,
            "sleeps": self.sleeps,
            "wakes": self.wakes,
            "wake_s": self.wake_s,
            "kv_reused": self.kv_reused,
        }
