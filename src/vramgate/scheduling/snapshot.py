"""What the decision function sees: every model's state and memory at one moment, as plain data."""

from __future__ import annotations

import enum
from collections.abc import Mapping
from typing import NamedTuple

from vramgate.gpu.base import GpuMemory
from vramgate.gpu.share import share_mib


class State(enum.Enum):
    STOPPED = "stopped"  # no engine; the next request starts one
    STARTING = "starting"  # engine spawned, not ready yet; requests join the start
    READY = "ready"  # serving requests
    SLEEPING = "sleeping"  # engine alive, its GPU memory released; the next request wakes it
    STOPPING = "stopping"  # being stopped (ttl, eviction, admin); requests wait, then start it anew
    FAILED = "failed"  # last start failed or the engine died; the next request starts it again


class Pending(enum.Enum):
    """A reload's change that waits for the model's engine to go idle and stop."""

    REMOVED = "removed"  # no longer configured: drain, stop, forget
    CHANGED = "changed"  # a new definition: drain, stop, then take it


def cost_rank(reload_s: float, idle_s: float) -> float:
    """Making way for other programs: what bringing an engine back would take against how long
    it has been idle, lowest made to go first (Lemonade's idle time / load time): one that
    loads in 40 s stays before one that loads in 2 s, unless idle twenty times longer."""
    return reload_s / max(idle_s, 1.0)


def cost_weight(reload_s: float, footprint_mib: int) -> float:
    """`gpus.eviction: cost`: what one request for a model weighs in its GreedyDual priority,
    the seconds reloading it costs per GiB it takes (GreedyDual-Size-Frequency with measured
    costs: a model that takes 40 s to load stays before one of its size that takes 2 s, and
    the often asked for stay before the rarely asked for)."""
    return max(reload_s, 0.1) / max(footprint_mib / 1024, 0.25)


class ModelSnap(NamedTuple):
    """One model as the decisions see it. (A NamedTuple: one is built per request, and a tuple
    builds in a third of a frozen dataclass's time.)"""

    name: str
    state: State = State.STOPPED
    in_flight: int = 0
    queued: int = 0  # requests waiting for a max_concurrency slot
    joining: int = 0  # requests that waited for its start and are not yet served
    last_used: float = 0.0  # time.monotonic() of its last request's end (or of its start)
    pinned: bool = False
    rank: float | None = None  # eviction order, lowest first; None = least recently used first
    gpus: tuple[int, ...] = ()  # where its engine holds memory now
    gpu_count: int = 1  # GPUs it is split over when it runs (tensor parallel); 0: on the CPU
    footprint_mib: int | None = None  # what it is expected to need; None = unknown
    held_mib: int = 0  # while resident: the larger of its footprint and what it uses now
    loaded_at: float = 0.0  # time.monotonic() when it became ready
    drain_after_s: float = 0.0  # busy, it may be drained this long after it became ready
    max_concurrency: int | None = None
    max_queue: int = 256
    ttl_s: float = 0.0  # idle seconds before a stop; 0 = never
    draining_for: str | None = None  # chosen to make way (a model's name, or "reload")
    admitted: bool = False  # starting: its room was granted (until then it holds nothing)
    made_way_for: str | None = None  # its engine was stopped to make room for this start
    pending: Pending | None = None
    can_sleep: bool = False  # its engine sleeps instead of stopping when room is needed
    host_mib: int = 0  # host RAM it holds asleep (measured), or would (estimated)
    # Host RAM its engine holds running (on the CPU), footprint or measured; None: unknown (no
    # hint, no estimate, not measured yet): placed as a discovery run, alone on its node's RAM.
    ram_mib: int | None = 0
    reload_s: float = 0.0  # what bringing it back would take: its last load, or wake
    sleep_after_s: float = 0.0  # idle seconds before it sleeps; 0 = only to make room
    asleep: bool = False  # its engine sleeps (also while a wake is under way: STARTING)
    nodes: tuple[str, ...] = ()  # on a cluster: the nodes it may run on; empty: any
    node: str = ""  # on a cluster: the node its engine runs (or sleeps) on

    @property
    def is_idle(self) -> bool:
        """No request on it or waiting for it: just ready, the requests that waited for its
        start still count (else another start could evict it before they are served)."""
        return self.in_flight == 0 and self.queued == 0 and self.joining == 0

    @property
    def is_running(self) -> bool:
        """Holds (or is about to hold) resources: counts toward max_running. A start still
        waiting for room does not: two such starts would otherwise wait for each other."""
        if self.state is State.STARTING:
            return self.admitted
        return self.state in (State.READY, State.STOPPING)

    @property
    def is_evictable(self) -> bool:
        """May be stopped (or put to sleep) now to make room: ready and idle, or asleep; not
        pinned."""
        if self.state is State.SLEEPING:
            return not self.pinned
        return self.state is State.READY and self.is_idle and not self.pinned

    @property
    def is_drainable(self) -> bool:
        """May be asked to make room once its requests finish: ready and not pinned."""
        return self.state is State.READY and not self.pinned

    def can_drain(self, now: float) -> bool:
        """Drainable now: idle, or busy and past its turn (gpus.drain_after). A model drained
        as soon as it was ready would serve the requests that waited for its start and no
        more: under traffic to more models than fit, every start would make way for the next
        and little would be served between the swaps."""
        if not self.is_drainable:
            return False
        return self.is_idle or now - self.loaded_at >= self.drain_after_s

    @property
    def order(self) -> float:
        return self.last_used if self.rank is None else self.rank

    @property
    def host_held_mib(self) -> int:
        """Host RAM it holds now: asleep, what it kept; running on the CPU, its footprint."""
        if self.state is State.SLEEPING:
            return self.host_mib
        return (self.ram_mib or 0) if self.is_running else 0

    @property
    def holds_host(self) -> bool:
        """Holds host RAM, or may hold any amount of it (running, its footprint unknown)."""
        return self.host_held_mib > 0 or (self.is_running and self.ram_mib is None)

    def on(self, gpu: int) -> int:
        """MiB it holds on `gpu`."""
        return share_mib(self.held_mib, len(self.gpus)) if gpu in self.gpus else 0


