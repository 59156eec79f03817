"""The snapshot `decide` reads, made from the instances and memory at one moment."""

from __future__ import annotations

import time
from collections.abc import Iterable, Mapping

from vramgate.config import Settings
from vramgate.engines.base import EngineAdapter
from vramgate.instances import Instance
from vramgate.memory import Memory
from vramgate.scheduling.snapshot import ModelSnap, Snapshot


def snapshot(
    instances: Iterable[Instance],
    settings: Settings,
    memory: Memory,
    adapters: Mapping[str, EngineAdapter],
    *,
    with_memory: bool,
    room_queue: tuple[str, ...] = (),
) -> Snapshot:
    """Every model given; GPU figures only `with_memory` (reading them costs I/O: NVML, /proc)."""
    models = {i.name: _snap(i, settings, memory, adapters, with_memory) for i in instances}
    held = sum(m.host_held_mib for m in models.values())
    by_node: dict[str, int] = {}
    for m in models.values():
        by_node[m.node] = by_node.get(m.node, 0) + m.host_held_mib
    return Snapshot(
        models,
        memory.memory() if with_memory else (),
        settings.max_running,
        time.monotonic(),
        settings.gpus.min_residency,
        memory.policy,
        room_queue,
        memory.host_budget_mib,
        memory.host_device(held) if with_memory else None,
        # Every decision, housekeeping too, counts each node's RAM against its own budget, not
        # the gateway machine's; the nodes' last readings are at hand (no I/O).
        memory.host_devices(by_node),
    )


def request_snap(inst: Instance, settings: Settings) -> ModelSnap:
    """What a request's decision reads of its model (`decide.decide_request`), and nothing
    else: built per request, so the rest (memory, TTL, sleep) is left at its defaults."""
    model = inst.model
    max_queue = model.max_queue
    return ModelSnap(
        name=inst.name,
        state=inst.state,
        in_flight=inst.in_flight,
        queued=len(inst.slot_waiters),
        max_concurrency=model.max_concurrency,
        max_queue=settings.defaults.max_queue if max_queue is None else max_queue,
        draining_for=inst.draining_for,
        pending=inst.pending,
    )


def ttl_of(inst: Instance, settings: Settings) -> float:
    """Idle seconds before its stop (0: never): what a client asked for until the next stop
    (Ollama's keep_alive), else its configuration's."""
    if inst.keep_alive_s is not None:
        return inst.keep_alive_s
    return settings.setting_of(inst.model, "ttl")


def _rank(inst: Instance, settings: Settings) -> float | None:
    """Eviction order, lowest first (None: least recently used first)."""
    return inst.priority if settings.gpus.eviction in ("frequency", "cost") else None


def _snap(
    inst: Instance,
    settings: Settings,
    memory: Memory,
    adapters: Mapping[str, EngineAdapter],
    with_memory: bool,
) -> ModelSnap:
    model, defaults = inst.model, settings.defaults
    # A request's own fields, then the rest: the two views agree by construction.
    return request_snap(inst, settings)._replace(
        joining=inst.joining,
        last_used=inst.last_used,
        pinned=model.pinned,
        rank=_rank(inst, settings),
        gpus=inst.gpus,
        gpu_count=0 if memory.device(model) == "cpu" else model.gpus,
        footprint_mib=memory.footprint(inst)[0] if with_memory else None,
        held_mib=memory.held_mib(inst) if with_memory else 0,
        loaded_at=inst.loaded_at,
        drain_after_s=settings.gpus.drain_after,
        ttl_s=ttl_of(inst, settings),
        admitted=inst.admitted,
        made_way_for=inst.made_way_for,
        can_sleep=model.sleep > 0
        and adapters[model.engine].sleep_calls(memory.as_run(model)) is not None,
        host_mib=memory.host_mib(inst) if model.sleep else 0,
        ram_mib=memory.ram(inst)[0],  # no I/O: 0 at once for a model wholly on GPUs
        reload_s=memory.reload_s(inst) if with_memory else 0.0,
        sleep_after_s=defaults.sleep_after if model.sleep_after is None else model.sleep_after,
        asleep=inst.asleep,
        nodes=tuple(model.nodes),
        node=inst.node,
    )
