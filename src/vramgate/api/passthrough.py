"""Any method and path of a model's engine, relayed as it is: `/upstream/MODEL/PATH` (the engine's
web UI, its /metrics, its admin routes), and the engine routes that are not a JSON POST (GET
/props, /slots, a multipart upload). The engine is started as for any request; the request body
streams up as it arrives, within max_body_mb as every route's, and the answer streams down,
headers and all but those of the hop.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections.abc import AsyncIterator
from urllib.parse import unquote

import aiohttp
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Scope, Send

from vramgate.api import guards
from vramgate.api.common import refuse_cross_site, resolve_or_404
from vramgate.api.relaying import CLIENT_CLOSED, default_model
from vramgate.auth import Access, presented_key
from vramgate.errors import EngineUnavailable, GatewayError, ModelNotFound, PayloadTooLarge
from vramgate.proxy import hangup_cancels, send_error
from vramgate.scheduling.driver import Scheduler

log = logging.getLogger("vramgate.api")
PREFIX = "/upstream/"
SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})  # no other site's page changes anything
# Headers of one hop, not of the message (RFC 9110 7.6.1), and the client's key for the gateway,
# which the engine never sees (it gets its own: engine_key).
HOP_HEADERS = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"host", b"authorization", b"x-api-key",
        b"proxy-authorization",
    }
)  # fmt: skip
# The gateway answers CORS itself (api/cors.py): the engine's own would contradict it.
ANSWER_DROPPED = frozenset(
    {b"connection", b"keep-alive", b"transfer-encoding", b"trailer", b"upgrade"}
)


def split_upstream(raw_path: bytes) -> tuple[str, str]:
    """`/upstream/MODEL/REST` as the client spelled it (ASGI raw_path) as (MODEL, /REST): MODEL
    decoded once, so a name holding '/' is spelled `%2F`; REST as it came, for the engine.
    Not the decoded `path`: its `org%2Fm` is `org/m` already, two segments."""
    text = raw_path.decode("latin-1")  # the request line's own bytes (uvicorn's are ASCII)
    if not text.startswith(PREFIX):  # `/%75pstream/...`: no client spells the prefix so
        raise ModelNotFound(f"no route {unquote(text)[:200]!r}: spell {PREFIX} as it is")
    model, slash, tail = text[len(PREFIX) :].partition("/")
    return unquote(model), "/" + tail if slash else "/"


async def serve_upstream(scope: Scope, receive: Receive, send: Send) -> None:
    """`/upstream/MODEL/PATH`: admin keys, or (upstream_access: keys) the model's keys."""
    scheduler: Scheduler = scope["app"].state.scheduler
    settings = scheduler.settings
    access = Access(settings, presented_key(scope["headers"]))
    try:
        label, path = split_upstream(scope["raw_path"])
        if scope["method"] not in SAFE_METHODS:
            refuse_cross_site(scope["headers"], settings.cors_origins)
        name = resolve_or_404(settings, label, access)
        if settings.upstream_access == "admin":
            access.require_admin()
        else:
            access.require_model(name)
    except GatewayError as exc:
        await send_error(send, exc)
        return
    await pass_through(scheduler, scope, receive, send, name, path, access, "/upstream")


async def serve_native(scope: Scope, receive: Receive, send: Send, served: frozenset[str]) -> None:
    """An engine route that is not a JSON POST, for the model of the `model` query parameter or
    the default model; `served`: the engine kinds that declare this route and method."""
    scheduler: Scheduler = scope["app"].state.scheduler
    settings = scheduler.settings
    access = Access(settings, presented_key(scope["headers"]))
    try:
        access.require_known()
        if scope["method"] not in SAFE_METHODS:
            refuse_cross_site(scope["headers"], settings.cors_origins)
        label = query_model(scope.get("query_string", b"")) or default_model(settings, access)
        name = resolve_or_404(settings, label, access)
        access.require_model(name)
        engine = settings.models[name].engine
        if engine not in served:
            raise ModelNotFound(
                f"model '{name}' ({engine}) does not serve {scope['method']} {scope['path']}"
            )
    except GatewayError as exc:
        await send_error(send, exc)
        return
    path = scope["path"]
    await pass_through(scheduler, scope, receive, send, name, path, access, path)


