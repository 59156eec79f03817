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
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import aiohttp
from starlette.requests import ClientDisconnect
from starlette.types import Receive, Send

from vramgate.api.shapes import OPENAI, Shape
from vramgate.errors import EngineFailed, EngineGone, EngineReset, EngineUnavailable, GatewayError
from vramgate.upstream import Answer, Broken, NeverSent, ResetUnanswered, UpstreamPool

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


WATCH_AFTER_S = 0.01  # a request still under way this long starts watching for a hang-up
BODY_POLL_S = 0.05  # how often a watch that waits for the body to be read looks again


class hangup_cancels:
    """While inside, a client that hangs up cancels what the request is doing (waiting for a
    start or a slot, or relaying), which then ends with ClientDisconnect.

    One watcher task, not a task per side plus asyncio.wait, and a plain class rather than a
    generator: this is the hot path (bench/overhead.py measures it). The watcher starts only
    once the request has taken WATCH_AFTER_S: most answers from a fast engine are out before,
    and a timer costs a tenth of a task. A hang-up before it is seen when it starts (uvicorn
    keeps the disconnect), so a hang-up is noticed at most WATCH_AFTER_S late.
    """

    def __init__(self, receive: Receive, ready: Callable[[], bool] | None = None) -> None:
        self.receive = receive
        self.ready = ready  # where the request's body is still being read: watch once it is
        self.left = False
        self.task: asyncio.Task[Any] | None = None
        self.watcher: asyncio.Task[None] | None = None
        self.timer: asyncio.TimerHandle | None = None

    async def __aenter__(self) -> None:
        self.task = asyncio.current_task()
        self.timer = asyncio.get_running_loop().call_later(WATCH_AFTER_S, self._start)

    def _start(self) -> None:
        loop = asyncio.get_running_loop()
        if self.ready is not None and not self.ready():  # its reader has `receive` still
            self.timer = loop.call_later(BODY_POLL_S, self._start)
            return
        self.watcher = loop.create_task(self._watch())

    async def _watch(self) -> None:
        while (await self.receive())["type"] != "http.disconnect":
            pass
        self.left = True
        assert self.task is not None
        self.task.cancel()

    async def __aexit__(self, kind: type[BaseException] | None, exc: object, tb: object) -> bool:
        assert self.timer is not None and self.task is not None
        self.timer.cancel()
        if self.watcher is not None:
            self.watcher.cancel()
        if kind is asyncio.CancelledError and self.left:
            self.task.uncancel()
            raise ClientDisconnect() from None
        return False  # cancelled from elsewhere (shutdown), or not at all: as it was


class Mend(Protocol):
    """Turns an engine's answers into what the client's API wants: rewrite.AnswerFix (an engine
    that strays from OpenAI's API), or a translation into Anthropic's or Ollama's."""

    def whole(self, status: int, content_type: bytes, content: bytes) -> tuple[int, bytes, bytes]:
        """A complete answer's status, content type and body, as the client should get them."""
        ...

    def chunk(self, data: bytes) -> bytes:
        """What to send of a stream's next piece (may be nothing yet)."""
        ...

    def end(self) -> bytes:
        """What is still owed when the engine's stream ends."""
        ...


class Opened:
    """Whether the client's answer has begun (its headers were sent while the request waited:
    stream_keepalive_s); then every error must go into the stream."""

    started = False


