"""The /v1 routes: requests routed by their `model` to an engine started on demand, and the list."""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

import orjson
from fastapi import APIRouter, Depends, Request
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from vramgate import reconfigure
from vramgate.api.common import any_key, refuse_cross_site, resolve_or_404, scheduler_of
from vramgate.auth import Access, presented_key
from vramgate.engines.base import ALL_ROUTES
from vramgate.errors import BadRequest, EngineGone, GatewayError, PayloadTooLarge
from vramgate.inventory import SEED_FIELDS
from vramgate.proxy import Timing, hangup_cancels, relay, send_error
from vramgate.scheduling.driver import Scheduler
from vramgate.scheduling.slots import confirm_exit

router = APIRouter()
log = logging.getLogger("vramgate.api")
CLIENT_CLOSED = 499  # the client left before the answer ended (nginx's code for it)
# An engine that died just as a request got its slot refuses the connection: the request, which
# provably never reached it, is decided again once (the model restarts for it) rather than failed.
# A request that reached an engine is never sent again (upstream.py).
RELAY_ATTEMPTS = 2
BROKEN_EXIT_S = 0.5  # an engine that broke a request: how long its exit may take to be seen


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
    model = payload.get("model")
    if not isinstance(model, str) or not model:
        raise BadRequest("request body has no `model` field naming the model to use")
    if not model.isprintable():
        raise BadRequest("`model` has control characters; no model is named so")
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
        state = scope["app"].state
        scheduler: Scheduler = state.scheduler
        timing = Timing(time.perf_counter())
        served: list[str] = []  # the model, once known: the metrics' label
        access = Access(scheduler.settings, presented_key(scope["headers"]))
        try:
            await self._serve(scheduler, access, scope, receive, send, timing, served)
        except ClientDisconnect:
            timing.status = CLIENT_CLOSED
        except GatewayError as exc:
            timing.status = exc.status
            # An engine's output is for those who may read its logs.
            await send_error(send, exc, detail=access.open or access.admin)
        except Exception as exc:
            log.exception("relaying %s failed", self.path)
            timing.status = 500
            with contextlib.suppress(RuntimeError):  # the answer had started: nothing to add
                await send_error(send, GatewayError(f"internal error: {exc!r}"))
        now = time.perf_counter()
        first = None if timing.first_chunk is None else timing.first_chunk - timing.arrived
        state.metrics.request(
            served[0] if served else "", self.path, timing.status or CLIENT_CLOSED,
            now - timing.arrived, timing.overhead, first,
        )  # fmt: skip

    async def _serve(
        self,
        scheduler: Scheduler,
        access: Access,
        scope: Scope,
        receive: Receive,
        send: Send,
        timing: Timing,
        served: list[str],
    ) -> None:
        settings = scheduler.settings
        access.require_known()  # before the body is even read
        refuse_cross_site(scope["headers"])
        body = await read_body(scope, receive, int(settings.max_body_mb * (1 << 20)))
        payload = parse_request(body)
        name = settings.resolve(payload["model"])
        options = payload.pop("vramgate", None)  # the gateway's, never the engine's
        # Seed 003's engine settings beside `model`: the gateway's too.
        seed = {k: payload.pop(k) for k in SEED_FIELDS if k in payload}
        if options is not None or seed:
            body = orjson.dumps(payload)
        if settings.allow_adhoc and (name is None or name in scheduler.adhoc_names):
            access.require_adhoc()  # before anything is looked up or defined
            name = await reconfigure.adhoc(scheduler, payload["model"], options, seed)
            settings = scheduler.settings
        elif name is None:
            name = resolve_or_404(settings, payload["model"])
        access.require_model(name)
        served.append(name)
        model = settings.models[name]
        adapter = scheduler.adapters[model.engine]
        if self.path not in adapter.routes(model):
            routes = ", ".join(sorted(adapter.routes(model)))
            raise BadRequest(
                f"model '{name}' (task: {model.task}) does not serve {self.path}; "
                f"it serves {routes}"
            )
        fix = adapter.answer_fix(payload["model"], self.path)
        upstream = adapter.upstream_model(name, model)
        if payload["model"] != upstream:
            payload["model"] = upstream
            body = orjson.dumps(payload)
        is_stream = payload.get("stream") is True
        waiting = time.perf_counter()
        async with hangup_cancels(receive):
            for attempt in range(RELAY_ATTEMPTS):
                hold = scheduler.lease(name)
                async with hold as lease:
                    timing.waited = time.perf_counter() - waiting
                    try:
                        broke = await relay(
                            scheduler.upstream, name, lease.url, self.path, body, is_stream,
                            send, timing, fix,
                        )  # fmt: skip
                        if broke:
                            scheduler.release_after_exit(hold, BROKEN_EXIT_S)
                        return
                    except EngineGone:
                        if attempt + 1 == RELAY_ATTEMPTS:
                            raise
                        await confirm_exit(lease)


RELAYS = {path: RelayEndpoint(path) for path in ALL_ROUTES}


@router.get("/v1/models")
async def list_models(request: Request, access: Access = Depends(any_key)) -> dict[str, Any]:
    """The models this key may use (all of them when no key is configured)."""
    scheduler = scheduler_of(request)
    created = int(request.app.state.started_at)
    data = []
    for name, inst in scheduler.instances.items():
        if name not in scheduler.settings.models or not access.may_use(name):
            continue
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
