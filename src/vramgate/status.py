"""What the gateway reports about itself (GET /gateway/status, the page, metrics' gauges)."""

from __future__ import annotations

from typing import Any

from vramgate.cgroup import available_mib
from vramgate.scheduling.driver import Scheduler
from vramgate.scheduling.snapshot import State
from vramgate.scheduling.view import ttl_of


def host_ram(scheduler: Scheduler) -> dict[str, Any]:
    """The host's RAM as the scheduler places it: the budget, what our engines hold (on the CPU
    running, or asleep), and what the machine has available now."""
    by_model: dict[str, int] = {}
    for name, inst in scheduler.instances.items():
        if inst.state is State.SLEEPING:
            by_model[name] = inst.host_mib or 0
        # As placement counts it (ModelSnap.is_running): a start still waiting for room has
        # no engine and was granted none, so it holds nothing yet.
        elif inst.is_running and (inst.state is not State.STARTING or inst.admitted):
            mib = scheduler.memory.ram(inst)[0] or 0
            if mib:
                by_model[name] = mib
    sleeping = [i.host_mib or 0 for i in scheduler.instances.values() if i.state is State.SLEEPING]
    by_node: dict[str, int] = {}  # on a cluster: what our engines hold of each node's RAM
    for name, mib in by_model.items():
        handle = scheduler.instances[name].handle
        if handle is not None and handle.where:
            by_node[handle.where] = by_node.get(handle.where, 0) + mib
    return {
        "budget_mib": scheduler.memory.host_budget_mib,
        "used_mib": sum(by_model.values()),
        "sleeping_mib": sum(sleeping),
        "available_mib": available_mib(),
        "models": by_model,
        "nodes": by_node,
    }


def gateway_status(scheduler: Scheduler) -> dict[str, Any]:
    memory, settings = scheduler.memory, scheduler.settings
    nodes = getattr(scheduler.runtime, "nodes", list)  # a cluster's nodes (none on one machine)
    return {
        "gpus": memory.status(),
        "models": [
            i.status(ttl_of(i, settings))
            | memory.model_status(i)
            | {"runtime": settings.runtime_of(i.model)}
            for i in scheduler.instances.values()
        ],
        "host_ram": host_ram(scheduler),
        "nodes": nodes(),
        "max_running": settings.max_running,
        "runtime": scheduler.runtime.kind,
        "events": [e for e in scheduler.events.recent if e["kind"] != "state"][-50:],
    }
