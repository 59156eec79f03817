"""A stand-in for llama-server that answers every method and path with what it got (method,
path, query, headers, body length), and, as llama-server does, echoes any `Origin` in
Access-Control-Allow-Origin. Run as a file; reads from argv (the rest, the gateway's own flags,
is ignored): --port N; --delay S (seconds before a non-/health answer's head); --log FILE (a
line per request: 'METHOD PATH start|done|cancelled'). Binds 127.0.0.1."""

from __future__ import annotations

import asyncio
import sys

from aiohttp import web

ARGV = sys.argv[1:]


def _opt(name: str, default: str | None = None) -> str | None:
    return ARGV[ARGV.index(name) + 1] if name in ARGV else default


PORT, DELAY, LOG = int(_opt("--port") or 0), float(_opt("--delay", "0") or 0), _opt("--log")


def _note(line: str) -> None:
    if LOG:
        with open(LOG, "a") as f:
            f.write(line + "\n")


async def _any(request: web.Request) -> web.StreamResponse:
    cors = {"Access-Control-Allow-Origin": request.headers.get("Origin", "*")}
    if request.path == "/health":
        return web.json_response({"status": "ok"}, headers=cors)
    body = await request.read()
    _note(f"{request.method} {request.path_qs} start")
    try:
        if DELAY:
            await asyncio.sleep(DELAY)
    except asyncio.CancelledError:
        _note(f"{request.method} {request.path_qs} cancelled")
        raise
    _note(f"{request.method} {request.path_qs} done")
    headers = {k.lower(): v for k, v in request.headers.items()}
    answer = {"method": request.method, "path": request.path, "query": request.query_string,
              "body_len": len(body), "headers": headers}  # fmt: skip
    return web.json_response(answer, headers=cors)


app = web.Application(client_max_size=1 << 30)
app.router.add_route("*", "/{tail:.*}", _any)
web.run_app(app, host="127.0.0.1", port=PORT, print=None, handler_cancellation=True)
