"""What every relaying route shares, whichever API the client speaks: the body read within its
limit (guards.py), the key checked, the model resolved (ad-hoc ones defined), a slot leased (the
engine started if need be, a streamed wait kept alive), the request relayed once, and every error
answered in the client's API's shape (api/shapes.py).

The routes are plain ASGI endpoints that the gateway app calls before FastAPI sees the request:
this is the hot path, and skipping FastAPI's middleware, routing and request objects took the
gateway's added latency at concurrency 1 from about 1.3 to 0.8 ms (bench/overhead.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from typing import Any

import orjson
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from vramgate import reconfigure
from vramgate.api import guards
from vramgate.api.common import refuse_cross_site, resolve_or_404
from vramgate.api.shapes import OPENAI, Shape
from vramgate.auth import Access, presented_key
from vramgate.config import Settings
from vramgate.errors import BadRequest, EngineGone, EngineReset, GatewayError
from vramgate.inventory import SEED_FIELDS
from vramgate.proxy import _STREAM_HEADERS, Mend, Opened, Timing, hangup_cancels, relay, send_error
from vramgate.scheduling.driver import Scheduler
from vramgate.scheduling.slots import confirm_exit, killed_unasked

log = logging.getLogger("vramgate.api")
CLIENT_CLOSED = 499  # the client left before the answer ended (nginx's code for it)
# An engine that died just as a request got its slot refuses the connection: the request, which
# provably never reached it, is decided again once (the model restarts for it) rather than failed.
# A request that reached an engine is never sent again (upstream.py).
RELAY_ATTEMPTS = 2
BROKEN_EXIT_S = 0.5  # an engine that broke a request: how long its exit may take to be seen


@dataclass
class Routed:
    """Where a request goes and how its answer comes back."""

    name: str  # the model
    path: str  # the engine's route
    body: bytes  # what the engine is sent
    is_stream: bool
    mend: Mend | None = None  # None: the engine's answer goes to the client as it is
    keepalive: bytes | None = None  # sent while a stream waits (default: the shape's)
    head: bytes = b""  # the client's own header lines the engine gets too (its native routes)


def parse_request(
    body: bytes, settings: Settings, access: Access, fallback: str | None = None
) -> dict[str, Any]:
    """A JSON object (guards.parse_json: bounded depth) with a `model` string that names no
    file by a control character, and a `stream` that is a boolean (or null); one with no
    `model` (or `"model": null`) is given `fallback` (a `model` query parameter), else the
    default model (default_model)."""
    payload = guards.parse_json(body)
    if not isinstance(payload, dict):
        raise BadRequest("request body must be a JSON object")
    guards.check_stream(payload)
    model = payload.get("model")
    if model is None:
        payload["model"] = fallback or default_model(settings, access)
        return payload
    if not isinstance(model, str) or not model:
        raise BadRequest("`model` must be a string naming the model to use")
    if not model.isprintable():
        raise BadRequest("`model` has control characters; no model is named so")
    return payload


def default_model(settings: Settings, access: Access) -> str:
    """The model of a request that names none (`default_model`, or the sole model), if
    `access` may use it; else a 400 listing the models it may use (Access.listing). A default
    the key may not use is answered as no default: its name is not this key's to learn."""
    name = settings.default_name
    if name is None or not access.may_use(name):
        raise BadRequest(
            "the request has no `model` field (nor a `model` query parameter) naming the model "
            f"to use, and there is no default model (default_model) for it; {access.listing()}"
        )
    return name


