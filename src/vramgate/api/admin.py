"""The gateway's own routes: liveness, status, and loading or unloading a model by hand."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from vramgate import __version__
from vramgate.api.common import resolve_or_404, scheduler_of, uptime_s
from vramgate.instances import State

router = APIRouter()


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    scheduler = scheduler_of(request)
    engines = {
        name: inst.state.value
        for name, inst in scheduler.instances.items()
        if inst.state is not State.STOPPED
    }
    return {"status": "ok", "uptime_s": uptime_s(request), "engines": engines}


@router.get("/gateway/status")
async def status(request: Request) -> dict[str, Any]:
    scheduler = scheduler_of(request)
    return {"version": __version__, "uptime_s": uptime_s(request), **scheduler.status()}


@router.post("/admin/models/{label}/load")
async def load(label: str, request: Request) -> dict[str, Any]:
    scheduler = scheduler_of(request)
    name = resolve_or_404(scheduler.settings, label)
    await scheduler.ensure_ready(name)
    return scheduler.instances[name].status(scheduler.settings.ttl_s(name))


@router.post("/admin/models/{label}/unload")
async def unload(label: str, request: Request) -> dict[str, Any]:
    scheduler = scheduler_of(request)
    name = resolve_or_404(scheduler.settings, label)
    await scheduler.unload(name)
    return scheduler.instances[name].status(scheduler.settings.ttl_s(name))
