"""What the route modules share: the scheduler, names resolved or 404, keys checked."""

from __future__ import annotations

import time

from fastapi import Request

from vramgate.auth import Access, cross_site, presented_key
from vramgate.config import Settings
from vramgate.errors import Forbidden, ModelNotFound, UnsupportedMediaType
from vramgate.scheduling.driver import Scheduler


def scheduler_of(request: Request) -> Scheduler:
    return request.app.state.scheduler


def uptime_s(request: Request) -> float:
    return round(time.time() - request.app.state.started_at, 3)


def resolve_or_404(settings: Settings, label: str, access: Access) -> str:
    """The model a name or alias stands for; 404 listing the names `access` may use if none
    (Access.listing)."""
    name = settings.resolve(label)
    if name is None:
        raise ModelNotFound(f"model '{label}' is not configured; {access.listing()}")
    return name


async def unload(scheduler: Scheduler, access: Access, name: str) -> None:
    """Unloading, through any API (the admin routes, Ollama's `keep_alive: 0`): an admin key's
    to ask (403 otherwise); the scheduler lets running requests finish and keeps pinned models
    (Scheduler.unload)."""
    access.require_admin()
    await scheduler.unload(name)


def access_of(request: Request) -> Access:
    return Access(scheduler_of(request).settings, presented_key(request.scope["headers"]))


async def any_key(request: Request) -> Access:
    """Dependency of read-only routes: any valid key (or none, when none is configured)."""
    access = access_of(request)
    access.require_known()
    return access


async def admin_key(request: Request) -> Access:
    """Dependency of routes that change things or show engine output: an admin key, and (for
    changes) a request that no other site's page made: JSON only, never a form or text/plain."""
    access = access_of(request)
    access.require_admin()
    if request.method != "GET":
        refuse_cross_site(request.scope["headers"], scheduler_of(request).settings.cors_origins)
        kind = request.headers.get("content-type", "").split(";")[0].strip().lower()
        sized = request.headers.get("content-length", "0") != "0"
        if (sized or "transfer-encoding" in request.headers) and kind != "application/json":
            raise UnsupportedMediaType(
                f"this route takes a JSON body (Content-Type: application/json), not {kind!r}"
            )
    return access


def refuse_cross_site(headers: list[tuple[bytes, bytes]], allowed: list[str] | None = None) -> None:
    why = cross_site(headers, allowed or ())
    if why is not None:
        raise Forbidden(f"{why} was refused: call the gateway from a program or its own page")
