"""Faults under load: hundreds of requests over five models that must swap on a simulated GPU
(two of them sleep instead of stopping, so sleepers are woken mid-storm), while engines are
SIGKILLed (a sleeping one too), unloaded by an admin and redefined by a reload. The same storm
with a container model in the mix is in tests/docker."""

from __future__ import annotations

import asyncio
import json
import os
import random
import signal
import time
from typing import Any

import httpx
import yaml

from tests.conftest import fake_cmd, pid_alive, wait_until

MODELS = ("m0", "m1", "m2", "m3", "m4")
REQUESTS = 450
AT_ONCE = 40
REQUEST_BOUND_S = 90  # no request may take longer: a hang fails the test, it does not stall it


SLEEPERS = ("m0", "m1")  # sleep (level 1) rather than stop when room is needed


def config(generation: int = 0, extra: dict[str, Any] | None = None) -> dict[str, Any]:
    # 3000 MiB each on 10000 MiB (512 reserved): at most three resident, so traffic over five
    # forces swaps all the time. Sleepers keep 200 MiB of it asleep.
    engine = fake_cmd("--vram-mib", "3000", "--tokens-per-s", "200", "--load-delay", "0.2")
    sleepy = fake_cmd(
        "--vram-mib", "3000", "--tokens-per-s", "200", "--load-delay", "0.2",
        "--sleep-vram-mib", "200", "--sleep-host-mib", "8", "--wake-s", "0.1",
    )  # fmt: skip
    models: dict[str, Any] = {
        name: {
            "engine": "command",
            "cmd": sleepy if name in SLEEPERS else engine,
            "vram_mib": 3000,
            "env": {"GEN": str(generation)},
            **({"sleep": 1} if name in SLEEPERS else {}),
        }
        for name in MODELS
    }
    for name, model in (extra or {}).items():
        models[name] = {**model, "env": {**model.get("env", {}), "GEN": str(generation)}}
    return {
        "gpus": {"simulate_mib": [10_000], "reserve_mib": 512},
        "host_ram_mib": 8000,  # two sleepers, at their 3000 MiB estimate before measured
        "defaults": {"evict_wait": 60, "stop_timeout": 2},
        "models": models,
    }


async def one_request(
    http: httpx.AsyncClient, rng: random.Random, names: tuple[str, ...]
) -> tuple[str, str]:
    """('ok' | 'error' | 'malformed', detail) for one request, streamed a third of the time."""
    body = {"model": rng.choice(names), "prompt": "x", "max_tokens": rng.randint(4, 24)}
    if rng.random() < 1 / 3:
        body["stream"] = True
        async with http.stream("POST", "/v1/completions", json=body) as resp:
            raw = (await resp.aread()).decode()
            if resp.status_code != 200:
                return _shaped(raw)
            events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
            if events and events[-1] == "[DONE]":
                return "ok", ""
            return _shaped(events[-1] if events else raw)
    resp = await http.post("/v1/completions", json=body)
    if resp.status_code == 200 and resp.json()["choices"][0]["text"].startswith("tok0"):
        return "ok", ""
    return _shaped(resp.text)


def _shaped(text: str) -> tuple[str, str]:
    """An error is fine if it is in OpenAI's shape; anything else is a bug."""
    try:
        error = json.loads(text)["error"]
        return ("error", error["message"]) if error["message"] else ("malformed", text)
    except (ValueError, KeyError, TypeError):
        return "malformed", text


async def traffic(url: str, seed: int, names: tuple[str, ...]) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    gate = asyncio.Semaphore(AT_ONCE)
    limits = httpx.Limits(max_connections=AT_ONCE + 10)
    async with httpx.AsyncClient(base_url=url, timeout=REQUEST_BOUND_S, limits=limits) as http:

        async def bounded(i: int) -> tuple[str, str]:
            async with gate:
                await asyncio.sleep(rng.random() * 0.02)
                try:
                    request = one_request(http, rng, names)
                    return await asyncio.wait_for(request, REQUEST_BOUND_S)
                except TimeoutError:
                    return "hung", f"request {i}"
                except httpx.HTTPError as exc:
                    return "malformed", f"request {i}: {exc!r}"

        return await asyncio.gather(*(bounded(i) for i in range(REQUESTS)))


