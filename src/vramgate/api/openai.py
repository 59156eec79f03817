"""The /v1 routes: requests routed by their `model` to an engine started on demand, and the list."""

from __future__ import annotations

import time
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.responses import Response

from vramgate.engines.base import ALL_ROUTES
from vramgate.errors import BadRequest, ModelNotFound, PayloadTooLarge
from vramgate.proxy import Relay
from vramgate.scheduler import Scheduler

router = APIRouter()


def _scheduler(request: Request) -> Scheduler:
    return request.app.state.scheduler


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `max_bytes`."""
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        raise PayloadTooLarge(_too_large(int(declared), max_bytes))
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(_too_large(size, max_bytes))
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(size: int, max_bytes: int) -> str:
    limit_mb = max_bytes / (1 << 20)
    return f"request body of {size} bytes is over the limit of {limit_mb:g} MiB (max_body_mb)"


def parse_request(body: bytes) -> dict[str, Any]:
    try:
        payload = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise BadRequest(f"request body is not valid JSON: {exc}") from None
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    if not isinstance(payload.get("model"), str) or not payload["model"]:
        raise BadRequest("request body has no `model` field naming the model to use")
    return payload


async def relay(request: Request) -> Response:
    scheduler = _scheduler(request)
    settings = scheduler.settings
    body = await read_body(request, int(settings.max_body_mb * (1 << 20)))
    payload = parse_request(body)
    name = settings.resolve(payload["model"])
    if name is None:
        known = ", ".join(sorted(settings.models)) or "(none configured)"
        raise ModelNotFound(f"model '{payload['model']}' is not configured; known models: {known}")
    model = settings.models[name]
    adapter = scheduler.adapters[model.engine]
    path = request.url.path
    if path not in adapter.routes(model):
        served = ", ".join(sorted(adapter.routes(model)))
        raise BadRequest(
            f"model '{name}' (task: {model.task}) does not serve {path}; it serves {served}"
        )
    upstream = adapter.upstream_model(name, model)
    if payload["model"] != upstream:
        payload["model"] = upstream
        body = orjson.dumps(payload)
    lease = await scheduler.acquire(name)
    assert scheduler.http is not None
    return Relay(
        scheduler.http,
        name,
        lease.port,
        path,
        body,
        payload.get("stream") is True,
        lambda: scheduler.release(lease.instance),
    )


for _path in sorted(ALL_ROUTES):
    router.add_api_route(_path, relay, methods=["POST"], include_in_schema=True)


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    scheduler = _scheduler(request)
    created = int(request.app.state.started_at)
    data = []
    for name, inst in scheduler.instances.items():
        data.append(
            {
                "id": name,
                "object": "model",
                "created": created,
                "owned_by": "vramgate",
                "vramgate": {
                    "state": inst.state.value,
                    "engine": inst.model.engine,
                    "task": inst.model.task,
                    "aliases": list(inst.model.aliases),
                },
            }
        )
    return {"object": "list", "data": data}


def uptime_s(request: Request) -> float:
    return round(time.time() - request.app.state.started_at, 3)
