"""Relaying one request to an engine and its answer back, chunk by chunk for streams.

While a request waits or relays, one small task listens for the client going away and cancels
it, so a client that disconnects leaves its queue place and aborts the upstream request at once
(leaving `async with` closes the engine connection, and engines stop generating for a closed
connection).
"""

from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Send

from vramgate.errors import EngineGone, EngineUnavailable, GatewayError, sse_error_event
from vramgate.rewrite import AnswerFix
from vramgate.upstream import Answer, Broken, NeverSent, UpstreamPool

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
    pool: UpstreamPool,
    model: str,
    base_url: str,
    path: str,
    body: bytes,
    is_stream: bool,
    send: Send,
    timing: Timing,
    fix: AnswerFix | None = None,
) -> bool:
    """`fix`: the engine's answers need mending (rewrite.py); None for engines that speak
    OpenAI's API as it is, the hot path. EngineGone: nothing reached the engine (the caller
    may try again); any other failure is answered here, never sent twice, and returns True:
    the engine broke (it may be dying: the caller lets its exit be seen before it frees the
    slot, which would otherwise go to a request queued for a dead engine)."""
    host, port = split_url(base_url)
    timing.posted = time.perf_counter()
    try:
        answer = await pool.post(host, port, path, body)
    except NeverSent as exc:
        raise EngineGone(f"model '{model}': the engine refused the connection ({exc})") from exc
    except Broken as exc:
        error = _broken(model, exc)
        timing.status = error.status
        await send_error(send, error)
        return True
    try:
        timing.answered = time.perf_counter()
        timing.status = answer.status
        if is_stream and answer.status == 200:
            return await _relay_stream(model, answer, send, timing, fix)
        try:
            content = await answer.read()
        except Broken as exc:
            error = _broken(model, exc)
            timing.status = error.status
            await send_error(send, error)
            return True
        timing.answered = time.perf_counter()
    finally:
        answer.release()
    headers = _pass_headers(answer.raw_headers)
    if fix is not None:
        content_type, content = fix.whole(answer.status, answer.content_type, content)
        headers = [(b"content-type", content_type)]
    headers += [(b"content-length", str(len(content)).encode())]
    headers.append(timing.header(time.perf_counter()))
    await send({"type": "http.response.start", "status": answer.status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
    return False


@functools.lru_cache(maxsize=256)
def split_url(base_url: str) -> tuple[str, int]:
    """http://HOST:PORT as (HOST, PORT)."""
    host, _, port = base_url.removeprefix("http://").rpartition(":")
    return host, int(port)


async def _relay_stream(
    model: str, answer: Answer, send: Send, timing: Timing, fix: AnswerFix | None
) -> bool:
    headers = [*_pass_headers(answer.raw_headers), *_STREAM_HEADERS]
    headers.append(timing.header(time.perf_counter()))
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    try:
        async for chunk in answer.chunks():
            if timing.first_chunk is None:
                timing.first_chunk = time.perf_counter()
            if fix is not None and not (chunk := fix.chunk(chunk)):
                continue
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if fix is not None and (rest := fix.end()):
            await send({"type": "http.response.body", "body": rest, "more_body": True})
    except Broken as exc:
        # Headers are gone already: tell the client in the stream itself, then end it.
        event = sse_error_event(_broken(model, exc))
        await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})
        return True
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return False


def _broken(model: str, exc: BaseException) -> EngineUnavailable:
    reason = str(exc) or type(exc).__name__
    return EngineUnavailable(f"model '{model}': the engine failed mid-request ({reason})")


def _pass_headers(raw: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in raw if k in _PASSED_HEADERS]


async def send_error(send: Send, exc: GatewayError, *, detail: bool = False) -> None:
    body = orjson.dumps(exc.body(detail=detail))
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
