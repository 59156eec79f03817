"""The gateway's own routes: liveness, status, metrics, loading and unloading, logs, events,
reloading the configuration."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

from fastapi import APIRouter, Depends, Query, Request
from starlette.responses import Response, StreamingResponse

from vramgate import __version__, reconfigure
from vramgate.api import common
from vramgate.api.common import (
    access_of,
    admin_key,
    any_key,
    resolve_or_404,
    scheduler_of,
    uptime_s,
)
from vramgate.auth import Access
from vramgate.config import ConfigError
from vramgate.errors import BadRequest
from vramgate.events import Fanout
from vramgate.metrics import CONTENT_TYPE
from vramgate.scheduling.snapshot import State
from vramgate.scheduling.view import ttl_of
from vramgate.status import gateway_status

router = APIRouter()
HEARTBEAT_S = 15.0  # an SSE comment this often keeps proxies from closing an idle stream
MAX_TAIL = 10_000


@router.get("/health")
async def health(request: Request) -> dict[str, Any]:
    scheduler = scheduler_of(request)
    engines = {
        name: inst.state.value
        for name, inst in scheduler.instances.items()
        if inst.state is not State.STOPPED
    }
    return {"status": "ok", "uptime_s": uptime_s(request), "engines": engines}


@router.get("/metrics")
async def metrics(request: Request) -> Response:
    scheduler = scheduler_of(request)
    if scheduler.settings.auth.metrics == "key":
        access_of(request).require_known()
    return Response(request.app.state.metrics.render(), media_type=CONTENT_TYPE)


@router.get("/gateway/status", dependencies=[Depends(any_key)])
async def status(request: Request) -> dict[str, Any]:
    scheduler = scheduler_of(request)
    return {"version": __version__, "uptime_s": uptime_s(request), **gateway_status(scheduler)}


@router.get("/gateway/memory-history", dependencies=[Depends(any_key)])
async def memory_history(request: Request) -> dict[str, Any]:
    """Each device's memory over the last hour by model, with starts, stops and sleeps."""
    return request.app.state.history.report()


@router.post("/admin/models/{label:path}/load")
async def load(label: str, request: Request, access: Access = Depends(admin_key)) -> dict[str, Any]:
    scheduler = scheduler_of(request)
    name = resolve_or_404(scheduler.settings, label, access)
    inst = scheduler.instances[name]  # before the await: a reload may forget it meanwhile
    await scheduler.ensure_ready(name)
    return inst.status(ttl_of(inst, scheduler.settings))


@router.post("/admin/models/{label:path}/unload")
async def unload(
    label: str, request: Request, access: Access = Depends(admin_key)
) -> dict[str, Any]:
    scheduler = scheduler_of(request)
    name = resolve_or_404(scheduler.settings, label, access)
    inst = scheduler.instances[name]  # before the await: a reload may forget it meanwhile
    await common.unload(scheduler, access, name)
    return inst.status(ttl_of(inst, scheduler.settings))


@router.get("/admin/models/{label:path}/logs")
async def logs(
    label: str,
    request: Request,
    tail: int = Query(200, ge=1, le=MAX_TAIL),
    access: Access = Depends(admin_key),
) -> dict[str, Any]:
    """The last `tail` lines the engine wrote, from its log file (kept across restarts)."""
    scheduler = scheduler_of(request)
    name = resolve_or_404(scheduler.settings, label, access)
    path = scheduler.settings.engine_log(name)
    return {"model": name, "lines": _tail(path, tail)}


@router.get("/admin/models/{label:path}/logs/stream")
async def logs_stream(
    label: str,
    request: Request,
    tail: int = Query(50, ge=0, le=MAX_TAIL),
    access: Access = Depends(admin_key),
) -> StreamingResponse:
    """SSE: the last `tail` lines, then each new line as the engine writes it."""
    scheduler = scheduler_of(request)
    name = resolve_or_404(scheduler.settings, label, access)
    inst = scheduler.instances[name]
    path = scheduler.settings.engine_log(name)
    recent = [{"line": line} for line in _tail(path, tail)] if tail else []
    lines = _sse(inst.output, recent, lambda line: {"line": line}, request.app.state.stopping)
    return StreamingResponse(lines, media_type="text/event-stream", headers=_SSE_HEADERS)


@router.get("/admin/events", dependencies=[Depends(any_key)])
async def events(request: Request, recent: int = Query(20, ge=0, le=200)) -> StreamingResponse:
    """SSE: state changes and decisions (start, ready, stop and why, out of memory, reload)."""
    scheduler = scheduler_of(request)
    backlog = list(scheduler.events.recent)[-recent:] if recent else []
    stream = _sse(scheduler.events, backlog, lambda event: event, request.app.state.stopping)
    return StreamingResponse(stream, media_type="text/event-stream", headers=_SSE_HEADERS)


@router.post("/admin/reload", dependencies=[Depends(admin_key)])
async def reload(request: Request) -> dict[str, Any]:
    """Reads the configuration again; a bad one is refused (400) and the running one stays."""
    try:
        return await reconfigure.reload(scheduler_of(request), request.app.state.reload_settings)
    except ConfigError as exc:
        raise BadRequest(f"configuration not reloaded, the running one stays: {exc}") from None


_SSE_HEADERS = {"Cache-Control": "no-cache", "X-Accel-Buffering": "no"}


async def _sse(
    source: Fanout[Any], backlog: list[Any], shape: Any, stopping: asyncio.Event
) -> AsyncIterator[bytes]:
    """Items as SSE `data:` events until the client leaves or the gateway stops.

    The stream ends when the gateway is asked to stop: an open status page would otherwise hold
    the shutdown for all of drain_timeout (seen: 21.7 s with drain_timeout 20).
    """
    with source.listen() as queue:
        for item in backlog:
            yield _event(item)
        stop = asyncio.ensure_future(stopping.wait())
        try:
            while not stopping.is_set():
                get = asyncio.ensure_future(queue.get())
                await asyncio.wait({get, stop}, timeout=HEARTBEAT_S, return_when="FIRST_COMPLETED")
                if not get.done():
                    get.cancel()
                    if not stopping.is_set():
                        yield b": keep-alive\n\n"
                    continue
                missed = source.dropped(queue)
                if missed:
                    yield _event({"missed": missed})
                yield _event(shape(get.result()))
        finally:
            stop.cancel()


def _event(item: Any) -> bytes:
    return b"data: " + json.dumps(item).encode() + b"\n\n"


def _tail(path: Path, n: int) -> list[str]:
    """The last `n` lines of a log, read backwards from its end (logs grow to gigabytes)."""
    block = 64 << 10
    data = b""
    with contextlib.suppress(OSError), path.open("rb") as f:
        end = f.seek(0, 2)
        while end > 0 and data.count(b"\n") <= n:
            start = max(0, end - block)
            f.seek(start)
            data = f.read(end - start) + data
            end = start
    lines = data.decode("utf-8", errors="replace").splitlines()
    return lines[-n:]
