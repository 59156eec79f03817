"""A fake OpenAI-compatible engine with knobs for the ways real ones behave and misbehave.

    python -m vramgate.testing.fake_engine --port 8001 --load-delay 2 --tokens-per-s 50

It listens at once and answers /health with 503 until `--load-delay` has passed, like
llama-server, and like llama-server it dies at once on SIGTERM, aborting what it was doing
(`--graceful` finishes open requests first). Use it through the `command` engine in your own
tests of a vramgate setup.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from aiohttp import web

from vramgate.testing import fake_chat, fake_sleep, fake_slots, gpu_load

STATS = web.AppKey("stats", dict)
OPTS = web.AppKey("opts", argparse.Namespace)
READY = web.AppKey("ready", asyncio.Event)
GPU_HELD = web.AppKey("gpu_held", list)
RAM_HELD = web.AppKey("ram_held", bytearray)
GROWN = web.AppKey("ram_grown", bytearray)  # --ram-grow-mib, from the first request on


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="fake_engine", description="A fake engine.")
    p.add_argument("--host", default="127.0.0.1")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--name", default="fake", help="Model name reported by /v1/models.")
    p.add_argument("--load-delay", type=float, default=0.0, help="Seconds before /health is 200.")
    p.add_argument("--tokens-per-s", type=float, default=0.0, help="Generation pace; 0 = no wait.")
    p.add_argument("--max-tokens", type=int, default=16, help="Tokens when the request sets none.")
    p.add_argument("--latency-ms", type=float, default=0.0, help="Wait before each answer starts.")
    p.add_argument("--crash-after-tokens", type=int, default=None, help="Exit mid-generation.")
    p.add_argument("--fail-start", action="store_true", help="Print an error and exit at load.")
    p.add_argument("--never-ready", action="store_true", help="Answer /health 503 forever.")
    p.add_argument(
        "--listen-after-load", action="store_true", help="Refuse connections while loading (vLLM)."
    )
    p.add_argument("--ignore-sigterm", action="store_true", help="Only SIGKILL stops it.")
    p.add_argument(
        "--graceful",
        action="store_true",
        help="On SIGTERM, finish open requests before exiting (default: exit at once, aborting "
        "them, as llama-server does).",
    )
    p.add_argument(
        "--hang-after-tokens",
        type=int,
        default=None,
        help="Hang (the whole process: no answers, no health) after this many tokens.",
    )
    p.add_argument(
        "--stall-after-tokens",
        type=int,
        default=None,
        help="Stop sending (that request only; the process still answers) after this many tokens.",
    )
    p.add_argument("--spawn-child", action="store_true", help="Start a worker grandchild too.")
    p.add_argument(
        "--child-ignores-sigterm",
        action="store_true",
        help="With --spawn-child: the worker ignores SIGTERM (only SIGKILL ends it).",
    )
    p.add_argument("--embedding-dim", type=int, default=8)
    p.add_argument(
        "--api-key",
        default=None,
        help="Answer 401 without `Authorization: Bearer KEY` (not /health).",
    )
    p.add_argument("-c", "--ctx-size", type=int, default=0, help="Taken, as llama-server's.")
    p.add_argument("--vram-mib", type=int, default=None, help="Use to report (simulated GPU).")
    p.add_argument(
        "--ram-mib", type=int, default=0, help="Host RAM to hold from its load on (touched)."
    )
    p.add_argument(
        "--ram-grow-mib", type=int, default=0,
        help="Host RAM it holds more from its first request on (as KV caches and buffers grow).",
    )  # fmt: skip
    p.add_argument(
        "--log-line", action="append", default=[], help="Print this line at load (repeatable)."
    )
    gpu_load.add_arguments(p)
    fake_sleep.add_arguments(p)
    fake_slots.add_arguments(p)
    fake_chat.add_arguments(p)
    return p.parse_args(argv)


def _token(i: int) -> str:
    return f"tok{i} "


async def _generate(request: web.Request, n: int):
    """Yields token texts at the configured pace, crashing the process if asked to."""
    opts = request.app[OPTS]
    if opts.latency_ms:
        await asyncio.sleep(opts.latency_ms / 1000)
    for i in range(n):
        if opts.crash_after_tokens is not None and i >= opts.crash_after_tokens:
            print(f"fake engine: crashing after {i} tokens", flush=True)
            os._exit(17)
        if opts.stall_after_tokens is not None and i >= opts.stall_after_tokens:
            print(f"fake engine: stalling after {i} tokens", flush=True)
            await asyncio.Event().wait()
        if opts.hang_after_tokens is not None and i >= opts.hang_after_tokens:
            print(f"fake engine: hanging after {i} tokens", flush=True)
            time.sleep(1e6)  # noqa: ASYNC251 (a hung engine blocks everything: that is the point)
        if opts.tokens_per_s:
            await asyncio.sleep(1 / opts.tokens_per_s)
        yield _token(i)


async def _read(request: web.Request) -> dict[str, Any]:
    request.app[STATS]["requests"] += 1
    body = orjson.loads(await request.read())
    request.app[STATS]["last"] = body  # what the gateway sent, for tests of its translations
    if request.app[OPTS].no_tools:  # answers in words whatever tools it is offered
        return {k: v for k, v in body.items() if k != "tools"}
    return body


CONTEXT_TOKENS = 1 << 16  # the most a request makes where -c sets no context


def _max_tokens(body: dict[str, Any], opts: argparse.Namespace) -> int:
    """The tokens to make: as asked, but never past a context (a real engine stops there; an
    unbounded fake asked for 2**63 never answered)."""
    asked = int(body.get("max_tokens") or body.get("max_completion_tokens") or opts.max_tokens)
    return min(asked, opts.ctx_size or CONTEXT_TOKENS)


async def completion(request: web.Request) -> web.StreamResponse:
    body = await _read(request)
    opts = request.app[OPTS]
    if fake_sleep.asleep(request.app):  # the gateway must wake it first
        message = {"error": {"message": "the engine is asleep", "code": 503}}
        return web.json_response(message, status=503)
    is_chat = request.path.endswith("/chat/completions")
    n = _max_tokens(body, opts)
    timings = fake_slots.evaluate(request.app, body)
    if opts.ram_grow_mib and GROWN not in request.app:
        request.app[GROWN] = _touched(opts.ram_grow_mib)
    ident = f"cmpl-{time.monotonic_ns()}"
    stats = request.app[STATS]
    tool = fake_chat.tool_to_call(body) if is_chat else None
    said = fake_chat.tool_result(body) if is_chat else None
    try:
        if body.get("stream"):
            return await _stream(request, body, n, ident, is_chat)
        text = (
            f"the tool said: {said}" if said else "".join([t async for t in _generate(request, n)])
        )
    except (asyncio.CancelledError, ConnectionResetError):
        stats["cancelled"] += 1
        raise
    stats["completed"] += 1
    choice: dict[str, Any] = {"index": 0, "finish_reason": "tool_calls" if tool else "length"}
    if is_chat:
        choice["message"] = {"role": "assistant", "content": None if tool else text}
        if opts.reasoning:
            choice["message"]["reasoning_content"] = opts.reasoning
        if tool:
            choice["message"]["tool_calls"] = fake_chat.openai_calls(tool, opts.parallel_calls)
    else:
        choice["text"] = text
    prompt = fake_chat.prompt_tokens(body)
    return web.json_response(
        {
            "id": ident,
            "object": "chat.completion" if is_chat else "text_completion",
            "created": int(time.time()),
            "model": body.get("model"),
            "choices": [choice],
            "usage": {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": n + prompt},
            "timings": timings,
        },
        dumps=lambda o: orjson.dumps(o).decode(),
    )


async def _stream(
    request: web.Request, body: dict[str, Any], n: int, ident: str, is_chat: bool
) -> web.StreamResponse:
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    obj = "chat.completion.chunk" if is_chat else "text_completion"
    base = {"id": ident, "object": obj, "created": int(time.time()), "model": body.get("model")}

    def event(text: str | None, finish: str | None) -> bytes:
        if is_chat:
            delta = {} if text is None else {"content": text}
            choice: dict[str, Any] = {"index": 0, "delta": delta, "finish_reason": finish}
        else:
            choice = {"index": 0, "text": text or "", "finish_reason": finish}
        return b"data: " + orjson.dumps({**base, "choices": [choice]}) + b"\n\n"

    def deltas(pieces: list[dict[str, Any]]) -> bytes:
        choices = [[{"index": 0, "delta": delta, "finish_reason": None}] for delta in pieces]
        return b"".join(b"data: " + orjson.dumps({**base, "choices": c}) + b"\n\n" for c in choices)

    opts = request.app[OPTS]
    if opts.reasoning and is_chat:
        await resp.write(deltas(fake_chat.reasoning_deltas(opts.reasoning)))
    tool = fake_chat.tool_to_call(body) if is_chat else None
    if tool:
        await resp.write(deltas(fake_chat.openai_call_deltas(tool, opts.parallel_calls)))
        finish = "tool_calls"
    else:
        async for tok in _generate(request, n):
            await resp.write(event(tok, None))
        finish = "length"
    await resp.write(event(None, finish))
    if (body.get("stream_options") or {}).get("include_usage"):
        prompt = fake_chat.prompt_tokens(body)
        usage = {"prompt_tokens": prompt, "completion_tokens": n, "total_tokens": n + prompt}
        await resp.write(
            b"data: " + orjson.dumps({**base, "choices": [], "usage": usage}) + b"\n\n"
        )
    await resp.write(b"data: [DONE]\n\n")
    request.app[STATS]["completed"] += 1
    await resp.write_eof()
    return resp


async def embeddings(request: web.Request) -> web.Response:
    body = await _read(request)
    inputs = body.get("input", "")
    inputs = inputs if isinstance(inputs, list) else [inputs]
    dim = request.app[OPTS].embedding_dim
    data = [
        {
            "object": "embedding",
            "index": i,
            "embedding": [((len(str(x)) + k) % 7) / 7 for k in range(dim)],
        }
        for i, x in enumerate(inputs)
    ]
    request.app[STATS]["completed"] += 1
    return web.json_response({"object": "list", "data": data, "model": body.get("model")})


async def rerank(request: web.Request) -> web.Response:
    body = await _read(request)
    docs = body.get("documents", [])
    query = str(body.get("query", ""))
    scores = [sum(w in str(d) for w in query.split()) for d in docs]
    results = [{"index": i, "relevance_score": float(s)} for i, s in enumerate(scores)]
    results.sort(key=lambda r: -r["relevance_score"])
    request.app[STATS]["completed"] += 1
    return web.json_response({"model": body.get("model"), "results": results})


async def health(request: web.Request) -> web.Response:
    if request.app[READY].is_set():
        return web.json_response({"status": "ok"})
    return web.json_response({"error": {"message": "Loading model", "code": 503}}, status=503)


async def models(request: web.Request) -> web.Response:
    name = request.app[OPTS].name
    return web.json_response({"object": "list", "data": [{"id": name, "object": "model"}]})


async def stats(request: web.Request) -> web.Response:
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    sleep = fake_sleep.sleep_stats(request.app)
    return web.json_response(
        {**request.app[STATS], "pid": os.getpid(), "cuda_visible": visible, "sleep": sleep}
    )


def _touched(mib: int) -> bytearray:
    """`mib` MiB resident, not just reserved: every page written once."""
    held = bytearray(mib << 20)
    held[::4096] = b"\1" * len(held[::4096])
    return held


async def _load(app: web.Application) -> None:
    opts = app[OPTS]
    if not opts.listen_after_load:  # else main() already waited before listening
        await asyncio.sleep(opts.load_delay)
    if opts.fail_start:
        print("fake engine: error: failed to load model (--fail-start)", flush=True)
        os._exit(3)
    for line in opts.log_line:  # e.g. llama.cpp's buffer sizes
        print(line, flush=True)
    app[GPU_HELD] = gpu_load.allocate(opts)  # real GPU memory, where asked for (PyTorch)
    if opts.ram_mib:
        app[RAM_HELD] = _touched(opts.ram_mib)
    usage_file = os.environ.get("VRAMGATE_SIM_USAGE_FILE")
    if opts.vram_mib is not None and usage_file:
        Path(usage_file).write_text(str(opts.vram_mib))  # noqa: ASYNC240 (tiny, once)
    if not opts.never_ready:
        app[STATS]["ready_at"] = time.time()  # when it was ready: the gateway sees it later
        app[READY].set()
        print(f"fake engine: ready on port {opts.port}", flush=True)


@web.middleware
async def _engine_errors(request: web.Request, handler: Any) -> web.StreamResponse:
    """A request the fake cannot read (a value of the wrong type) fails as llama-server's do:
    a 500 in OpenAI's error shape, whatever the route, not aiohttp's text page."""
    try:
        return await handler(request)
    except web.HTTPException:
        raise
    except Exception as exc:
        error = {"code": 500, "message": f"{type(exc).__name__}: {exc}", "type": "server_error"}
        return web.json_response({"error": error}, status=500)


def _key_check(key: str | None) -> Any:
    """As llama-server's --api-key: every route but /health wants the key."""

    @web.middleware
    async def check(request: web.Request, handler: Any) -> web.StreamResponse:
        wrong = request.headers.get("Authorization") != f"Bearer {key}"
        if key and request.path != "/health" and wrong:
            error = {"error": {"message": "Invalid API Key", "code": 401}}
            return web.json_response(error, status=401)
        return await handler(request)

    return check


