"""create_app(): the FastAPI application, its routes, error handlers and lifespan."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import signal
import socket
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response
from starlette.staticfiles import StaticFiles
from starlette.types import Receive, Scope, Send

from vramgate import __version__, reconfigure
from vramgate.api import (
    admin,
    anthropic,
    downloads,
    guards,
    manage,
    native,
    ollama,
    ollama_models,
    openai,
    page,
    passthrough,
)
from vramgate.api.cors import Cors
from vramgate.api.shapes import OPENAI, Shape, shape_of
from vramgate.config import ConfigError, Settings
from vramgate.downloads import Downloads
from vramgate.errors import BadRequest, GatewayError, ModelNotFound, error_body
from vramgate.events import Events
from vramgate.gpu.base import GpuBackend
from vramgate.gpu.cluster import ClusterGpus
from vramgate.gpu.footprints import FootprintStore
from vramgate.history import MemoryHistory
from vramgate.memory import Memory, footprint_store, gpu_backend
from vramgate.metrics import Metrics
from vramgate.proxy import send_error
from vramgate.runtimes.base import Runtime
from vramgate.runtimes.ray_cluster import Cluster
from vramgate.runtimes.router import Runtimes
from vramgate.scheduling.driver import Scheduler
from vramgate.statedir import StateDirBusy, StateDirLock, StateDirUnusable
from vramgate.status import gateway_status

log = logging.getLogger("vramgate")


# Every relaying route, whichever client API it belongs to: POSTs to them skip FastAPI.
RELAYS = {**openai.RELAYS, **anthropic.ROUTES, **ollama.ROUTES}
OLLAMA_HELLO = b"Ollama is running"  # what Ollama answers at / (clients check for it)


class GatewayApp:
    """The ASGI app served: relay POSTs go straight to their endpoint, the rest to FastAPI."""

    def __init__(self, api: FastAPI, settings: Settings) -> None:
        self.api = api
        self.settings = settings
        self.ollama_port = settings.ollama_port
        # The machine's own name is allowed as a Host: it is how its LAN reaches a gateway
        # on 0.0.0.0, and a rebinding page cannot take it.
        self.machine = {guards.host_name(socket.gethostname())}
        self.cors = Cors(self._route, self._cors_origins)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.cors(scope, receive, send)

    def _cors_origins(self) -> list[str]:
        return self.current_settings().cors_origins

    async def _route(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                # Every request's Host first: a rebound name passes the cross-site rule.
                settings = self.current_settings()
                guards.check_host(scope["headers"], settings, self.machine)
                # A Content-Length over max_body_mb: 413 on any route, before anything starts;
                # a chunked body is counted where it is read (guards.read_body, passthrough).
                guards.check_length(scope["headers"], guards.max_body_bytes(settings))
                guards.check_path(scope["path"])
                if scope["method"] == "POST" and (endpoint := RELAYS.get(scope["path"])):
                    scope["app"] = self.api
                    await endpoint(scope, receive, send)  # it reads its body after the key
                    return
                if scope["path"].startswith(passthrough.PREFIX):  # streamed both ways
                    scope["app"] = self.api
                    await passthrough.serve_upstream(scope, receive, send)
                    return
                if native.claims(scope):  # an engine's own routes: they read their bodies
                    scope["app"] = self.api
                    await native.serve(scope, receive, send)
                    return
                receive = await self._body_guarded(scope, receive)
            except GatewayError as exc:
                await send_error(send, exc, shape=shape_of(scope["path"]))
                return
            except ClientDisconnect:
                return
        if scope["type"] == "http" and scope["path"] == "/" and self._on_ollama_port(scope):
            headers = [(b"content-type", b"text/plain; charset=utf-8"),
                       (b"content-length", str(len(OLLAMA_HELLO)).encode())]  # fmt: skip
            await send({"type": "http.response.start", "status": 200, "headers": headers})
            body = b"" if scope["method"] == "HEAD" else OLLAMA_HELLO
            await send({"type": "http.response.body", "body": body})
            return
        await self.api(scope, receive, send)

    def current_settings(self) -> Settings:
        scheduler = getattr(self.api.state, "scheduler", None)  # the settings of the last reload
        return scheduler.settings if scheduler is not None else self.settings

    async def _body_guarded(self, scope: Scope, receive: Receive) -> Receive:
        """The routes FastAPI serves get their body read here, once, within max_body_mb and
        (JSON) MAX_DEPTH: one limit for every route, whatever it does with the body."""
        if not any(k in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"]):
            return receive  # no body (a GET): nothing to read
        body = await guards.read_body(
            scope, receive, guards.max_body_bytes(self.current_settings())
        )
        guards.check_depth(body)
        return guards.replayed(body, receive)

    def _on_ollama_port(self, scope: Scope) -> bool:
        server = scope.get("server")
        return self.ollama_port is not None and bool(server) and server[1] == self.ollama_port


@dataclass
class Collaborators:
    """What the gateway is made of; tests and embedders may pass their own."""

    runtime: Runtime
    gpus: GpuBackend
    footprints: FootprintStore
    events: Events = field(default_factory=Events)
    metrics: Metrics = field(default_factory=Metrics)

    @classmethod
    def for_settings(cls, settings: Settings, cluster: Cluster | None = None) -> Collaborators:
        """The parts `settings` name; `cluster` stands in for the Ray cluster (tests)."""
        runtimes = Runtimes(settings, cluster)
        if runtimes.ray is not None:  # a cluster's GPUs are its nodes'
            gpus: GpuBackend = ClusterGpus(runtimes.ray.cluster, settings.gpus.reserve_mib)
        else:
            gpus = gpu_backend(settings)
        return cls(runtimes, gpus, footprint_store(settings))


def create_app(
    settings: Settings,
    reload_settings: Callable[[], Settings] | None = None,
    parts: Collaborators | None = None,
) -> GatewayApp:
    """The gateway for `settings`; `reload_settings` reads the configuration again (SIGHUP,
    POST /admin/reload) and raises ConfigError for a bad one; `parts` defaults to a local
    runtime and the GPU backend and footprint store the settings name."""
    made = parts or Collaborators.for_settings(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        lock = StateDirLock(Path(settings.state_dir))
        try:
            lock.claim()  # before anything in state_dir is read or a leftover is removed
        except StateDirBusy as exc:
            log.error("%s", exc)
            raise
        except StateDirUnusable as exc:
            log.warning("%s: engines start, nothing is kept", exc)
        memory = Memory(settings, made.gpus, made.footprints)
        scheduler = Scheduler(settings, made.runtime, memory, made.events)
        made.events.hooks.append(made.metrics.event)
        history = app.state.history = MemoryHistory(scheduler)
        made.events.hooks.append(history.event)
        made.metrics.attach(lambda: gateway_status(scheduler))
        await scheduler.start()
        app.state.scheduler = scheduler
        app.state.metrics = made.metrics
        loop = asyncio.get_running_loop()
        app.state.downloads = Downloads(
            Path(settings.models_dir),
            on_change=lambda job: loop.call_soon_threadsafe(_download_changed, made.events, job),
        )
        app.state.started_at = time.time()
        app.state.reload_settings = reload_settings or (lambda: scheduler.settings)
        app.state.background = set()
        sampler = asyncio.create_task(_sample(history))
        loop.add_signal_handler(signal.SIGHUP, lambda: _reload_in_background(app))
        app.state.stopping = asyncio.Event()
        _tell_on_exit_signals(loop, app.state.stopping)
        names = ", ".join(settings.models) or "none"
        log.info("vramgate %s serving models: %s", __version__, names)
        log.info("%s", _auth_summary(settings))
        # Everything made so far (FastAPI, pydantic, the config) lives as long as the gateway:
        # out of the collector's way, so that its full collections, which the garbage of busy
        # request traffic triggers, stop walking it (about 5% more requests per second).
        gc.collect()
        gc.freeze()
        try:
            yield
        finally:
            sampler.cancel()
            loop.remove_signal_handler(signal.SIGHUP)
            app.state.downloads.close()
            # Shutdown (after uvicorn's drain of in-flight requests): stop every engine
            # (SIGTERM, then SIGKILL after stop_timeout).
            await scheduler.close()
            lock.release()

    app = FastAPI(title="vramgate", version=__version__, lifespan=lifespan)
    app.include_router(openai.router)
    app.include_router(ollama_models.router)
    app.include_router(manage.router)
    app.include_router(downloads.router)
    app.include_router(admin.router)
    app.include_router(page.router)
    app.mount("/static", StaticFiles(directory=page.STATIC), name="static")
    app.add_exception_handler(GatewayError, _gateway_error)  # type: ignore[arg-type]
    app.add_exception_handler(HTTPException, _http_error)  # type: ignore[arg-type]
    app.add_exception_handler(RequestValidationError, _validation_error)  # type: ignore[arg-type]
    app.add_exception_handler(Exception, _unexpected_error)
    return GatewayApp(app, settings)


async def _sample(history: MemoryHistory) -> None:
    """The memory history's periodic sample (starts, stops and sleeps sample at once)."""
    while True:
        await asyncio.sleep(1.0)
        try:
            history.tick()
        except Exception:  # a reading that fails now is taken again at the next
            log.exception("sampling memory failed")


