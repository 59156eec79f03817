"""Changing what the gateway serves while it runs: a reloaded configuration, and ad-hoc models
that a request names from models_dir (`allow_adhoc`). Both go through the scheduler's own
start and stop paths; nothing here stops an engine that is busy.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from vramgate import inventory
from vramgate.config import ModelConfig, Settings
from vramgate.engines import adapters
from vramgate.errors import Conflict, ModelNotFound
from vramgate.instances import State

if TYPE_CHECKING:
    from vramgate.scheduler import Scheduler


def adhoc(scheduler: Scheduler, label: str, options: Any) -> str:
    """Makes an inventory model that is not configured servable under the name asked for.

    It lives until a reload (which does not list it, so it drains and goes) or a restart.
    Asked again with other settings while its engine runs: 409, unload it first.
    """
    root = Path(scheduler.settings.models_dir).resolve()
    entry = inventory.find(root, label)
    if entry is None:
        known = ", ".join(sorted(scheduler.settings.models)) or "(none configured)"
        raise ModelNotFound(
            f"model '{label}' is neither configured ({known}) nor in models_dir ({root}); "
            "GET /v1/models/inventory lists what is there"
        )
    inst = scheduler.instances.get(label)
    if inst is not None and options is None and label in scheduler.adhoc_names:
        return label  # no settings of its own: whatever it runs with
    model = inventory.adhoc_model(entry, root, options)
    if inst is None:
        inst = scheduler.add_instance(label, model)
        scheduler.memory.refresh(inst)
        scheduler.record("adhoc", label, f"{label}: ad-hoc model from {entry.path}")
    elif inst.model != model:
        if inst.state not in (State.STOPPED, State.FAILED):
            raise Conflict(
                f"model '{label}' runs with other settings; unload it first "
                f"(POST /v1/models/unload) to start it with these"
            )
        inst.model = model
        scheduler.memory.refresh(inst)
    inst.removed = False
    scheduler.adhoc_names.add(label)
    models = {**scheduler.settings.models, label: model}
    scheduler.settings = scheduler.settings.model_copy(update={"models": models})
    return label


async def reload(scheduler: Scheduler, load: Callable[[], Settings]) -> dict[str, list[str]]:
    """Reads the configuration again (in a thread: it is file I/O) and applies it; a bad one
    raises ConfigError and changes nothing."""
    return apply_settings(scheduler, await asyncio.to_thread(load))


def apply_settings(scheduler: Scheduler, new: Settings) -> dict[str, list[str]]:
    """Takes a new, validated configuration without a restart.

    Unchanged models keep running untouched; changed ones are restarted once idle (at
    once if not running); removed ones stop taking requests, finish what is in flight,
    then stop; added ones become available (pinned ones start).
    """
    old = scheduler.settings
    summary: dict[str, list[str]] = {"added": [], "changed": [], "removed": [], "kept": []}
    # Ad-hoc models are in no file: they stay (unless the file now names them, or ad-hoc
    # use was turned off, which drains and drops them).
    scheduler.adhoc_names = {
        n for n in scheduler.adhoc_names if new.allow_adhoc and n not in new.models
    }
    kept = {n: scheduler.instances[n].model for n in scheduler.adhoc_names}
    new = new.model_copy(update={"models": {**new.models, **kept}})
    restart = [
        k
        for k in ("host", "port", "state_dir", "gpus", "models_dir")
        if getattr(old, k) != getattr(new, k)
    ]
    scheduler.settings = new
    scheduler.adapters = adapters(new)
    for name, inst in scheduler.instances.items():
        model = new.models.get(name)
        if model is None:
            inst.removed = True
            summary["removed"].append(name)
        elif model != inst.model or _engine_changed(old, new, model):
            inst.removed = False
            inst.replacement = model
            summary["changed"].append(name)
        else:
            inst.removed, inst.replacement = False, None
            summary["kept"].append(name)
    for name, model in new.models.items():
        if name not in scheduler.instances:
            inst = scheduler.add_instance(name, model)
            scheduler.memory.refresh(inst)
            summary["added"].append(name)
            if model.pinned:
                scheduler.begin_start(inst)
    reload_step(scheduler)
    summary["restart_required"] = restart
    parts = [f"{k} {', '.join(v)}" for k, v in summary.items() if v and k != "kept"]
    scheduler.record("reload", "", "configuration reloaded: " + ("; ".join(parts) or "no change"))
    return summary


def reload_step(scheduler: Scheduler) -> None:
    """Carries out a reload's pending changes on the models that are idle now."""
    for name, inst in list(scheduler.instances.items()):
        if inst.removed:
            if inst.state in (State.STOPPED, State.FAILED):
                del scheduler.instances[name]
            elif inst.state is State.READY and inst.is_idle:
                scheduler.stop(name, "reload", "removed from the configuration")
        elif inst.replacement is not None:
            if inst.state in (State.STOPPED, State.FAILED):
                scheduler.take_replacement(inst)
                if inst.model.pinned:
                    scheduler.begin_start(inst)
            elif inst.state is State.READY and inst.is_idle:
                scheduler.stop(name, "reload", "its definition changed")


def _engine_changed(old: Settings, new: Settings, model: ModelConfig) -> bool:
    """The engine settings of `model`'s kind (its binary) changed."""
    kind = model.engine
    return getattr(old.engines, kind, None) != getattr(new.engines, kind, None)
