"""Where a model goes in GPU memory and which idle engines make room: pure functions, in MiB.

A model fits on a GPU when its footprint + the resident footprints + the reserve fit in the
total, and also in what the GPU reports free minus the reserve (processes we do not own, engines
that use more than we thought). Only idle, ready, unpinned engines are evicted, least recently
used first, and then only as many as needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vramgate.gpu.base import GpuMemory
from vramgate.instances import State


@dataclass(frozen=True)
class Resident:
    """An engine holding (or about to hold) GPU memory."""

    name: str
    state: State
    is_idle: bool
    last_used: float
    gpu: int
    footprint_mib: int  # the larger of what it is expected to use and what it uses now
    pinned: bool = False
    loaded_at: float = 0.0  # when it became ready (time.time())

    @property
    def is_evictable(self) -> bool:
        return self.state is State.READY and self.is_idle and not self.pinned


@dataclass(frozen=True)
class Placement:
    gpu: int | None = None  # start there once `evict` are stopped
    evict: tuple[str, ...] = ()
    wait: bool = False  # room exists only once busy engines drain: wait, then decide again
    refuse: str | None = None  # it can never fit: why


def available_mib(gpu: GpuMemory, residents: Sequence[Resident], evicted: Sequence[str]) -> int:
    """MiB a new engine may take on `gpu` once `evicted` are gone."""
    staying = [r for r in residents if r.gpu == gpu.index and r.name not in evicted]
    leaving = [r for r in residents if r.gpu == gpu.index and r.name in evicted]
    by_footprints = gpu.total_mib - gpu.reserve_mib - sum(r.footprint_mib for r in staying)
    reported = gpu.free_mib + sum(r.footprint_mib for r in leaving) - gpu.reserve_mib
    return min(by_footprints, reported)


def place(
    need_mib: int | None,
    gpus: Sequence[GpuMemory],
    residents: Sequence[Resident],
    asking: str,
    *,
    now: float = 0.0,
    min_residency_s: float = 0.0,
) -> Placement:
    """Where `asking` (needing `need_mib`, None if unknown) starts, and who makes way.

    1. Unknown footprint: a discovery run. The GPU that needs the fewest stops; every idle
       unpinned engine there goes, so that what is measured is the model alone.
    2. Fits somewhere now: the GPU where it fits tightest (keeps big holes for big models).
    3. Fits after evicting idle engines: the GPU needing the fewest, least recently used stops.
       Engines loaded less than `min_residency_s` ago go only if no other choice frees enough
       (anti-thrash).
    4. Fits only once busy engines drain: wait.
    5. Larger than any GPU even empty: refuse, evicting nothing.
    """
    others = [r for r in residents if r.name != asking]
    if need_mib is None:
        return _discovery(gpus, others)
    if all(need_mib > g.total_mib - g.reserve_mib for g in gpus):
        biggest = max(gpus, key=lambda g: g.total_mib)
        return Placement(
            refuse=f"needs {need_mib} MiB but the largest GPU has {biggest.total_mib} MiB "
            f"({biggest.reserve_mib} MiB reserved)"
        )
    fits = [(available_mib(g, others, ()) - need_mib, g.index) for g in gpus]
    fitting = [(spare, index) for spare, index in fits if spare >= 0]
    if fitting:
        return Placement(gpu=min(fitting)[1])
    young = {r.name for r in others if now - r.loaded_at < min_residency_s}
    for spared in (young, set()):
        options = []
        for g in gpus:
            evict = _evictions(g, others, need_mib, spared)
            if evict is not None:
                recency = sum(next(r.last_used for r in others if r.name == n) for n in evict)
                options.append((len(evict), recency, g.index, evict))
        if options:
            _, _, index, evict = min(options)
            return Placement(gpu=index, evict=tuple(evict))
    return Placement(wait=True)


def _evictions(
    gpu: GpuMemory, residents: Sequence[Resident], need_mib: int, spared: set[str]
) -> list[str] | None:
    """The fewest least recently used idle engines on `gpu` whose stop makes `need_mib` fit."""
    candidates = sorted(
        (r for r in residents if r.gpu == gpu.index and r.is_evictable and r.name not in spared),
        key=lambda r: r.last_used,
    )
    chosen: list[str] = []
    for r in candidates:
        chosen.append(r.name)
        if available_mib(gpu, residents, chosen) >= need_mib:
            break
    else:
        return None
    # An early (old) pick may have been needless once a later, larger one joined: drop those.
    for name in list(chosen[:-1]):
        trial = [n for n in chosen if n != name]
        if available_mib(gpu, residents, trial) >= need_mib:
            chosen = trial
    return chosen


def _discovery(gpus: Sequence[GpuMemory], residents: Sequence[Resident]) -> Placement:
    def cost(g: GpuMemory) -> tuple[int, int, int]:
        here = [r for r in residents if r.gpu == g.index and not r.pinned]
        busy = sum(not r.is_evictable for r in here)
        return (busy, len(here), -g.free_mib)

    gpu = min(gpus, key=cost)
    here = [r for r in residents if r.gpu == gpu.index and not r.pinned]
    if any(not r.is_evictable for r in here):
        return Placement(wait=True)
    return Placement(gpu=gpu.index, evict=tuple(r.name for r in here))
