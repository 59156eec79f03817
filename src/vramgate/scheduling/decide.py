"""The one decision function: given one snapshot and what is asked, the steps to take.

Pure: no I/O, no clock of its own, no mutation; tested case by case (tests/unit/test_decide.py).
Three things are asked of it:
- `Request(name)`: a request for a model arrived (serve, queue, refuse, start, join, wait);
- `Room(name, isolate)`: a start needs room (start where, stop whom, drain whom, wait, refuse);
- `Tick()`: time passed (TTL, a reload's pending changes, pinned models, host RAM over its
  budget: housekeeping.py).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from vramgate.errors import NoHostRoom, NoRoom, QueueFull
from vramgate.gpu.base import GpuMemory
from vramgate.gpu.share import share_mib
from vramgate.scheduling.housekeeping import tick
from vramgate.scheduling.placement import available_mib, place
from vramgate.scheduling.snapshot import ModelSnap, Snapshot, State
from vramgate.scheduling.steps import (
    Begin,
    Drain,
    Join,
    Queue,
    Refuse,
    Serve,
    Sleep,
    Start,
    Step,
    Stop,
    Wait,
)
from vramgate.scheduling.yielding import make_way


@dataclass(frozen=True)
class Request:
    name: str


@dataclass(frozen=True)
class Room:
    name: str
    isolate: bool = False  # the retry after an out-of-memory start: alone on its GPUs


@dataclass(frozen=True)
class Tick:
    pass


@dataclass(frozen=True)
class Yield:
    """Other programs use GPU memory: make way where they pushed a GPU past `share`."""

    share: float


Ask = Request | Room | Tick | Yield
# Steps without fields are shared: one decision per request must not allocate more than it must.
SERVE, QUEUE, JOIN = Serve(), Queue(), Join()


def decide(snap: Snapshot, ask: Ask) -> list[Step]:
    """The steps for `ask` in the world `snap` describes."""
    if isinstance(ask, Request):
        return [decide_request(snap.models[ask.name])]
    if isinstance(ask, Room):
        return _room(snap, snap.models[ask.name], ask.isolate)
    if isinstance(ask, Yield):
        return make_way(snap, ask.share)
    return tick(snap)


def decide_request(m: ModelSnap) -> Step:
    """A request, as a list of cases. It reads only the model's own fields (those
    `view.request_snap` fills): the driver's hot path asks this without a whole snapshot."""
    # 1. A start is under way: join it, never start a second engine.
    if m.state is State.STARTING:
        return JOIN
    # 2. Being stopped (TTL, eviction, unload): wait for the stop, then start it again.
    if m.state is State.STOPPING:
        return Wait(f"'{m.name}' is stopping")
    # 3. Not running, and a reload removed or changed it: the change first (housekeeping drops
    #    it, or takes its new definition, at its next tick), never an engine of the old one.
    if m.pending is not None and m.state is not State.READY:
        return Wait(f"'{m.name}' takes a reload's change first")
    # 4. Not running (never started, stopped, failed): start it.
    if m.state is not State.READY:
        return Begin(m.name)
    # 5. Making way for another model (or a reload): no new requests until it has gone.
    if m.draining_for is not None:
        return Wait(f"'{m.name}' is making way for {m.draining_for}")
    # 6. Ready with a free slot and nobody queued ahead: serve.
    limit = m.max_concurrency
    if limit is None or (m.in_flight < limit and m.queued == 0):
        return SERVE
    # 7. Ready but full: queue while there is room, else refuse.
    if m.queued < m.max_queue:
        return QUEUE
    return Refuse(
        QueueFull(
            f"model '{m.name}' is at max_concurrency={limit} with {m.queued} requests queued; "
            "retry later",
            headers={"Retry-After": "1"},
        )
    )


