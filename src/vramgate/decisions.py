"""Pure scheduling decisions: what a request does, who makes way under max_running, who expires.

Functions of a snapshot, no I/O and no clocks of their own, tested case by case.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from vramgate.instances import State


class Action(enum.Enum):
    SERVE = "serve"  # ready and a slot is free: relay now
    QUEUE = "queue"  # ready but at max_concurrency: wait for a slot
    REJECT = "reject"  # at max_concurrency and the wait queue is full: 429
    JOIN = "join"  # a start is under way: wait for it (single flight)
    WAIT_STOP = "wait_stop"  # being stopped: wait for that, then start anew
    START = "start"  # not running: start it


@dataclass(frozen=True)
class ModelView:
    """What `decide` needs to know about one model."""

    state: State
    in_flight: int
    queued: int
    max_concurrency: int | None
    max_queue: int


def decide(view: ModelView) -> Action:
    """The decision for one request to a model, as a list of cases."""
    # 1. A start is under way: join it, never start a second engine.
    if view.state is State.STARTING:
        return Action.JOIN
    # 2. Being stopped (TTL, eviction, unload): wait for the stop, then start it again.
    if view.state is State.STOPPING:
        return Action.WAIT_STOP
    # 3. Not running (never started, stopped, failed): start it.
    if view.state is not State.READY:
        return Action.START
    # 4. Ready with a free slot and nobody queued ahead: serve.
    limit = view.max_concurrency
    if limit is None or (view.in_flight < limit and view.queued == 0):
        return Action.SERVE
    # 5. Ready but full: queue while there is room, else refuse.
    return Action.QUEUE if view.queued < view.max_queue else Action.REJECT


@dataclass(frozen=True)
class Running:
    """A running engine as the count limit and the TTL see it."""

    name: str
    state: State
    is_idle: bool
    last_used: float
    pinned: bool = False
    rank: float | None = None  # eviction order, lowest first; None = least recently used first

    @property
    def order(self) -> float:
        return self.last_used if self.rank is None else self.rank


def choose_eviction(
    residents: Sequence[Running], max_running: int | None, asking: str
) -> tuple[int, str | None]:
    """How many engines must make way for `asking` to start, and the one to stop first.

    Only idle, ready, unpinned engines may go, least recently used (or lowest ranked) first; a
    busy one never.
    Returns (0, None) when it fits, (n, None) when n must go but none can now.
    """
    running = [r for r in residents if r.state is not State.STOPPED and r.name != asking]
    excess = 0 if max_running is None else len(running) + 1 - max_running
    if excess <= 0:
        return 0, None
    candidates = [r for r in running if r.state is State.READY and r.is_idle and not r.pinned]
    if not candidates:
        return excess, None
    return excess, min(candidates, key=lambda r: r.order).name


def expired(residents: Sequence[Running], ttl_s: Mapping[str, float], now: float) -> list[str]:
    """Engines idle longer than their TTL (0 = never); the clock starts at their last request."""
    return [
        r.name
        for r in residents
        if r.state is State.READY
        and r.is_idle
        and not r.pinned
        and ttl_s.get(r.name, 0) > 0
        and now - r.last_used >= ttl_s[r.name]
    ]
