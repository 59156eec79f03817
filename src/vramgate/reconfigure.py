"""Changing what the gateway serves while it runs: a reloaded configuration, and ad-hoc models
that a request names from models_dir (`allow_adhoc`). Both produce model definitions; the
scheduler applies them through its own start and stop paths and never stops a busy engine.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from vramgate import inventory
from vramgate.auth import Access
from vramgate.config import ModelConfig, Settings
from vramgate.errors import Conflict, ModelNotFound
from vramgate.scheduling.driver import Scheduler
from vramgate.scheduling.snapshot import State
from vramgate.scheduling.view import snapshot


async def adhoc(
    scheduler: Scheduler, access: Access, label: str, options: Any, seed: dict[str, Any]
) -> str:
    """Makes an inventory model that is not configured servable; returns its one name
    (`inventory.instance_name`: its name in models_dir, however `label` spells its path, with
    engine and device where seed 003's fields choose them).

    The caller has checked the key first: nothing is defined for a key that may not use it.
    It lives until a reload (which does not list it, so it drains and goes), a restart, or
    until newer ad-hoc models push it out (max_adhoc; only one with no engine goes).
    Asked again with other settings while its engine runs: 409, unload it first.
    """
    options = inventory.check_options(options)  # before anything reads it: 400, not a 500
    if seed:
        options |= inventory.seed_options(seed)
    if not options:
        known = label if label in scheduler.adhoc_names else scheduler.adhoc_labels.get(label)
        if known is not None and known in scheduler.adhoc_names:
            return known  # no settings of its own: whatever it runs with
    # A walk of models_dir reads the disk: not on the event loop.
    root = await asyncio.to_thread(Path(scheduler.settings.models_dir).resolve)
    entry = await asyncio.to_thread(inventory.find, root, label, options.get("engine"))
    if entry is None:
        # As resolve_or_404: the names this key may use; and where models_dir lies on disk is
        # the admin's to know, not any key's.
        where = f"models_dir ({root})" if access.open or access.admin else "models_dir"
        raise ModelNotFound(
            f"model '{label}' is neither configured ({access.listing()}) nor in {where}; "
            "GET /v1/models/inventory lists what is there"
        )
    name = inventory.instance_name(entry, options)
    if name in scheduler.settings.models and name not in scheduler.adhoc_names:
        raise Conflict(
            f"model '{label}' is file '{entry.name}' of models_dir, and a configured model is "
            f"named '{name}': ad-hoc models never take a configured model's name; ask for "
            f"'{name}' to use the configured one"
        )
    model = inventory.adhoc_model(entry, root, options)
    inst = scheduler.instances.get(name)
    if inst is not None and inst.model != model and inst.state not in (State.STOPPED, State.FAILED):
        raise Conflict(
            f"model '{name}' runs with other settings; unload it first "
            f"(POST /v1/models/unload) to start it with these"
        )
    if inst is None or inst.model != model or name not in scheduler.adhoc_names:
        scheduler.define_adhoc(name, model, f"{name}: ad-hoc model from {entry.path}")
    if not options:
        scheduler.remember_label(label, name)
    return name


async def reload(scheduler: Scheduler, load: Callable[[], Settings]) -> dict[str, list[str]]:
    """Reads the configuration again (in a thread: it is file I/O) and applies it; a bad one
    raises ConfigError and changes nothing."""
    return apply_settings(scheduler, await asyncio.to_thread(load))


def apply_settings(scheduler: Scheduler, new: Settings) -> dict[str, list[str]]:
    """Takes a new, validated configuration without a restart.

    Unchanged models keep running untouched; changed ones are restarted once they have drained
    (at once if not running); removed ones stop taking requests, finish what is in flight,
    then stop; added ones become available (pinned ones start).
    """
    old = scheduler.settings
    # Ad-hoc models are in no file: they stay (unless the file now names them, or ad-hoc
    # use was turned off, which drains and drops them).
    adhoc = {n for n in scheduler.adhoc_names if new.allow_adhoc and n not in new.models}
    kept = {n: scheduler.instances[n].model for n in adhoc}
    new = new.model_copy(update={"models": {**new.models, **kept}})
    summary = diff(old, new, {n: i.model for n, i in scheduler.instances.items()})
    summary["applied"] = _apply_live(scheduler, old, new)  # before the tick that apply runs
    scheduler.apply(new, set(summary["changed"]), set(summary["removed"]), adhoc)
    summary["restart_required"] = [
        k
        for k in ("host", "port", "state_dir", "gpus", "models_dir", "cluster")
        if getattr(old, k) != getattr(new, k)
    ]
    parts = [f"{k} {', '.join(v)}" for k, v in summary.items() if v and k != "kept"]
    message = "configuration reloaded: " + ("; ".join(parts) or "no change")
    scheduler.events.record("reload", "", message)
    return summary


def _apply_live(scheduler: Scheduler, old: Settings, new: Settings) -> list[str]:
    """Settings a reload applies at once, those that changed: the host RAM budget (every
    decision reads it; housekeeping stops sleepers and idle engines on the CPU over a lowered
    one, least recently used first; each node's, on a cluster), and the KV caches' disk
    budget (the next save trims to it). The others in `restart_required` need a restart:
    the listening socket, the state folder, the GPU backend and the cluster are made once."""
    applied = []
    if old.host_ram_mib != new.host_ram_mib:
        insts = scheduler.instances.values()
        held = snapshot(
            insts, scheduler.settings, scheduler.memory, scheduler.adapters, with_memory=False
        )
        scheduler.memory.host.set_budget(new.host_ram_mib, held.host_used_on(""))
        applied.append("host_ram_mib")
    if old.kv_disk_mib != new.kv_disk_mib:
        scheduler.life.kv.budget_bytes = new.kv_disk_mib << 20
        applied.append("kv_disk_mib")
    return applied


def diff(old: Settings, new: Settings, current: dict[str, ModelConfig]) -> dict[str, list[str]]:
    """Which models a new configuration adds, changes, removes and keeps."""
    summary: dict[str, list[str]] = {"added": [], "changed": [], "removed": [], "kept": []}
    for name, model in current.items():
        if name not in new.models:
            summary["removed"].append(name)
        elif new.models[name] != model or _engine_changed(old, new, model):
            summary["changed"].append(name)
        else:
            summary["kept"].append(name)
    summary["added"] = [n for n in new.models if n not in current]
    return summary


def _engine_changed(old: Settings, new: Settings, model: ModelConfig) -> bool:
    """The engine settings of `model`'s kind (its binary) changed."""
    return old.engines.get(model.engine) != new.engines.get(model.engine)