async def relay(
    pool: UpstreamPool,
    model: str,
    base_url: str,
    path: str,
    body: bytes,
    is_stream: bool,
    send: Send,
    timing: Timing,
    mend: Mend | None = None,
    shape: Shape = OPENAI,
    opened: Opened | None = None,
    head: bytes = b"",
    peek: Callable[[int, bytes], None] | None = None,
) -> bool:
    """`peek`, where given, sees a whole answer's status and body as the engine sent them.
    `mend`: the engine's answers need mending or translating; None for engines that speak
    the client's API as it is, the hot path. EngineGone: nothing reached the engine (the caller
    may try again); EngineReset: reset unanswered (the caller may try again once the engine's
    exit is seen); any other failure is answered here, in `shape`, never sent twice, and
    returns True: the engine broke (it may be dying: the caller lets its exit be seen before it
    frees the slot, which would otherwise go to a request queued for a dead engine)."""
    host, port = split_url(base_url)
    started = opened is not None and opened.started
    timing.posted = time.perf_counter()
    try:
        answer = await pool.post(host, port, path, body, head)
    except NeverSent as exc:
        raise EngineGone(f"model '{model}': the engine refused the connection ({exc})") from exc
    except ResetUnanswered as exc:  # the caller sends it again if the engine is gone
        raise EngineReset(_broken(model, exc).message) from exc
    except Broken as exc:
        await _fail(send, timing, shape, _broken(model, exc), started)
        return True
    try:
        timing.answered = time.perf_counter()
        timing.status = answer.status
        if is_stream and answer.status == 200:
            return await _relay_stream(model, answer, send, timing, mend, shape, started)
        try:
            content = await answer.read()
        except Broken as exc:
            await _fail(send, timing, shape, _broken(model, exc), started)
            return True
        timing.answered = time.perf_counter()
    finally:
        answer.release()
    status, content_type = answer.status, answer.content_type
    if peek is not None:
        peek(status, content)
    if mend is not None:
        status, content_type, content = mend.whole(status, content_type, content)
    if started:  # a stream was promised: its error goes into it
        error = EngineFailed(f"model '{model}': {content.decode(errors='replace')[:500]}")
        await _fail(send, timing, shape, error, True)
        return False
    headers = [(b"content-type", content_type), (b"content-length", str(len(content)).encode())]
    headers += _engine_headers(answer)
    headers.append(timing.header(time.perf_counter()))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": content})
    return False


async def _fail(
    send: Send, timing: Timing, shape: Shape, error: GatewayError, started: bool
) -> None:
    timing.status = error.status
    if started:
        await send({"type": "http.response.body", "body": shape.stream_error(error),
                    "more_body": True})  # fmt: skip
        await send({"type": "http.response.body", "body": b"", "more_body": False})
    else:
        await send_error(send, error, shape=shape)


@functools.lru_cache(maxsize=256)
def split_url(base_url: str) -> tuple[str, int]:
    """http://HOST:PORT as (HOST, PORT)."""
    host, _, port = base_url.removeprefix("http://").rpartition(":")
    return host, int(port)


async def _relay_stream(
    model: str,
    answer: Answer,
    send: Send,
    timing: Timing,
    mend: Mend | None,
    shape: Shape,
    started: bool,
) -> bool:
    if not started:
        headers = [(b"content-type", shape.stream_type if mend else answer.content_type)]
        headers += [*_STREAM_HEADERS, *_engine_headers(answer), timing.header(time.perf_counter())]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
    try:
        async for chunk in answer.chunks():
            if timing.first_chunk is None:
                timing.first_chunk = time.perf_counter()
            if mend is not None and not (chunk := mend.chunk(chunk)):
                continue
            await send({"type": "http.response.body", "body": chunk, "more_body": True})
        if mend is not None and (rest := mend.end()):
            await send({"type": "http.response.body", "body": rest, "more_body": True})
    except Broken as exc:
        # Headers are gone already: tell the client in the stream itself, then end it.
        await _fail(send, timing, shape, _broken(model, exc), True)
        return True
    await send({"type": "http.response.body", "body": b"", "more_body": False})
    return False


# The engine's own headers a client may read (which server answered); its CORS headers are not
# among them: the gateway answers CORS itself (api/cors.py).
_KEPT_HEADERS = frozenset({b"server"})


def _engine_headers(answer: Answer) -> list[tuple[bytes, bytes]]:
    return [(name, value) for name, value in answer.raw_headers if name in _KEPT_HEADERS]


def _broken(model: str, exc: BaseException) -> EngineUnavailable:
    reason = str(exc) or type(exc).__name__
    return EngineUnavailable(f"model '{model}': the engine failed mid-request ({reason})")


async def send_error(
    send: Send, exc: GatewayError, *, detail: bool = False, shape: Shape = OPENAI
) -> None:
    status, body = shape.error(exc, detail=detail)
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
