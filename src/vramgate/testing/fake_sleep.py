"""The fake engine's sleep and wake, with vLLM's routes (POST /sleep?level=N, /wake_up,
/collective_rpc, /reset_prefix_cache, GET /is_sleeping) and SGLang's
(POST /release_memory_occupation, /resume_memory_occupation), and knobs for what a sleep frees and
holds and how long a wake takes, so that every sleep decision is tested without a GPU.

Asleep, it reports --sleep-vram-mib on the simulated GPU and really holds --sleep-host-mib of
host memory (the weights vLLM keeps in RAM at level 1; level 2 holds none), and refuses
generation with 503, so that a request relayed to a sleeping engine shows.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from pathlib import Path

from aiohttp import web

SLEEP = web.AppKey("sleep", dict)
# What a failing sleep or wake answers: engine internals (a path, a token) that only admins may
# read, as a real engine's traceback would be.
FAILURE_TEXT = "failed at /opt/engine/secret_module.py (token=engine-internal-4242)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--wake-s", type=float, default=0.0, help="Seconds a wake takes.")
    p.add_argument("--sleep-s", type=float, default=0.0, help="Seconds a sleep takes.")
    p.add_argument("--sleep-vram-mib", type=int, default=0, help="GPU MiB still held asleep.")
    p.add_argument("--sleep-host-mib", type=int, default=0, help="Host MiB held asleep (level 1).")
    p.add_argument("--wake-fails", action="store_true", help="Every wake answers 500.")
    p.add_argument("--sleep-fails", action="store_true", help="Every sleep answers 500.")


def add_routes(app: web.Application, opts: argparse.Namespace) -> None:
    app[SLEEP] = {"asleep": False, "level": 0, "held": None, "sleeps": 0, "wakes": 0, "opts": opts}
    app.router.add_post("/sleep", vllm_sleep)
    app.router.add_post("/wake_up", wake)
    app.router.add_get("/is_sleeping", is_sleeping)
    app.router.add_post("/collective_rpc", collective_rpc)
    app.router.add_post("/reset_prefix_cache", ok)
    app.router.add_post("/release_memory_occupation", sglang_sleep)
    app.router.add_post("/resume_memory_occupation", wake)


def asleep(app: web.Application) -> bool:
    return bool(app[SLEEP]["asleep"])


async def _sleep(request: web.Request, level: int) -> web.Response:
    app, opts = request.app, request.app[SLEEP]["opts"]
    state = app[SLEEP]
    await asyncio.sleep(opts.sleep_s)
    if opts.sleep_fails:
        print("fake engine: sleep failed (--sleep-fails)", flush=True)
        return web.json_response({"error": FAILURE_TEXT}, status=500)
    state.update(asleep=True, level=level, sleeps=state["sleeps"] + 1)
    if level == 1 and opts.sleep_host_mib:
        held = bytearray(opts.sleep_host_mib << 20)
        held[::4096] = b"\1" * len(held[::4096])  # touch every page: resident, not reserved
        state["held"] = held
    _report_vram(opts, opts.sleep_vram_mib)
    print(f"fake engine: asleep (level {level})", flush=True)
    return web.json_response({})


async def vllm_sleep(request: web.Request) -> web.Response:
    return await _sleep(request, int(request.query.get("level", "1")))


async def sglang_sleep(request: web.Request) -> web.Response:
    return await _sleep(request, 1)


async def wake(request: web.Request) -> web.Response:
    app, opts = request.app, request.app[SLEEP]["opts"]
    state = app[SLEEP]
    await asyncio.sleep(opts.wake_s)
    if opts.wake_fails:
        print("fake engine: wake failed (--wake-fails)", flush=True)
        return web.json_response({"error": FAILURE_TEXT}, status=500)
    state.update(asleep=False, held=None, wakes=state["wakes"] + 1)
    if opts.vram_mib is not None:
        _report_vram(opts, opts.vram_mib)
    print("fake engine: awake", flush=True)
    return web.json_response({})


async def is_sleeping(request: web.Request) -> web.Response:
    return web.json_response({"is_sleeping": asleep(request.app)})


async def collective_rpc(request: web.Request) -> web.Response:
    body = await request.json()
    print(f"fake engine: collective_rpc {body.get('method')}", flush=True)
    return web.json_response({"results": [None]})


async def ok(request: web.Request) -> web.Response:
    return web.json_response({})


def sleep_stats(app: web.Application) -> dict[str, object]:
    state = app[SLEEP]
    return {k: state[k] for k in ("asleep", "level", "sleeps", "wakes")}


def _report_vram(opts: argparse.Namespace, mib: int) -> None:
    usage_file = os.environ.get("VRAMGATE_SIM_USAGE_FILE")
    if usage_file and opts.vram_mib is not None:
        Path(usage_file).write_text(str(mib))
