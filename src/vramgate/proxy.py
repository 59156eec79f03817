"""Relaying one request to an engine and its answer back, chunk by chunk for streams.

`Relay` is an ASGI response: it watches the client while it relays, so a client that goes away
cancels the upstream request at once, and it gives the engine back to the scheduler when done.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable

import aiohttp
import orjson
from starlette.responses import Response
from starlette.types import Message, Receive, Scope, Send

from vramgate.errors import EngineUnavailable, GatewayError, sse_error_event

# Generation may take long: no total timeout, only on connecting to the engine on loopback.
UPSTREAM_TIMEOUT = aiohttp.ClientTimeout(total=None, sock_connect=10)
_JSON_HEADERS = {"Content-Type": "application/json"}
_PASSED_HEADERS = (b"content-type",)
_STREAM_HEADERS = ((b"cache-control", b"no-cache"), (b"x-accel-buffering", b"no"))


def new_upstream_session() -> aiohttp.ClientSession:
    # No connection limit: concurrency is bounded by the scheduler, not by the pool.
    connector = aiohttp.TCPConnector(limit=0, keepalive_timeout=30)
    return aiohttp.ClientSession(
        connector=connector, timeout=UPSTREAM_TIMEOUT, auto_decompress=False
    )


class Relay(Response):
    """An ASGI response that relays `body` to the engine at `port` and streams its answer back."""

    def __init__(
        self,
        http: aiohttp.ClientSession,
        model: str,
        port: int,
        path: str,
        body: bytes,
        is_stream: bool,
        on_done: Callable[[], None],
    ) -> None:
        # Not Response.__init__: status and headers come from the engine, in __call__.
        self.background = None
        self.http = http
        self.model = model
        self.url = f"http://127.0.0.1:{port}{path}"
        self.body = body
        self.is_stream = is_stream
        self.on_done = on_done

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        relay = asyncio.create_task(self._relay(send))
        watch = asyncio.create_task(_until_disconnect(receive))
        try:
            await asyncio.wait({relay, watch}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            # A finished client or a gone one: either way the upstream request ends here, and
            # leaving the `async with` below closes its connection, which aborts the generation.
            watch.cancel()
            relay.cancel()
            with contextlib.suppress(asyncio.CancelledError, OSError):
                await relay
            self.on_done()

    async def _relay(self, send: Send) -> None:
        try:
            async with self.http.post(self.url, data=self.body, headers=_JSON_HEADERS) as resp:
                if self.is_stream and resp.status == 200:
                    await self._relay_stream(resp, send)
                    return
                content = await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            await send_error(send, self._broken(exc))
            return
        headers = [*_pass_headers(resp), (b"content-length", str(len(content)).encode())]
        await send({"type": "http.response.start", "status": resp.status, "headers": headers})
        await send({"type": "http.response.body", "body": content})

    async def _relay_stream(self, resp: aiohttp.ClientResponse, send: Send) -> None:
        headers = [
            *_pass_headers(resp),
            (b"cache-control", b"no-cache"),
            (b"x-accel-buffering", b"no"),
        ]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        try:
            async for chunk in resp.content.iter_any():
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Headers are gone already: tell the client in the stream itself, then end it.
            event = sse_error_event(self._broken(exc))
            await send({"type": "http.response.body", "body": event, "more_body": True})
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    def _broken(self, exc: BaseException) -> EngineUnavailable:
        reason = str(exc) or type(exc).__name__
        return EngineUnavailable(f"model '{self.model}': the engine failed mid-request ({reason})")


def _pass_headers(resp: aiohttp.ClientResponse) -> list[tuple[bytes, bytes]]:
    return [(k, v) for k, v in resp.raw_headers if k.lower() in _PASSED_HEADERS]


async def _until_disconnect(receive: Receive) -> None:
    while True:
        message: Message = await receive()
        if message["type"] == "http.disconnect":
            return


async def send_error(send: Send, exc: GatewayError) -> None:
    body = orjson.dumps(exc.body())
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    headers += [(k.lower().encode(), v.encode()) for k, v in exc.headers.items()]
    await send({"type": "http.response.start", "status": exc.status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