class Endpoint:
    """POST on one route of one client API: routed by the body's model, started on demand,
    relayed. Subclasses say how a request goes to the engine (`route`)."""

    shape: Shape = OPENAI

    def __init__(self, path: str) -> None:
        self.path = path
        self.route_label = path  # the metrics' route: a pattern where the path holds an id

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        state = scope["app"].state
        scheduler: Scheduler = state.scheduler
        timing = Timing(time.perf_counter())
        served: list[str] = []  # the model, once known: the metrics' label
        opened = Opened()
        access = Access(scheduler.settings, presented_key(scope["headers"]))
        try:
            await self._serve(scheduler, access, scope, receive, send, timing, served, opened)
        except ClientDisconnect:
            timing.status = CLIENT_CLOSED
        except GatewayError as exc:
            timing.status = exc.status
            await self._error(send, exc, opened, detail=access.open or access.admin)
        except Exception as exc:
            timing.status = 500
            error = guards.internal_error(f"relaying {self.path}", exc)
            with contextlib.suppress(RuntimeError):  # the answer had started: nothing to add
                await self._error(send, error, opened)
        now = time.perf_counter()
        first = None if timing.first_chunk is None else timing.first_chunk - timing.arrived
        state.metrics.request(
            served[0] if served else "", self.route_label, timing.status or CLIENT_CLOSED,
            now - timing.arrived, timing.overhead, first,
        )  # fmt: skip

    async def _error(
        self, send: Send, exc: GatewayError, opened: Opened, *, detail: bool = False
    ) -> None:
        """An engine's output is for those who may read its logs (`detail`)."""
        if opened.started:  # a stream was promised while the engine started: it ends with this
            await send({"type": "http.response.body", "body": self.shape.stream_error(exc),
                        "more_body": True})  # fmt: skip
            await send({"type": "http.response.body", "body": b"", "more_body": False})
        else:
            await send_error(send, exc, detail=detail, shape=self.shape)

    async def _serve(
        self,
        scheduler: Scheduler,
        access: Access,
        scope: Scope,
        receive: Receive,
        send: Send,
        timing: Timing,
        served: list[str],
        opened: Opened,
    ) -> None:
        settings = scheduler.settings
        access.require_known()  # before the body is even read
        refuse_cross_site(scope["headers"], settings.cors_origins)
        body = await guards.read_body(scope, receive, guards.max_body_bytes(settings))
        named = b'"model"' in body  # cheap; a miss only costs a body written again below
        payload = self.parse(body, settings, access)
        label = await self.label(scheduler, payload)
        name, stripped = await resolve(scheduler, access, label, payload)
        if "stream" in payload and payload["stream"] is None:  # null: the API's default
            del payload["stream"]
            stripped = True
        if stripped or not named:  # the gateway's own fields never reach the engine
            body = orjson.dumps(payload)
        served.append(name)
        if await self.answered(scheduler, access, name, payload, send, timing):
            return
        routed = await self.route(scheduler, name, label, payload, body)
        await run(scheduler, routed, receive, send, timing, self.shape, opened)

    def parse(self, body: bytes, settings: Settings, access: Access) -> dict[str, Any]:
        return parse_request(body, settings, access)

    async def label(self, scheduler: Scheduler, payload: dict[str, Any]) -> str:
        """The model the client named, as the gateway knows it."""
        return payload["model"]

    async def answered(
        self,
        scheduler: Scheduler,
        access: Access,
        name: str,
        payload: dict[str, Any],
        send: Send,
        timing: Timing,
    ) -> bool:
        """Requests a route answers itself, relaying nothing (Ollama's load and unload)."""
        return False

    async def route(
        self, scheduler: Scheduler, name: str, label: str, payload: dict[str, Any], body: bytes
    ) -> Routed:
        raise NotImplementedError


async def resolve(
    scheduler: Scheduler, access: Access, label: str, payload: dict[str, Any]
) -> tuple[str, bool]:
    """The model `label` names (a name, an alias, a pattern, or with allow_adhoc a model of
    models_dir), the key checked for it; the gateway's own fields are taken out of `payload`
    (True: there were some)."""
    settings = scheduler.settings
    name = settings.resolve(label)
    options = payload.pop("vramgate", None)  # the gateway's, never the engine's
    # Seed 003's engine settings beside `model`: the gateway's too.
    seed = {k: payload.pop(k) for k in SEED_FIELDS if k in payload}
    if settings.allow_adhoc and (name is None or name in scheduler.adhoc_names):
        access.require_adhoc()  # before anything is looked up or defined
        name = await reconfigure.adhoc(scheduler, access, label, options, seed)
    elif name is None:
        name = resolve_or_404(settings, label, access)
    access.require_model(name)
    return name, options is not None or bool(seed)