def _room(snap: Snapshot, me: ModelSnap, isolate: bool) -> list[Step]:
    """Starts take turns in arrival order for room that others must make; one that fits now
    starts at once, unless its own engine was just stopped to make room for a start still
    waiting (else the two would take the room from each other for ever)."""
    queue = snap.room_queue
    ahead = queue[: queue.index(me.name)] if me.name in queue else ()
    if me.made_way_for in ahead:
        return [Wait(f"it made way for {me.made_way_for}, which starts first")]
    steps = _make_room(snap, me, isolate)
    if ahead and not isinstance(steps[0], Start | Refuse):
        return [Wait(f"waiting for {ahead[0]}'s start to get its room first")]
    return steps


def _make_room(snap: Snapshot, me: ModelSnap, isolate: bool) -> list[Step]:
    """Room for `me` to start: GPU memory first (unless it runs on the CPU), then the count
    limit."""
    gpus: tuple[int, ...] = ()
    why = ""
    if snap.gpus and me.gpu_count:
        need = None if isolate else me.footprint_mib
        if need is None and snap.unknown_footprint == "refuse" and not isolate:
            return [
                Refuse(
                    NoRoom(
                        f"cannot start '{me.name}': its footprint is unknown (never measured, no "
                        "vram_mib, no estimate) and gpus.unknown_footprint is 'refuse'; set "
                        "vram_mib"
                    )
                )
            ]
        residents = [m for m in snap.models.values() if m.gpus]
        # A sleeping engine wakes where it sleeps: its process holds its context there.
        here = [g for g in snap.gpus if g.index in me.gpus] if me.asleep else snap.gpus
        if me.nodes:  # tied to some nodes of a cluster
            here = [g for g in here if g.node in me.nodes]
            if not here:
                return [Wait(f"none of its nodes ({', '.join(me.nodes)}) has a GPU now")]
        plan = place(
            need,
            here,
            residents,
            me.name,
            gpu_count=me.gpu_count,
            now=snap.now,
            min_residency_s=snap.min_residency_s,
        )
        if plan.refuse:
            return [
                Refuse(NoRoom(f"cannot start '{me.name}': it {plan.refuse}; nothing was evicted"))
            ]
        if (plan.evict or plan.drain) and need is not None:
            freeing = _freed_by_stops(here, residents, me.name, need, me.gpu_count)
            if freeing is not None:
                return [freeing]
        reason = "oom" if isolate else "discovery" if need is None else "lru"
        if plan.evict:
            return _make_way(snap, me, plan.evict, reason)
        if plan.drain:
            return _drain(snap, me, plan.drain, reason, "its GPU memory")
        if plan.wait:
            return [Wait(_held_by(me, here, residents))]
        gpus = plan.gpus
        why = _where(here, gpus)
    host, node = _host_room(snap, me, gpus)
    if host is not None:
        return host
    # The count limit: at most max_running engines at once. One being stopped is on its way out:
    # the new one starts while it goes (memory, where it matters, was placed above).
    running = [
        m
        for m in snap.models.values()
        if m.is_running and m.state is not State.STOPPING and m.name != me.name
    ]
    limit = snap.max_running
    if limit is None or len(running) < limit:
        return [Start(gpus, why, node)]
    idle = [m for m in running if m.is_evictable]
    if idle:
        victim = min(idle, key=lambda m: m.order).name
        return _make_way(snap, me, (victim,), "lru")
    busy = [m for m in running if m.can_drain(snap.now)]
    if busy:
        victim = min(busy, key=lambda m: m.order)
        return _drain(snap, me, (victim.name,), "lru", f"max_running={limit}")
    names = ", ".join(f"{m.name}: {_why_held(m)}" for m in running)
    return [Wait(f"max_running={limit} and no running engine can make way ({names})")]