def _download_changed(events: Events, job: Any) -> None:
    """A download job moved (queued, running, a file done, finished): tell listeners."""
    info = job.public()
    message = f"download {job.repo}: {job.state}, {info['bytes_done']}/{info['bytes_total']} bytes"
    if job.error:
        message += f": {job.error}"
    events.record("download", job.repo, message, job=job.id, state=job.state)


def _auth_summary(settings: Settings) -> str:
    if not settings.auth_enabled:
        return "auth: no API keys configured: every route is open to anyone who can connect"
    auth = settings.auth
    own = sum(bool(m.api_keys) for m in settings.models.values())
    return (
        f"auth: {len(auth.api_keys)} API key(s), {len(auth.admin_keys)} admin key(s), "
        f"{own} model(s) with their own keys; /metrics {auth.metrics}, status page "
        f"{auth.status_page}"
    )


def _tell_on_exit_signals(loop: asyncio.AbstractEventLoop, stopping: asyncio.Event) -> None:
    """Sets `stopping` on SIGTERM and SIGINT, then lets uvicorn's own handler run.

    uvicorn drains open responses before the lifespan ends; live streams (events, logs) must
    learn of it to end themselves, or they hold the shutdown for all of drain_timeout.
    """
    for signum in (signal.SIGTERM, signal.SIGINT):
        previous = signal.getsignal(signum)

        def handler(sig: int, frame: Any, previous: Any = previous) -> None:
            loop.call_soon_threadsafe(stopping.set)
            if callable(previous):
                previous(sig, frame)

        signal.signal(signum, handler)


