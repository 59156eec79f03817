"""Relaying one request to an engine and its answer back, chunk by chunk for streams.

While a request waits or relays, one small task listens for the client going away and cancels
it, so a client that disconnects leaves its queue place and aborts the upstream request at once
(leaving `async with` closes the engine connection, and engines stop generating for a closed
connection).
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Send

from vramgate.errors import EngineGone, EngineUnavailable, GatewayError, sse_error_event
from vramgate.rewrite import AnswerFix

_JSON_HEADERS = {"Content-Type": "application/json"}
_PASSED_HEADERS = (b"content-type",)
_STREAM_HEADERS = ((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))


@dataclass
class Timing:
    """When one request passed each point (time.perf_counter()), for metrics and the header.

    The gateway's own time is everything but waiting for an engine (start or slot) and the
    engine's own work: (posted - arrived - waited) + (answer sent - answer received).
    """

    arrived: float
    waited: float = 0.0
    posted: float = 0.0
    answered: float = 0.0
    overhead: float | None = None
    first_chunk: float | None = None
    status: int = 0

    def header(self, now: float) -> tuple[bytes, bytes]:
        self.overhead = (self.posted - self.arrived - self.waited) + (now - self.answered)
        return (b"x-vramgate-overhead-ms", f"{self.overhead * 1000:.3f}".encode())


def new_upstream_session(read_timeout_s: float) -> aiohttp.ClientSession:
    """Generation may take long: no total timeout; but an engine that sends nothing for
    `read_timeout_s` (hung) fails the request, rather than holding its client forever."""
    # No connection limit: concurrency is bounded by the scheduler, not by the pool.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=10, sock_read=read_timeout_s)
    return aiohttp.ClientSession(connector=connector, timeout=timeout, auto_decompress=False)


class hangup_cancels:
    """While inside, a client that hangs up cancels what the request is doing (waiting for a
    start or a slot, or relaying), which then ends with ClientDisconnect.

    One watcher task, not a task per side plus asyncio.wait, and a plain class rather than a
    generator: this is the hot path (bench/overhead.py measures it).
    """

    def __init__(self, receive: Receive) -> None:
        self.receive = receive
        self.left = False
        self.task: asyncio.Task[Any] | None = None
        self.watcher: asyncio.Task[None] | None = None

    async def __aenter__(self) -> None:
        self.task = asyncio.current_task()
        self.watcher = asyncio.get_running_loop().create_task(self._watch())

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.left = True
        assert self.task is not None
        self.task.cancel()

    async def __aexit__(self, kind: type[BaseException] | None, exc: object, tb: object) -> bool:
        assert self.watcher is not None and self.task is not None
        self.watcher.cancel()
        if kind is asyncio.CancelledError and self.left:
            self.task.uncancel()
            raise ClientDisconnect() from None
        return False  # cancelled from elsewhere (shutdown), or not at all: as it was


async def relay(
    http: aiohttp.ClientSession,
    model: str,
    url: str,
    body: bytes,
    is_stream: bool,
    send: Send,
    timing: Timing,
    fix: AnswerFix | None = None,
) -> None:
    """`fix`: the engine's answers need mending (rewrite.py); None for engines that speak
    OpenAI's API as it is, the hot path."""
    try:
        timing.posted = time.perf_counter()
        async with await _post(http, url, body) as resp:
            timing.answered = time.perf_counter()
            timing.status = resp.status
            if is_stream and resp.status == 200:
                await _relay_stream(model, resp, send, timing, fix)
                return
            content = await resp.read()
            timing.answered = time.perf_counter()
    except aiohttp.ClientConnectorError as exc:
        # Nothing reached the engine: the caller may try again once the scheduler knows it is
        # gone (it died just as this request was handed its slot).
        raise EngineGone(f"model '{model}': the engine refused the connection ({exc})") from exc
    except (TimeoutError, aiohttp.ClientError) as exc:
        error = _broken(model, exc)
        timing.status = error.status
        await send_error(send, error)
        return
    headers = _pass_headers(resp)
    if fix is not None:
        content_type, content = fix.whole(resp.status, resp.content_type.encode(), content)
        headers = [(b"content-type", content_type)]
    headers += [(b"content-length", str(len(content)).encode())]
    headers.append(timing.header(time.perf_counter()))
    await send({"type": "http.response.start", "status": resp.status, "headers": headers})
    await send({"type": "http.response.body", "body": content})


async def _post(http: aiohttp.ClientSession, url: str, body: bytes) -> aiohttp.ClientResponse:
    try:
        return await http.post(url, data=body, headers=_JSON_HEADERS)
    except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError) as exc:
        if isinstance(exc, aiohttp.ClientConnectorError):
            raise  # refused: the engine is gone, not just the connection
        # Before any answer: a kept-alive connection the engine had closed (uvicorn, under
        # `transformers serve`, closes it after an error it did not handle). Once more, on a
        # new connection; an engine that really died refuses that one.
        return await http.post(url, data=body, headers=_JSON_HEADERS)


async def _relay_stream(
    model: str, resp: aiohttp.ClientResponse, send: Send, timing: Timing, fix: AnswerFix | None
) -> None:
    headers = [*_pass_headers(resp), *_STREAM_HEADERS, timing.header(time.perf_counter())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    try:
        async for chunk in resp.content.iter_any():
            if timing.first_chunk is None:
                timing.first_chunk = time.perf_counter()
            if fix is not None and not (chunk := fix.chunk(chunk)):
                continue
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if fix is not None and (rest := fix.end()):
            await send({"type": "http.response.body", "body": rest, "more_body": True})
    except (TimeoutError, aiohttp.ClientError) as exc:
        # Headers are gone already: tell the client in the stream itself, then end it.
        event = sse_error_event(_broken(model, exc))
        await send({"type": "http.response.body", "body": event, "more_body": True})
    await send({"type": "http.response.body", "body": b"", "more_body": False})


def _broken(model: str, exc: BaseException) -> EngineUnavailable:
    reason = str(exc) or type(exc).__name__
    return EngineUnavailable(f"model '{model}': the engine failed mid-request ({reason})")


def _pass_headers(resp: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in resp.raw_headers if k.lower() in _PASSED_HEADERS]


async def send_error(send: Send, exc: GatewayError, *, detail: bool = False) -> None:
    body = orjson.dumps(exc.body(detail=detail))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