async def run(
    scheduler: Scheduler,
    routed: Routed,
    receive: Receive,
    send: Send,
    timing: Timing,
    shape: Shape,
    opened: Opened,
) -> None:
    """A slot on the model's engine (started if need be), then the relay; a streamed request
    that waits long for its engine keeps its client's connection alive meanwhile."""
    waiting = time.perf_counter()
    interval = scheduler.settings.stream_keepalive_s if routed.is_stream else 0
    async with hangup_cancels(receive):
        for attempt in range(RELAY_ATTEMPTS):
            hold = scheduler.lease(routed.name)
            keeper = KeepAlive(send, shape, routed.keepalive, interval, opened)
            try:
                async with hold as lease:
                    await keeper.stop()
                    timing.waited = time.perf_counter() - waiting
                    # The first answers after a KV restore say whether the engine used it.
                    inst = lease.instance
                    peek = scheduler.life.kv_peek(inst) if inst.kv_restored else None
                    try:
                        broke = await relay(
                            scheduler.upstream, routed.name, lease.url, routed.path, routed.body,
                            routed.is_stream, send, timing, routed.mend, shape, opened,
                            lease.head + routed.head, peek,
                        )  # fmt: skip
                        if broke:
                            scheduler.release_after_exit(hold, BROKEN_EXIT_S)
                        return
                    except EngineGone:
                        if attempt + 1 == RELAY_ATTEMPTS:
                            raise
                        await confirm_exit(lease)
                    except EngineReset:
                        # Sent again only where the reset was what a kill of the engine sends
                        # for bytes it never read: it was killed outright, by nothing of ours,
                        # within the bound (an OOM kill with it unread; an agent killed with it
                        # queued at the guard). An engine that lives on, exits of itself (a
                        # poison request it read) or that the gateway stopped may have read it.
                        exited = await confirm_exit(lease)
                        if not exited or not killed_unasked(lease.handle):
                            raise
                        if attempt + 1 == RELAY_ATTEMPTS:
                            raise
            finally:
                await keeper.stop()


class KeepAlive:
    """While a streamed request waits for its engine: after `interval_s`, its answer begins (200,
    a stream) and a keep-alive goes out every `interval_s`, so that no client or proxy read
    timeout cuts a long cold start (vLLM takes a minute). Costs a timer when the wait is short."""

    def __init__(
        self, send: Send, shape: Shape, ping: bytes | None, interval_s: float, opened: Opened
    ) -> None:
        self.send, self.shape, self.opened = send, shape, opened
        self.ping = ping if ping is not None else shape.keepalive
        self.interval_s = interval_s
        self.done = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        loop = asyncio.get_running_loop()
        self.timer = loop.call_later(interval_s, self._begin) if interval_s > 0 else None

    def _begin(self) -> None:
        self.task = asyncio.get_running_loop().create_task(self._pings())

    async def _pings(self) -> None:
        if not self.opened.started:
            headers = [(b"content-type", self.shape.stream_type), *_STREAM_HEADERS]
            await self.send({"type": "http.response.start", "status": 200, "headers": headers})
            self.opened.started = True
        while not self.done.is_set():
            await self.send({"type": "http.response.body", "body": self.ping, "more_body": True})
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.done.wait(), self.interval_s)

    async def stop(self) -> None:
        """No more pings; one being sent is sent whole first."""
        if self.timer is not None:
            self.timer.cancel()
        if self.task is not None:
            self.done.set()
            with contextlib.suppress(Exception):
                await asyncio.shield(self.task)
