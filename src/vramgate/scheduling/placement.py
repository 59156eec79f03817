"""Where a model goes in GPU memory and which engines make room: pure functions, in MiB.

A model fits on a GPU when its share + the resident shares + the reserve fit in the total, and
also in what the GPU reports free minus the reserve (processes we do not own, engines that use
more than we thought). A model split over N GPUs (tensor parallel) needs 1/N of its footprint on
each of N GPUs. Only idle, ready, unpinned engines are stopped, least recently used first, and
then only as many as needed; busy ones are drained first, never stopped mid-request.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vramgate.gpu.base import GpuMemory
from vramgate.gpu.share import share_mib
from vramgate.scheduling.snapshot import ModelSnap


@dataclass(frozen=True)
class Placement:
    gpus: tuple[int, ...] = ()  # start there once `evict` are stopped
    evict: tuple[str, ...] = ()
    # Room exists once these (busy, or idle with them) finish and go: they take no new requests.
    drain: tuple[str, ...] = ()
    wait: bool = False  # room exists only once starts or stops under way end: decide again then
    refuse: str | None = None  # it can never fit: why


def available_mib(gpu: GpuMemory, residents: Sequence[ModelSnap], evicted: Sequence[str]) -> int:
    """MiB a new engine may take on `gpu` once `evicted` are gone (and, while other programs
    use it, below its ceiling: gpus.yield_above)."""
    staying = sum(r.on(gpu.index) for r in residents if r.name not in evicted)
    leaving = sum(r.on(gpu.index) for r in residents if r.name in evicted)
    by_footprints = gpu.total_mib - gpu.reserve_mib - staying
    reported = gpu.free_mib + leaving - gpu.reserve_mib
    if gpu.ceiling_mib is not None:
        reported = min(reported, gpu.ceiling_mib - gpu.used_mib + leaving)
    return min(by_footprints, reported)


def place(
    need_mib: int | None,
    gpus: Sequence[GpuMemory],
    residents: Sequence[ModelSnap],
    asking: str,
    *,
    gpu_count: int = 1,
    now: float = 0.0,
    min_residency_s: float = 0.0,
) -> Placement:
    """As `_place_on`; a model split over several GPUs (tensor parallel) takes them on one node
    of a cluster: each node is tried, and the best plan wins (fits now, then fewest stops, then
    fewest drains, then waiting)."""
    nodes = sorted({g.node for g in gpus})
    if gpu_count == 1 or len(nodes) < 2:
        return _place_on(need_mib, gpus, residents, asking, gpu_count=gpu_count, now=now,
                         min_residency_s=min_residency_s)  # fmt: skip
    plans = [
        _place_on(need_mib, [g for g in gpus if g.node == node], residents, asking,
                  gpu_count=gpu_count, now=now, min_residency_s=min_residency_s)
        for node in nodes
    ]  # fmt: skip

    def rank(p: Placement) -> tuple[int, int]:
        if p.refuse:
            return (4, 0)
        if p.wait:
            return (3, 0)
        if p.drain:
            return (2, len(p.drain))
        return (1 if p.evict else 0, len(p.evict))

    best = min(plans, key=rank)
    if best.refuse:
        return Placement(refuse=f"{best.refuse} on any one node")
    return best


def _place_on(
    need_mib: int | None,
    gpus: Sequence[GpuMemory],
    residents: Sequence[ModelSnap],
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
       (or lowest ranked: `ModelSnap.rank`).
       Engines loaded less than `min_residency_s` ago go only if no other choice frees enough
       (anti-thrash).
    4. Fits once busy engines finish: the same choice among every ready, unpinned engine that
       has had its turn (`ModelSnap.can_drain`); they drain (take no new requests), so that a
       model never waits for traffic that never ends.
    5. Fits only once starts and stops under way end: wait.
    6. Larger than the GPUs even empty, or asks for more GPUs than there are: refuse, evicting
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
    for busy_too in (False, True):
        for spared in (young, set()):
            options = []
            for g in gpus:
                evict = _evictions(g, others, need, spared, now, busy_too)
                if evict is not None:
                    options.append((len(evict), sum(recency[n] for n in evict), g.index, evict))
            if len(options) >= gpu_count:
                chosen = sorted(options)[:gpu_count]
                names = tuple(dict.fromkeys(name for *_, evict in chosen for name in evict))
                on = tuple(sorted(o[2] for o in chosen))
                return Placement(gpus=on, drain=names) if busy_too else Placement(on, names)
    return Placement(wait=True)


def _evictions(
    gpu: GpuMemory,
    residents: Sequence[ModelSnap],
    need_mib: int,
    spared: set[str],
    now: float,
    busy_too: bool = False,
) -> list[str] | None:
    """The fewest least recently used engines on `gpu` whose stop makes `need_mib` fit: idle
    ones only, or (`busy_too`) busy ones as well, idle ones first."""

    def may_go(r: ModelSnap) -> bool:
        return r.can_drain(now) if busy_too else r.is_evictable

    candidates = sorted(
        (r for r in residents if r.on(gpu.index) and may_go(r) and r.name not in spared),
        key=lambda r: (not r.is_idle, r.order),
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


def _discovery(gpus: Sequence[GpuMemory], residents: Sequence[ModelSnap], count: int) -> Placement:
    def here(g: GpuMemory) -> list[ModelSnap]:
        return [r for r in residents if g.index in r.gpus and not r.pinned]

    def cost(g: GpuMemory) -> tuple[int, int, int]:
        return (sum(not r.is_evictable for r in here(g)), len(here(g)), -g.free_mib)

    chosen = sorted(gpus, key=cost)[:count]
    leaving = [r for g in chosen for r in here(g)]
    on = tuple(sorted(g.index for g in chosen))
    names = tuple(dict.fromkeys(r.name for r in leaving))
    if all(r.is_evictable for r in leaving):
        return Placement(gpus=on, evict=names)
    if all(r.is_drainable for r in leaving):
        return Placement(gpus=on, drain=names)
    return Placement(wait=True)
