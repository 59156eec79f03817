"""Any method and path of a model's engine, relayed as it is: `/upstream/MODEL/PATH` (the engine's
web UI, its /metrics, its admin routes), and the engine routes that are not a JSON POST (GET
/props, /slots, a multipart upload). The engine is started as for any request; the request body
streams up as it arrives, within max_body_mb as every route's, and the answer streams down,
headers and all but those of the hop.
"""

from __future__ import annotations

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
from vramgate.engines import REGISTRY
from vramgate.errors import EngineUnavailable, GatewayError, ModelNotFound, PayloadTooLarge
from vramgate.proxy import hangup_cancels, send_error
from vramgate.scheduling.driver import Scheduler

log = logging.getLogger("vramgate.api")
PREFIX = "/upstream/"
# Headers of one hop, not of the message (RFC 9110 7.6.1), and the client's key for the gateway,
# which the engine never sees (it gets its own: engine_key).
HOP_HEADERS = frozenset(
    {
        b"connection", b"keep-alive", b"proxy-connection", b"te", b"trailer",
        b"transfer-encoding", b"upgrade", b"host", b"authorization", b"x-api-key",
        b"proxy-authorization",
    }
)  # fmt: skip
# Headers of the engine's answer's hop (its CORS headers go too: _dropped).
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
        refuse_cross_site(scope["headers"], settings.cors_origins)  # see serve_native
        name = resolve_or_404(settings, label, access)
        if settings.upstream_access == "admin":
            access.require_admin()
        else:
            access.require_model(name)
    except GatewayError as exc:
        await send_error(send, exc)
        return
    await pass_through(scheduler, scope, receive, send, name, path, access, "/upstream")


async def serve_native(
    scope: Scope, receive: Receive, send: Send, served: frozenset[str], pattern: str
) -> None:
    """An engine route that is not a JSON POST, for the model of the `model` query parameter (or
    a multipart form's `model` field) or the default model; `served`: the engine kinds that
    declare this route and method; `pattern`: the route as they declare it."""
    scheduler: Scheduler = scope["app"].state.scheduler
    settings = scheduler.settings
    access = Access(settings, presented_key(scope["headers"]))
    read: bytes | None = None  # a multipart body, read for its `model` field
    try:
        access.require_known()
        # GETs too: these start engines (and make room for them), and llama-server's answer
        # them for any page; a cross-site <img> or fetch must not do either.
        refuse_cross_site(scope["headers"], settings.cors_origins)
        label = query_model(scope.get("query_string", b""))
        if label is None and (boundary := multipart_boundary(scope["headers"])) is not None:
            read = await guards.read_body(scope, receive, guards.max_body_bytes(settings))
            label = form_field(read, boundary, "model")
        name = resolve_or_404(settings, label or default_model(settings, access), access)
        access.require_model(name)
        engine = settings.models[name].engine
        if engine not in served:
            raise ModelNotFound(
                f"model '{name}' ({engine}) does not serve {scope['method']} {scope['path']}"
            )
        require_route_access(access, engine, scope["method"], pattern)
    except ClientDisconnect:  # while its multipart body was read
        scope["app"].state.metrics.request("", pattern, CLIENT_CLOSED, 0.0, None, None)
        return
    except GatewayError as exc:
        await send_error(send, exc)
        return
    path = scope["path"]
    await pass_through(scheduler, scope, receive, send, name, path, access, pattern, read)


def multipart_boundary(headers: list[tuple[bytes, bytes]]) -> bytes | None:
    """A multipart/form-data body's boundary, or None for any other body."""
    for key, value in headers:
        if key == b"content-type":
            kind, _, params = value.partition(b";")
            if kind.strip().lower() != b"multipart/form-data":
                return None
            for param in params.split(b";"):
                name, _, found = param.strip().partition(b"=")
                if name.lower() == b"boundary" and found.strip(b'"'):
                    return found.strip(b'"')
    return None


def form_field(body: bytes, boundary: bytes, field: str) -> str | None:
    """A multipart form's text field (RFC 7578), or None where it has none: OpenAI's uploads
    (audio transcriptions) name their model so."""
    wanted = f'name="{field}"'.encode()
    for part in body.split(b"--" + boundary)[1:]:
        head, sep, value = part.partition(b"\r\n\r\n")
        if not sep:
            continue
        disposition = [line for line in head.split(b"\r\n")
                       if line.lower().startswith(b"content-disposition:")]  # fmt: skip
        if disposition and wanted in disposition[0] and b"filename=" not in disposition[0]:
            return value.removesuffix(b"\r\n").decode("utf-8", "replace") or None
    return None