def _host_room(
    snap: Snapshot, me: ModelSnap, gpus: tuple[int, ...]
) -> tuple[list[Step] | None, str]:
    """Host RAM for an engine on the CPU, placed as GPU memory is: it fits in the budget (and in
    what the machine has available), or idle engines on the CPU and sleepers (stopped: asleep
    they keep what they hold) make way, or busy ones drain; never more than the budget. On a
    cluster each node's RAM is a device: the node of its GPUs, else the one placement picks
    among those it may run on. A footprint that nothing tells is measured alone, as on a GPU:
    idle engines holding the RAM of the node it goes to make way, and until it is measured it
    counts as holding all of it. (None, node): it fits there, or needs none."""
    need = me.ram_mib
    if need == 0:
        return None, ""
    if need is None and snap.unknown_footprint == "refuse":
        message = (
            f"cannot start '{me.name}': its host RAM footprint is unknown (never measured, no "
            "ram_mib, no estimate) and gpus.unknown_footprint is 'refuse'; set ram_mib"
        )
        return [Refuse(NoHostRoom(message))], ""
    if snap.hosts:
        on = {g.node for g in snap.gpus if g.index in gpus}
        hosts = [h for h in snap.hosts if h.node in on] if gpus else [
            h for h in snap.hosts if not me.nodes or h.node in me.nodes
        ]  # fmt: skip
        if not hosts:
            return [Wait(f"no live node for it ({', '.join(me.nodes) or 'none joined'})")], ""
    elif snap.host is not None:
        hosts = [snap.host]
    else:
        return None, ""
    by_node = {h.node: h for h in hosts}
    residents = [
        m._replace(gpus=(by_node[m.node].index,), held_mib=_host_held(m, by_node[m.node]))
        for m in snap.models.values()
        if m.holds_host and m.name != me.name and m.node in by_node
    ]
    plan = place(need, hosts, residents, me.name, now=snap.now)
    if (plan.evict or plan.drain) and need is not None:
        freeing = _freed_by_stops(hosts, residents, me.name, need, 1)
        if freeing is not None:
            return [freeing], ""
    if plan.refuse:
        budget = max(h.total_mib for h in hosts)
        what = "the largest node's RAM budget" if snap.hosts else "host_ram_mib"
        message = (
            f"cannot start '{me.name}': it needs {need} MiB of host RAM and {what} is "
            f"{budget}; nothing was stopped"
        )
        return [Refuse(NoHostRoom(message))], ""
    if plan.evict:
        why = f"host RAM to start {me.name}"
        return [Stop(n, "host_ram", why, me.name) for n in plan.evict], ""
    if plan.drain:
        return _drain(snap, me, plan.drain, "host_ram", "host RAM"), ""
    if plan.wait:
        held = ", ".join(f"{r.name}: {_why_held(r)}" for r in residents)
        return [Wait(f"host RAM is held by engines that cannot make way ({held})")], ""
    chosen = next(h.node for h in hosts if h.index == plan.gpus[0])
    return None, chosen


def _host_held(m: ModelSnap, host: GpuMemory) -> int:
    """What `m` holds of `host`'s RAM in placement: running with its footprint unknown (a
    discovery run, not measured yet), all of it, so that nothing starts beside it."""
    return host.total_mib if m.is_running and m.ram_mib is None else m.host_held_mib


def _freed_by_stops(
    devices: Sequence[GpuMemory],
    residents: Sequence[ModelSnap],
    asking: str,
    need_mib: int,
    count: int,
) -> Wait | None:
    """Stops under way (decided a moment ago, for this start or another) may free enough on
    `count` of `devices`: then nothing more need go, it waits for them (a start decided again
    while its first stop ran once stopped every idle engine on the host)."""
    stopping = tuple(r.name for r in residents if r.state is State.STOPPING)
    if not stopping:
        return None
    others = [r for r in residents if r.name != asking]
    share = share_mib(need_mib, count)
    freed = [d for d in devices if available_mib(d, others, stopping) >= share]
    if len(freed) < count:
        return None
    return Wait(f"its room is being freed ({', '.join(stopping)} stopping)")


