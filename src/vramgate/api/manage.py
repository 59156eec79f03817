"""Model management under /v1/models (seed designs): what is loaded, statistics, unloading."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Request
from pydantic import BaseModel

from vramgate import inventory
from vramgate.api import common
from vramgate.api.common import admin_key, any_key, resolve_or_404, scheduler_of
from vramgate.auth import Access
from vramgate.scheduling.driver import Scheduler
from vramgate.scheduling.snapshot import State
from vramgate.scheduling.view import ttl_of

router = APIRouter()


class UnloadRequest(BaseModel):
    model: str
    # Seed 003's clients name an instance by path, backend and device (exclusive mode).
    backend: str | None = None
    device: str | None = None


@router.get("/v1/models/loaded")
async def loaded(request: Request, access: Access = Depends(any_key)) -> dict[str, Any]:
    """Running models this key may use with when they started, their TTL and when they expire
    if left idle (another key's models, with their pids and ports, are not this one's to see)."""
    scheduler = scheduler_of(request)
    data = []
    for name, inst in scheduler.instances.items():
        if not inst.is_running or not access.may_use(name):
            continue
        ttl = ttl_of(inst, scheduler.settings)
        idle = inst.state is State.READY and inst.is_idle and inst.last_used_wall is not None
        expires = inst.last_used_wall + ttl if idle and ttl and inst.last_used_wall else None
        status = inst.status(ttl) | scheduler.memory.model_status(inst)
        data.append({**status, "id": name, "expires_at": None if inst.model.pinned else expires})
    return {"object": "list", "data": data}


@router.get("/v1/models/stats")
async def stats(request: Request, access: Access = Depends(any_key)) -> dict[str, Any]:
    """Per model this key may use: requests, served warm, needed a start, hit rate, loads,
    evictions; the totals are of those models."""
    scheduler = scheduler_of(request)
    data = []
    for name, inst in scheduler.instances.items():
        if not access.may_use(name):
            continue
        asked = inst.served_warm + inst.needed_start
        data.append(
            {
                "id": name,
                "requests": inst.requests,
                "served_warm": inst.served_warm,
                "needed_start": inst.needed_start,
                "hit_rate": round(inst.served_warm / asked, 4) if asked else None,
                "loads": inst.starts,
                "failures": inst.failures,
                "evictions": inst.evictions,
            }
        )
    totals: dict[str, Any] = {
        key: sum(d[key] for d in data)
        for key in ("requests", "served_warm", "needed_start", "loads", "failures", "evictions")
    }
    asked = totals["served_warm"] + totals["needed_start"]
    totals["hit_rate"] = round(totals["served_warm"] / asked, 4) if asked else None
    return {"object": "list", "data": data, "total": totals}


@router.get("/v1/models/inventory", dependencies=[Depends(any_key)])
async def inventory_list(request: Request) -> dict[str, Any]:
    """What is in models_dir: format, quantization, engine, estimated footprint, configured."""
    settings = scheduler_of(request).settings

    def listing() -> list[dict[str, Any]]:
        entries = inventory.scan(Path(settings.models_dir))
        return [inventory.describe(e, settings) for e in entries]

    data = await asyncio.to_thread(listing)  # estimates read file headers
    return {"object": "list", "models_dir": str(settings.models_dir), "data": data}


@router.post("/v1/models/unload")
async def unload(
    body: UnloadRequest, request: Request, access: Access = Depends(admin_key)
) -> dict[str, Any]:
    scheduler = scheduler_of(request)
    label = body.model
    if body.backend is not None or body.device is not None:
        options = inventory.seed_options({"backend": body.backend, "device": body.device})
        label = await asyncio.to_thread(_seed_instance, scheduler, label, options)
    name = resolve_or_404(scheduler.settings, label, access)
    inst = scheduler.instances[name]  # before the await: a reload may forget it meanwhile
    was = inst.state.value
    await common.unload(scheduler, access, name)
    return {"model": name, "was": was, "state": inst.state.value}


def _seed_instance(scheduler: Scheduler, label: str, options: dict[str, Any]) -> str:
    """The ad-hoc instance a seed 003 unload names (by path, backend and device); the label
    itself when none matches (then 404)."""
    root = Path(scheduler.settings.models_dir).resolve()
    entry = inventory.find(root, label, options.get("engine"))
    if entry is None:
        return label
    if "engine" in options:
        return inventory.instance_name(entry, options)
    device = options.get("device", "auto")  # as instance_name names one without
    for name in scheduler.adhoc_names:  # the one on that device, whichever engine runs it
        base, _, kind = name.rpartition("@")
        if base == entry.name and kind.endswith(f"-{device}"):
            return name
    return label


@router.post("/v1/models/unload-all")
async def unload_all(request: Request, access: Access = Depends(admin_key)) -> dict[str, Any]:
    """Every running model but the pinned ones (which stay, whoever asks)."""
    scheduler = scheduler_of(request)
    running = [n for n, i in scheduler.instances.items() if i.is_running and not i.model.pinned]
    await asyncio.gather(*(common.unload(scheduler, access, n) for n in running))
    return {"unloaded": running}