def query_model(query_string: bytes) -> str | None:
    """The `model` query parameter, if the request has one."""
    for pair in query_string.decode("latin-1").split("&"):
        key, _, value = pair.partition("=")
        if key == "model" and value:
            return unquote(value.replace("+", " "))
    return None


async def pass_through(
    scheduler: Scheduler,
    scope: Scope,
    receive: Receive,
    send: Send,
    name: str,
    path: str,
    access: Access,
    route: str,
) -> None:
    """`scope`'s request to `path` on `name`'s engine, and its answer back, both streamed;
    `route`: the metrics' label."""
    arrived = time.perf_counter()
    status = CLIENT_CLOSED
    started = False
    body = _Body(scope, receive, guards.max_body_bytes(scheduler.settings))
    try:
        async with scheduler.lease(name) as lease:
            assert scheduler.http is not None
            query = scope.get("query_string", b"")
            url = lease.url + path + ("?" + query.decode("latin-1") if query else "")
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                       if k not in HOP_HEADERS]  # fmt: skip
            headers += list(lease.handle.headers.items())
            async with scheduler.http.request(
                scope["method"], url, headers=headers, allow_redirects=False,
                data=None if body.done else body.stream(),
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            ) as answer:  # fmt: skip
                status = answer.status
                out = [(k.lower(), v) for k, v in answer.raw_headers
                       if k.lower() not in ANSWER_DROPPED]  # fmt: skip
                await send({"type": "http.response.start", "status": status, "headers": out})
                started = True
                # Once the client's body is all read, a hang-up can be seen: it cancels.
                watch = hangup_cancels(receive) if body.done else contextlib.nullcontext()
                async with watch:
                    async for chunk in answer.content.iter_any():
                        await send({"type": "http.response.body", "body": chunk,
                                    "more_body": True})  # fmt: skip
                await send({"type": "http.response.body", "body": b"", "more_body": False})
    except ClientDisconnect:
        status = CLIENT_CLOSED
    except GatewayError as exc:
        status = exc.status
        if not started:
            await send_error(send, exc, detail=access.open or access.admin)
    except (aiohttp.ClientError, TimeoutError) as exc:
        # A body that passed the limit mid-way ended the upstream request (aiohttp's writer
        # failed on it): the client is told so, not that the engine failed.
        error = body.too_large or EngineUnavailable(
            f"model '{name}': the engine failed ({exc or type(exc).__name__})"
        )
        status = error.status
        if not started:
            await send_error(send, error)
        elif body.too_large is not None:  # the answer had begun: left unended, uvicorn cuts it
            log.warning("model %s: %s %s cut: %s", name, scope["method"], path, body.too_large)
    duration_s = time.perf_counter() - arrived
    scope["app"].state.metrics.request(name, route, status, duration_s, None, None)


class _Body:
    """The client's request body as it arrives, for aiohttp to send on, within `max_bytes`."""

    def __init__(self, scope: Scope, receive: Receive, max_bytes: int) -> None:
        self.receive = receive
        self.max_bytes = max_bytes
        self.too_large: PayloadTooLarge | None = None  # set: the body passed the limit
        sized = any(k in (b"content-length", b"transfer-encoding") for k, _ in scope["headers"])
        self.done = not sized or dict(scope["headers"]).get(b"content-length") == b"0"

    async def stream(self) -> AsyncIterator[bytes]:
        size = 0
        while not self.done:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                raise ClientDisconnect()
            self.done = not message.get("more_body", False)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:  # chunked (or a short Content-Length): ends the request
                self.too_large = guards.too_large(size, self.max_bytes)
                raise self.too_large
            if chunk:
                yield chunk