def _drain(
    snap: Snapshot, me: ModelSnap, names: tuple[str, ...], reason: str, what: str
) -> list[Step]:
    """Idle ones among `names` go now; busy ones finish their requests first, taking no more."""
    steps: list[Step] = []
    idle = tuple(n for n in names if snap.models[n].is_evictable)
    steps.extend(_make_way(snap, me, idle, reason))
    for name in names:
        m = snap.models[name]
        if not m.is_evictable and m.draining_for is None:
            steps.append(Drain(name, me.name))
    busy = ", ".join(n for n in names if not snap.models[n].is_evictable)
    steps.append(Wait(f"{what} is held by busy engines that are finishing first ({busy})"))
    return steps


def _make_way(snap: Snapshot, me: ModelSnap, names: tuple[str, ...], reason: str) -> list[Step]:
    """Idle engines that must give up their room: those that can sleep are put to sleep while
    host RAM allows (stopping sleepers used less recently than they were, if that makes it
    allow), the others are stopped. Room for a discovery run or an out-of-memory retry is made
    by stops: a sleeping engine still holds some GPU memory, which would spoil both."""
    why = f"to start {me.name}"
    if reason != "lru":
        return [Stop(n, reason, why, me.name) for n in names]
    steps: list[Step] = []
    asleep = sorted(
        (m for m in snap.models.values() if m.state is State.SLEEPING and m.name not in names),
        key=lambda m: m.order,
    )
    # Sleepers and engines on the CPU share the host budget (each node's, on a cluster).
    used = snap.host_used_by_node()
    for name in names:
        victim = snap.models[name]
        if victim.state is not State.READY or not victim.can_sleep:
            steps.append(Stop(name, reason, why, me.name))
            continue
        node, budget = victim.node, snap.host_budget_on(victim.node)
        older = [m for m in asleep if m.order < victim.order and m.node == node]
        freed: list[ModelSnap] = []
        while used[node] + victim.host_mib > budget and older:
            freed.append(older.pop(0))
            used[node] -= freed[-1].host_mib
        if used[node] + victim.host_mib <= budget:
            for m in freed:
                asleep.remove(m)
                steps.append(Stop(m.name, "host_ram", f"host RAM for {name} to sleep", me.name))
            steps.append(Sleep(name, reason, why, me.name))
            used[node] += victim.host_mib
        else:  # even so it would not fit: it stops, and the sleepers stay
            used[node] += sum(m.host_mib for m in freed)
            steps.append(Stop(name, reason, why, me.name))
    return steps


def _where(gpus: Sequence[GpuMemory], chosen: tuple[int, ...]) -> str:
    """`GPU 2 of node gpu-b: it fits there now` for the decision log (room was made first when
    others had to go: their stops are logged before it)."""
    on = [g for g in gpus if g.index in chosen]
    nodes = sorted({g.node for g in on if g.node})
    where = f"GPU {','.join(str(g.index) for g in on)}"
    if nodes:
        where += f" of node {','.join(nodes)}"
    spare = min((g.free_mib for g in on), default=0)
    return f"{where} ({spare} MiB free there now)"


def _held_by(me: ModelSnap, gpus: Sequence[GpuMemory], residents: Sequence[ModelSnap]) -> str:
    """Why a start waits: other programs' memory (they may leave) and our engines that cannot
    make way now; idle ones are not named, since stopping them would not be enough."""
    theirs = [f"{g.others_mib} MiB on GPU {g.index}" for g in gpus if g.others_mib]
    stuck = [
        f"{r.name}: {_why_held(r)}"
        for r in residents
        if r.name != me.name and not r.is_evictable and any(r.on(g.index) for g in gpus)
    ]
    parts = [f"other programs hold {', '.join(theirs)}"] if theirs else []
    if stuck:
        rest = "the rest is" if theirs else "its GPU memory is"
        parts.append(f"{rest} held by engines that cannot make way ({', '.join(stuck)})")
    return "; ".join(parts) or "its GPU memory is being freed by starts and stops under way"


def _why_held(m: ModelSnap) -> str:
    if m.pinned:
        return "pinned"
    if m.state is State.SLEEPING:
        return "asleep"
    if m.state is State.READY:
        return "idle" if m.is_idle else f"busy, {m.in_flight} in flight"
    return m.state.value
