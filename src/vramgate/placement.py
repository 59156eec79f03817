"""Where a model goes in GPU memory and which idle engines make room: pure functions, in MiB.

A model fits on a GPU when its share + the resident shares + the reserve fit in the total, and
also in what the GPU reports free minus the reserve (processes we do not own, engines that use
more than we thought). A model split over N GPUs (tensor parallel) needs 1/N of its footprint on
each of N GPUs. Only idle, ready, unpinned engines are evicted, least recently used first, and
then only as many as needed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vramgate.gpu.base import GpuMemory
from vramgate.gpu.share import share_mib
from vramgate.instances import State


@dataclass(frozen=True)
class Resident:
    """An engine holding (or about to hold) GPU memory."""

    name: str
    state: State
    is_idle: bool
    last_used: float
    gpus: tuple[int, ...]
    footprint_mib: int  # in all, the larger of what it is expected to use and what it uses now
    pinned: bool = False
    loaded_at: float = 0.0  # when it became ready (time.time())
    # Eviction order, lowest first: None = least recently used first; else a priority such as
    # GreedyDual-Size-Frequency's (gpus.eviction: frequency).
    rank: float | None = None

    @property
    def order(self) -> float:
        return self.last_used if self.rank is None else self.rank

    @property
    def is_evictable(self) -> bool:
        return self.state is State.READY and self.is_idle and not self.pinned

    def on(self, gpu: int) -> int:
        """MiB it holds on `gpu`."""
        return share_mib(self.footprint_mib, len(self.gpus)) if gpu in self.gpus else 0


@dataclass(frozen=True)
class Placement:
    gpus: tuple[int, ...] = ()  # start there once `evict` are stopped
    evict: tuple[str, ...] = ()
    wait: bool = False  # room exists only once busy engines drain: wait, then decide again
    refuse: str | None = None  # it can never fit: why


def available_mib(gpu: GpuMemory, residents: Sequence[Resident], evicted: Sequence[str]) -> int:
    """MiB a new engine may take on `gpu` once `evicted` are gone."""
    staying = sum(r.on(gpu.index) for r in residents if r.name not in evicted)
    leaving = sum(r.on(gpu.index) for r in residents if r.name in evicted)
    by_footprints = gpu.total_mib - gpu.reserve_mib - staying
    reported = gpu.free_mib + leaving - gpu.reserve_mib
    return min(by_footprints, reported)


def place(
    need_mib: int | None,
    gpus: Sequence[GpuMemory],
    residents: Sequence[Resident],
    asking: str,
    *,
    gpu_count: int = 1,
    now: float = 0.0,
    min_residency_s: float = 0.0,
) -> Placement:
    """Where `asking` (needing `need_mib` in all, None if unknown) starts, and who makes way.

    1. Unknown footprint: a discovery run. The GPUs that need the fewest stops; every idle
       unpinned engine there goes, so that what is measured is the model alone.
    2. Fits somewhere now: the GPUs where it fits tightest (keeps big holes for big models).
    3. Fits after evicting idle engines: the GPUs needing the fewest, least recently used stops
       (or lowest ranked: `Resident.rank`).
       Engines loaded less than `min_residency_s` ago go only if no other choice frees enough
       (anti-thrash).
    4. Fits only once busy engines drain: wait.
    5. Larger than the GPUs even empty, or asks for more GPUs than there are: refuse, evicting
       nothing.
    """
    others = [r for r in residents if r.name != asking]
    if gpu_count > len(gpus):
        return Placement(refuse=f"asks for {gpu_count} GPUs but there are {len(gpus)}")
    if need_mib is None:
        return _discovery(gpus, others, gpu_count)
    need = share_mib(need_mib, gpu_count)
    roomy = sorted((g.total_mib - g.reserve_mib for g in gpus), reverse=True)
    if need > roomy[gpu_count - 1]:
        biggest = max(gpus, key=lambda g: g.total_mib)
        split = f" ({need} MiB on each of {gpu_count} GPUs)" if gpu_count > 1 else ""
        return Placement(
            refuse=f"needs {need_mib} MiB{split} but the largest GPU has {biggest.total_mib} MiB "
            f"({biggest.reserve_mib} MiB reserved)"
        )
    fitting = sorted(
        (spare, g.index) for g in gpus if (spare := available_mib(g, others, ()) - need) >= 0
    )
    if len(fitting) >= gpu_count:
        return Placement(gpus=tuple(sorted(index for _, index in fitting[:gpu_count])))
    young = {r.name for r in others if now - r.loaded_at < min_residency_s}
    recency = {r.name: r.order for r in others}
    for spared in (young, set()):
        options = []
        for g in gpus:
            evict = _evictions(g, others, need, spared)
            if evict is not None:
                options.append((len(evict), sum(recency[n] for n in evict), g.index, evict))
        if len(options) >= gpu_count:
            chosen = sorted(options)[:gpu_count]
            evicted = dict.fromkeys(name for *_, evict in chosen for name in evict)
            return Placement(gpus=tuple(sorted(o[2] for o in chosen)), evict=tuple(evicted))
    return Placement(wait=True)


def _evictions(
    gpu: GpuMemory, residents: Sequence[Resident], need_mib: int, spared: set[str]
) -> list[str] | None:
    """The fewest least recently used idle engines on `gpu` whose stop makes `need_mib` fit."""
    candidates = sorted(
        (r for r in residents if r.on(gpu.index) and r.is_evictable and r.name not in spared),
        key=lambda r: r.order,
    )
    chosen: list[str] = []
    if available_mib(gpu, residents, chosen) < need_mib:
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


def _discovery(gpus: Sequence[GpuMemory], residents: Sequence[Resident], count: int) -> Placement:
    def here(g: GpuMemory) -> list[Resident]:
        return [r for r in residents if g.index in r.gpus and not r.pinned]

    def cost(g: GpuMemory) -> tuple[int, int, int]:
        return (sum(not r.is_evictable for r in here(g)), len(here(g)), -g.free_mib)

    chosen = sorted(gpus, key=cost)[:count]
    leaving = [r for g in chosen for r in here(g)]
    if any(not r.is_evictable for r in leaving):
        return Placement(wait=True)
    return Placement(
        gpus=tuple(sorted(g.index for g in chosen)),
        evict=tuple(dict.fromkeys(r.name for r in leaving)),
    )
