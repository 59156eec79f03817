"""The gateway's own routes: liveness, status, and loading or unloading a model by hand."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request

from vramgate import __version__
from vramgate.api.openai import uptime_s
from vramgate.errors import ModelNotFound
from vramgate.instances import State
from vramgate.scheduler import Scheduler

router = APIRouter()


def _scheduler(request: Request) -> Scheduler:
    return request.app.state.scheduler


def _name(scheduler: Scheduler, label: str) -> str:
    name = scheduler.settings.resolve(label)
    if name is None:
        known = ", ".join(sorted(scheduler.settings.models)) or "(none configured)"
        raise ModelNotFound(f"model '{label}' is not configured; known models: {known}")
    return name


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    scheduler = _scheduler(request)
    engines = {
        name: inst.state.value
        for name, inst in scheduler.instances.items()
        if inst.state is not State.STOPPED
    }
    return {"status": "ok", "uptime_s": uptime_s(request), "engines": engines}


@router.get("/gateway/status")
async def status(request: Request) -> dict[str, Any]:
    scheduler = _scheduler(request)
    return {"version": __version__, "uptime_s": uptime_s(request), **scheduler.status()}


@router.post("/admin/models/{label}/load")
async def load(label: str, request: Request) -> dict[str, Any]:
    scheduler = _scheduler(request)
    name = _name(scheduler, label)
    await scheduler.ensure_ready(name)
    inst = scheduler.instances[name]
    return inst.status(scheduler.settings.ttl_s(name))


@router.post("/admin/models/{label}/unload")
async def unload(label: str, request: Request) -> dict[str, Any]:
    scheduler = _scheduler(request)
    name = _name(scheduler, label)
    await scheduler.unload(name)
    inst = scheduler.instances[name]
    return inst.status(scheduler.settings.ttl_s(name))