def chaos(gw, seed: int, extra: dict[str, Any] | None = None) -> list[str]:
    """SIGKILL three engines (one asleep, where one sleeps), unload two models, reload once
    with every model changed."""
    rng = random.Random(seed)
    did = []
    running: list[dict[str, Any]] = []

    def found(state: str) -> bool:
        running[:] = [m for m in gw.status()["models"] if m["state"] == state and m["pid"]]
        return bool(running)

    for step in ("kill", "unload", "kill-asleep", "reload", "unload", "kill"):
        time.sleep(rng.uniform(0.5, 1.2))
        asleep = step == "kill-asleep" and wait_until(lambda: found("sleeping"), 3)
        if not asleep:
            wait_until(lambda: found("ready"), 10)
        if step.startswith("kill") and running:
            victim = rng.choice(running)
            os.kill(victim["pid"], signal.SIGKILL)
            did.append(f"kill {victim['name']} ({victim['state']})")
        elif step == "unload" and running:
            victim = rng.choice(running)
            gw.http.post(f"/admin/models/{victim['name']}/unload")
            did.append(f"unload {victim['name']}")
        elif step == "reload":
            gw.config_path.write_text(yaml.safe_dump(config(generation=1, extra=extra)))
            changed = gw.http.post("/admin/reload").json()["changed"]
            assert sorted(changed) == sorted([*MODELS, *(extra or {})])
            did.append("reload")
    return did


def run_chaos(gw, seed: int, extra: dict[str, Any] | None = None) -> dict[str, int]:
    """The storm and its faults, then the bars: every request answered (a reply, or an error in
    OpenAI's shape), none hung, every model answers afterwards with its new definition,
    counters back to 0; the sleepers were woken mid-storm. Returns the outcome counts."""
    names = (*MODELS, *(extra or {}))

    async def run() -> tuple[list[tuple[str, str]], list[str]]:
        load = asyncio.create_task(traffic(gw.url, seed, names))
        faults = asyncio.to_thread(chaos, gw, seed, extra)
        return await asyncio.gather(load, faults)

    began = time.monotonic()
    results, did = asyncio.run(run())
    took = time.monotonic() - began
    kinds = [kind for kind, _ in results]
    summary = {k: kinds.count(k) for k in set(kinds)}
    errors = sorted({detail[:120] for kind, detail in results if kind != "ok"})
    by_kind: dict[str, int] = {}
    for kind, detail in results:
        if kind != "ok":
            key = detail.split("(")[0][:60] + (
                "(" + detail.split("(")[1][:25] if "(" in detail else ""
            )
            by_kind[key] = by_kind.get(key, 0) + 1
    print(f"chaos errors by kind: {by_kind}")
    print(f"chaos: {summary} in {took:.1f} s; faults {did}; errors: {errors}")
    assert len(results) == REQUESTS
    assert summary.get("hung", 0) == 0 and summary.get("malformed", 0) == 0, errors
    assert summary.get("ok", 0) >= 0.8 * REQUESTS, (summary, errors)
    assert len(did) == 6, did
    woken = sum(m["wakes"] for m in gw.status()["models"] if m["name"] in SLEEPERS)
    # Afterwards every model answers, with its new definition, and nothing is left counted.
    for name in names:
        reply = gw.client.completions.create(model=name, prompt="x", max_tokens=1)
        assert reply.choices[0].text == "tok0 "

    def settled() -> bool:
        models = gw.status()["models"]
        return all(m["in_flight"] == 0 and m["queued"] == 0 for m in models)

    assert wait_until(settled, 10), gw.status()["models"]
    assert all(m["pending"] is None for m in gw.status()["models"])
    print(f"chaos: sleepers woken {woken} times")
    assert woken > 0 or any("asleep" in d for d in did), "no sleeper was woken mid-storm"
    return summary


def test_chaos_under_load_every_request_answered_and_nothing_stuck(gateway):
    gw = gateway(config())
    run_chaos(gw, int(os.environ.get("VRAMGATE_CHAOS_SEED", "20261124")))
    # No engine outlives the gateway's SIGTERM (the fixture checks the ones it knows too).
    pids = gw.engine_pids()
    gw.stop()
    assert all(wait_until(lambda p=p: not pid_alive(p), 15) for p in pids)
