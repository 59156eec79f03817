"""Making way for other programs on a GPU (a game, ComfyUI, a notebook): a pure function of the
snapshot, asked every gpus.poll_s when gpus.yield_above is set.

When a GPU's use passes its share because of other programs (ours alone would not), idle
engines there make way, cheapest to bring back first (snapshot.cost_rank: reload time against
idle time): they sleep where they can and host RAM allows, else they stop; busy ones never.
Sleepers there stop last, if that is still not enough. Until the others use less, placement
keeps our engines under the share (GpuMemory.ceiling_mib): requests wait, or go elsewhere.
"""

from __future__ import annotations

from vramgate.scheduling.snapshot import ModelSnap, Snapshot, State, cost_rank
from vramgate.scheduling.steps import Sleep, Step, Stop


def make_way(snap: Snapshot, share: float) -> list[Step]:
    steps: list[Step] = []
    host_used = snap.host_used_by_node()  # each node's, on a cluster
    for gpu in snap.gpus:
        limit = int(share * gpu.total_mib)
        ours = gpu.used_mib - gpu.others_mib
        if gpu.others_mib <= 0 or gpu.used_mib <= limit or ours > limit:
            continue  # under the share, or over it because of our own engines
        over = gpu.used_mib - limit
        why = f"other programs use {gpu.others_mib} MiB of GPU {gpu.index}"
        for m in _victims(snap, gpu.index):
            if over <= 0:
                break
            if (
                m.state is State.READY
                and m.can_sleep
                and host_used[m.node] + m.host_mib <= snap.host_budget_on(m.node)
            ):
                steps.append(Sleep(m.name, "yield", why))
                host_used[m.node] += m.host_mib
            else:
                steps.append(Stop(m.name, "yield", why))
            over -= m.on(gpu.index)
    return steps


def _victims(snap: Snapshot, gpu: int) -> list[ModelSnap]:
    """Idle, unpinned engines on `gpu`, cheapest to bring back first; sleepers after them."""
    here = [m for m in snap.models.values() if gpu in m.gpus and m.is_evictable]

    def cost(m: ModelSnap) -> tuple[bool, float]:
        return m.state is State.SLEEPING, cost_rank(m.reload_s, snap.now - m.last_used)

    return sorted(here, key=cost)
