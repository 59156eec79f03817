"""Housekeeping, decided at every tick (decide's `Tick`): a pure function of the snapshot.

A reload's pending changes (applied at once where no engine runs, else once it drained), idle
engines that sleep or stop after their time, pinned models that must be up, and host RAM over
its budget (each node's, on a cluster): sleepers and idle engines on the CPU go, least recently
used first, busy ones never.
"""

from __future__ import annotations

from vramgate.scheduling.snapshot import ModelSnap, Pending, Snapshot, State
from vramgate.scheduling.steps import Begin, Drain, Forget, Replace, Sleep, Step, Stop


def tick(snap: Snapshot) -> list[Step]:
    """Housekeeping: a reload's pending changes, idle engines that sleep or stop after their
    time, sleepers and idle engines on the CPU over the host RAM budget (each node's, on a
    cluster), pinned models."""
    steps: list[Step] = []
    # Sleepers and engines on the CPU share the host budget (each node's, on a cluster).
    used = snap.host_used_by_node()
    for m in snap.models.values():
        idle_s = snap.now - m.last_used
        if m.pending is not None:
            steps.extend(_pending(m))
        elif m.state is State.READY and m.is_idle and not m.pinned:
            expired = m.ttl_s > 0 and idle_s >= m.ttl_s
            drowsy = m.can_sleep and m.sleep_after_s > 0 and idle_s >= m.sleep_after_s
            room = used[m.node] + m.host_mib <= snap.host_budget_on(m.node)
            if drowsy and not expired and room:
                steps.append(Sleep(m.name, "sleep_after", f"idle {idle_s:.0f} s"))
                used[m.node] += m.host_mib
            elif expired:
                steps.append(Stop(m.name, "ttl"))
        elif m.state is State.SLEEPING and not m.pinned and m.ttl_s > 0 and idle_s >= m.ttl_s:
            steps.append(Stop(m.name, "ttl"))
            used[m.node] -= m.host_mib
        elif m.pinned and m.state is State.STOPPED:
            steps.append(Begin(m.name))  # pinned models are up at all times
    # Over the host RAM budget (it was lowered, sleepers grew, or an engine on the CPU was
    # measured above its hint or estimate): sleepers and idle engines on the CPU there go,
    # least recently used first; busy ones never.
    decided = {s.name for s in steps if isinstance(s, Stop | Sleep)}
    holding = sorted(
        (
            m
            for m in snap.models.values()
            if m.name not in decided
            and m.host_held_mib > 0
            and (m.state is State.SLEEPING or m.is_evictable)
        ),
        key=lambda m: m.order,
    )
    for m in holding:
        if not snap.host_budget_known(m.node):
            continue  # read as 0 MiB, its sleepers were all stopped as "host RAM over 0 MiB"
        budget = snap.host_budget_on(m.node)
        if used[m.node] > budget:
            steps.append(Stop(m.name, "host_ram", f"host RAM over {budget} MiB"))
            used[m.node] -= m.host_held_mib
    return steps


def _pending(m: ModelSnap) -> list[Step]:
    """A reload's change: applied at once when no engine runs, else once it has drained."""
    why = (
        "removed from the configuration"
        if m.pending is Pending.REMOVED
        else "its definition changed"
    )
    if m.state in (State.STOPPED, State.FAILED):
        return [Forget(m.name) if m.pending is Pending.REMOVED else Replace(m.name)]
    if m.state is State.SLEEPING:
        return [Stop(m.name, "reload", why)]
    if m.state is not State.READY:
        return []  # a start or stop is under way: decided again once it ends
    if m.is_idle:
        return [Stop(m.name, "reload", why)]
    # Under steady traffic it would never be idle: new requests wait while it drains.
    return [] if m.draining_for is not None else [Drain(m.name, "reload")]