class Snapshot(NamedTuple):
    """Every model and GPU at one moment, with the settings the decisions read."""

    models: Mapping[str, ModelSnap]
    gpus: tuple[GpuMemory, ...] = ()  # empty: no GPU accounting (placed by count and time only)
    max_running: int | None = None
    now: float = 0.0  # time.monotonic()
    min_residency_s: float = 0.0
    unknown_footprint: str = "estimate"  # gpus.unknown_footprint
    room_queue: tuple[str, ...] = ()  # starts waiting for room, in arrival order
    host_budget_mib: int = 0  # host RAM that engines on the CPU and sleepers may hold in all
    host: GpuMemory | None = None  # the host's RAM as a device (hostram.HOST), for placement
    # On a cluster: each live node's RAM as a device of its own (its `node` set), in place of
    # `host`; engines on the CPU and sleepers hold RAM on their node, against its budget.
    hosts: tuple[GpuMemory, ...] = ()

    @property
    def host_used_mib(self) -> int:
        return sum(m.host_held_mib for m in self.models.values())

    def host_used_on(self, node: str) -> int:
        """What our engines hold of `node`'s RAM (all of it on one machine)."""
        if not self.hosts:
            return self.host_used_mib
        return sum(m.host_held_mib for m in self.models.values() if m.node == node)

    def host_used_by_node(self) -> dict[str, int]:
        """host_used_on for every node our models are on: what sleeps and what runs on the
        CPU there, to count against host_budget_on as decisions add to it."""
        return {n: self.host_used_on(n) for n in {m.node for m in self.models.values()}}

    def host_budget_on(self, node: str) -> int:
        """`node`'s RAM budget; 0 for a node placement does not list (not read yet, or dead):
        nothing is placed or put to sleep there."""
        if not self.hosts:
            return self.host_budget_mib
        return next((h.total_mib for h in self.hosts if h.node == node), 0)

    def host_budget_known(self, node: str) -> bool:
        """Whether `node`'s RAM budget is known: a node not read yet (just joined again) or
        dead has none, which is not a budget of 0 to enforce."""
        return not self.hosts or any(h.node == node for h in self.hosts)