def _reload_in_background(app: FastAPI) -> None:
    async def reload() -> None:
        try:
            await reconfigure.reload(app.state.scheduler, app.state.reload_settings)
        except ConfigError as exc:
            log.error("SIGHUP: configuration not reloaded, the running one stays: %s", exc)

    task = asyncio.create_task(reload())
    app.state.background.add(task)  # held until done: the loop keeps only weak references
    task.add_done_callback(app.state.background.discard)


def _json(body: object, status: int, headers: dict[str, str] | None = None) -> Response:
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


def _shape(request: Request) -> Shape:
    return shape_of(request.url.path)


async def _gateway_error(request: Request, exc: GatewayError) -> Response:
    # FastAPI routes that start engines (load) take admin keys only: they may see its output.
    status, body = _shape(request).error(exc, detail=True)
    return Response(body, status, exc.headers, media_type="application/json")


async def _http_error(request: Request, exc: HTTPException) -> Response:
    message = f"{request.method} {request.url.path}: {exc.detail}"
    shape = _shape(request)
    if shape is OPENAI:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return _json(error_body(message, "invalid_request_error", code), exc.status_code)
    error = ModelNotFound(message) if exc.status_code == 404 else BadRequest(message)
    _, body = shape.error(error)
    return Response(body, exc.status_code, media_type="application/json")


async def _validation_error(request: Request, exc: RequestValidationError) -> Response:
    """400 naming each wrong field by its path (`model: Field required`), never the value sent:
    str(exc.errors()) was a Python repr echoing the input back."""
    problems = []
    for err in exc.errors():
        where = [str(p) for p in err.get("loc", ())]
        where = where[1:] if where[:1] == ["body"] else where  # every route's fields are its body's
        problems.append(f"{'.'.join(where) or '(body)'}: {err.get('msg', 'invalid')}")
    return await _gateway_error(request, BadRequest("; ".join(problems) or "invalid request"))


async def _unexpected_error(request: Request, exc: Exception) -> Response:
    """A bug's 500: its text and traceback go to the log, never to the client."""
    error = guards.internal_error(f"{request.method} {request.url.path}", exc)
    status, body = _shape(request).error(error)
    return Response(body, status, media_type="application/json")