def build_app(opts: argparse.Namespace) -> web.Application:
    middlewares = [_key_check(opts.api_key), _engine_errors]
    app = web.Application(client_max_size=1 << 30, middlewares=middlewares)
    app[OPTS] = opts
    app[STATS] = {"requests": 0, "completed": 0, "cancelled": 0}
    app[READY] = asyncio.Event()
    app.router.add_get("/health", health)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/stats", stats)
    for path in ("/v1/chat/completions", "/v1/completions", "/v1/responses"):
        app.router.add_post(path, completion)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_post("/v1/rerank", rerank)
    fake_sleep.add_routes(app, opts)
    fake_slots.add_routes(app, opts)
    fake_chat.add_routes(app, opts, _generate, _read)

    async def on_startup(app: web.Application) -> None:
        app["loader"] = asyncio.create_task(_load(app))

    app.on_startup.append(on_startup)
    return app


def main(argv: list[str] | None = None) -> None:
    opts = parse_args(argv)
    print(f"fake engine: pid {os.getpid()} loading (delay {opts.load_delay}s)", flush=True)
    if opts.ignore_sigterm:
        signal.signal(signal.SIGTERM, lambda *_: print("fake engine: ignoring SIGTERM", flush=True))
    if opts.spawn_child:
        deaf = "signal.signal(signal.SIGTERM, signal.SIG_IGN)" if opts.child_ignores_sigterm else ""
        code = f"import signal, time\n{deaf}\ntime.sleep(3600)"
        child = subprocess.Popen([sys.executable, "-c", code])
        print(f"fake engine: worker pid {child.pid}", flush=True)
    if opts.listen_after_load:
        time.sleep(opts.load_delay)
    try:
        import uvloop

        uvloop.install()
    except ImportError:
        pass
    web.run_app(
        build_app(opts),
        host=opts.host,
        port=opts.port,
        print=None,
        access_log=None,
        handler_cancellation=True,
        # Without aiohttp's handlers SIGTERM keeps its default action: the process ends at once.
        handle_signals=opts.graceful and not opts.ignore_sigterm,
    )


if __name__ == "__main__":
    main()
