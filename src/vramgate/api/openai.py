"""The /v1 routes: requests routed by their `model` to an engine started on demand, and the list."""

from __future__ import annotations

import contextlib
import logging
from typing import Any

import orjson
from fastapi import APIRouter, Request
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from vramgate.api.common import resolve_or_404, scheduler_of
from vramgate.engines.base import ALL_ROUTES
from vramgate.errors import BadRequest, GatewayError, PayloadTooLarge
from vramgate.proxy import relay, send_error
from vramgate.scheduler import Scheduler

router = APIRouter()
log = logging.getLogger("vramgate.api")


async def read_body(scope: Scope, receive: Receive, max_bytes: int) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed `max_bytes`."""
    for key, value in scope["headers"]:
        if key == b"content-length" and value.isdigit() and int(value) > max_bytes:
            raise PayloadTooLarge(_too_large(int(value), max_bytes))
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnect()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > max_bytes:
            raise PayloadTooLarge(_too_large(size, max_bytes))
        chunks.append(chunk)
        if not message.get("more_body", False):
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


class RelayEndpoint:
    """POST on one OpenAI route: routed by the body's `model`, started on demand, relayed.

    A plain ASGI endpoint that the gateway app calls before FastAPI sees the request: it is the
    hot path, and skipping FastAPI's middleware, routing and request objects took the gateway's
    added latency at concurrency 1 from about 1.3 to 0.8 ms and its throughput up by a quarter
    (bench/overhead.py). So it answers its own errors, in the same OpenAI shape.
    """

    def __init__(self, path: str) -> None:
        self.path = path

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await self._serve(scope, receive, send)
        except ClientDisconnect:
            return
        except GatewayError as exc:
            await send_error(send, exc)
        except Exception as exc:
            log.exception("relaying %s failed", self.path)
            with contextlib.suppress(RuntimeError):  # the answer had started: nothing to add
                await send_error(send, GatewayError(f"internal error: {exc!r}"))

    async def _serve(self, scope: Scope, receive: Receive, send: Send) -> None:
        scheduler: Scheduler = scope["app"].state.scheduler
        settings = scheduler.settings
        body = await read_body(scope, receive, int(settings.max_body_mb * (1 << 20)))
        payload = parse_request(body)
        name = resolve_or_404(settings, payload["model"])
        model = settings.models[name]
        adapter = scheduler.adapters[model.engine]
        if self.path not in adapter.routes(model):
            served = ", ".join(sorted(adapter.routes(model)))
            raise BadRequest(
                f"model '{name}' (task: {model.task}) does not serve {self.path}; "
                f"it serves {served}"
            )
        upstream = adapter.upstream_model(name, model)
        if payload["model"] != upstream:
            payload["model"] = upstream
            body = orjson.dumps(payload)
        is_stream = payload.get("stream") is True
        async with scheduler.lease(name) as lease:
            assert scheduler.http is not None
            url = f"http://127.0.0.1:{lease.port}{self.path}"
            await relay(scheduler.http, name, url, body, is_stream, receive, send)


RELAYS = {path: RelayEndpoint(path) for path in ALL_ROUTES}


@router.get("/v1/models")
async def list_models(request: Request) -> dict[str, Any]:
    scheduler = scheduler_of(request)
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