def require_route_access(access: Access, engine: str, method: str, pattern: str) -> None:
    """The routes an engine keeps for its operator (llama-server's slot files, its settings
    and adapters for every user, other users' slots, its server-side fetches and tools) take
    an admin key, as /upstream does: a model's key opens its answers, not its engine."""
    adapter = REGISTRY.get(engine)
    if adapter is not None and f"{method} {pattern}" in adapter.native_admin:
        access.require_admin()


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
    read: bytes | None = None,
) -> None:
    """`scope`'s request to `path` on `name`'s engine, and its answer back, both streamed;
    `route`: the metrics' label; `read`: the body, where it was read already."""
    arrived = time.perf_counter()
    status = CLIENT_CLOSED
    started = False
    body = _Body(scope, receive, guards.max_body_bytes(scheduler.settings), read)
    # A hang-up is seen from the start where there is no body to read (waiting for the
    # engine's start, a slot or its answer's head), else from the moment it is all read (the
    # upload itself sees one before): it cancels the engine's request.
    try:
        watch = hangup_cancels(receive, None if body.done else lambda: body.done)
        async with watch, scheduler.lease(name) as lease:
            assert scheduler.http is not None
            query = scope.get("query_string", b"")
            url = lease.url + path + ("?" + query.decode("latin-1") if query else "")
            headers = [(k.decode("latin-1"), v.decode("latin-1")) for k, v in scope["headers"]
                       if k not in HOP_HEADERS]  # fmt: skip
            headers += list(lease.handle.headers.items())
            async with scheduler.http.request(
                scope["method"], url, headers=headers, allow_redirects=False,
                data=body.content if body.done else body.stream(),
                skip_auto_headers=("User-Agent", "Accept-Encoding", "Content-Type"),
            ) as answer:  # fmt: skip
                status = answer.status
                out = [(k.lower(), v) for k, v in answer.raw_headers
                       if not _dropped(k.lower())]  # fmt: skip
                await send({"type": "http.response.start", "status": status, "headers": out})
                started = True
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
        if body.left:  # the client hung up mid-upload: aiohttp's writer failed on it
            status = CLIENT_CLOSED
        else:
            # A body that passed the limit mid-way ended the upstream request (aiohttp's
            # writer failed on it): the client is told so, not that the engine failed.
            error = body.too_large or EngineUnavailable(
                f"model '{name}': the engine failed ({exc or type(exc).__name__})"
            )
            status = error.status
            if not started:
                await send_error(send, error)
            elif body.too_large is not None:  # the answer had begun: left unended, uvicorn cuts it
                log.warning("model %s: %s %s cut: %s", name, scope["method"], path,
                            body.too_large)  # fmt: skip
    duration_s = time.perf_counter() - arrived
    scope["app"].state.metrics.request(name, route, status, duration_s, None, None)


def _dropped(header: bytes) -> bool:
    """An answer header the client does not get: the hop's, and the engine's CORS headers
    (llama-server allows any origin; the gateway answers CORS itself, api/cors.py, for the
    origins of cors_origins only)."""
    return header in ANSWER_DROPPED or header.startswith(b"access-control-")


def _no_body(headers: list[tuple[bytes, bytes]]) -> bool:
    """Whether the request says it has no body (no length, or a length of 0, however spelled);
    a chunked one may still be empty: known once read."""
    for key, value in headers:
        if key == b"transfer-encoding":
            return False
        if key == b"content-length":
            return value.strip().isdigit() and int(value) == 0
    return True


class _Body:
    """The client's request body as it arrives, for aiohttp to send on, within `max_bytes`;
    `read`: all of it, read already."""

    def __init__(self, scope: Scope, receive: Receive, max_bytes: int, read: bytes | None) -> None:
        self.receive = receive
        self.max_bytes = max_bytes
        self.too_large: PayloadTooLarge | None = None  # set: the body passed the limit
        self.left = False  # the client hung up before its body was all read
        self.content = read
        self.done = read is not None or _no_body(scope["headers"])

    async def stream(self) -> AsyncIterator[bytes]:
        size = 0
        while not self.done:
            message = await self.receive()
            if message["type"] == "http.disconnect":
                self.left = True
                raise ClientDisconnect()
            self.done = not message.get("more_body", False)
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.max_bytes:  # chunked (or a short Content-Length): ends the request
                self.too_large = guards.too_large(size, self.max_bytes)
                raise self.too_large
            if chunk:
                yield chunk
