"""A storm from outside: 600 chat requests, 150 at once, over five models that must swap on one
simulated GPU with two slots each, while every 0.7 s an engine is SIGKILLed, a model unloaded or
(once) the configuration reloaded to add a sixth. Every request must get an answer (a reply or
an error in OpenAI's shape) within its bound; none may wait for a wake-up that never comes."""

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

from tests.conftest import fake_cmd, wait_until

MODELS = ("s0", "s1", "s2", "s3", "s4")
REQUESTS = 600
AT_ONCE = 150
REQUEST_BOUND_S = 60  # every answered request took < 5 s on a good run; a hang fails the test


def config(extra: bool = False) -> dict[str, Any]:
    engine = fake_cmd("--vram-mib", "3000", "--tokens-per-s", "200", "--load-delay", "0.3")
    names = (*MODELS, "s5") if extra else MODELS
    models = {
        name: {"engine": "command", "cmd": engine, "vram_mib": 3000, "max_concurrency": 2}
        for name in names
    }
    return {
        "gpus": {"simulate_mib": [10_000], "reserve_mib": 512},
        "defaults": {"evict_wait": 20, "stop_timeout": 2},
        "models": models,
    }


async def one_chat(http: httpx.AsyncClient, rng: random.Random) -> tuple[str, str]:
    """('ok' | 'error' | 'malformed', detail) for one chat request."""
    body: dict[str, Any] = {
        "model": rng.choice(MODELS),
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": rng.randint(1, 30),
    }
    if rng.random() < 1 / 3:
        body["stream"] = True
        async with http.stream("POST", "/v1/chat/completions", json=body) as resp:
            raw = (await resp.aread()).decode()
        if resp.status_code != 200:
            return shaped(raw)
        events = [line[6:] for line in raw.splitlines() if line.startswith("data: ")]
        return (
            ("ok", "")
            if events and events[-1] == "[DONE]"
            else shaped(events[-1] if events else raw)
        )
    resp = await http.post("/v1/chat/completions", json=body)
    if resp.status_code == 200 and resp.json()["choices"][0]["message"]["content"]:
        return "ok", ""
    return shaped(resp.text)


def shaped(text: str) -> tuple[str, str]:
    """An error is fine in OpenAI's shape; anything else is a bug."""
    try:
        error = json.loads(text)["error"]
        return ("error", error["message"]) if error["message"] else ("malformed", text)
    except (ValueError, KeyError, TypeError):
        return "malformed", text


async def storm(url: str, seed: int) -> list[tuple[str, str, float]]:
    rng = random.Random(seed)
    gate = asyncio.Semaphore(AT_ONCE)
    limits = httpx.Limits(max_connections=AT_ONCE + 10)
    timeout = httpx.Timeout(REQUEST_BOUND_S + 30)
    async with httpx.AsyncClient(base_url=url, timeout=timeout, limits=limits) as http:

        async def bounded(i: int) -> tuple[str, str, float]:
            async with gate:
                began = time.monotonic()
                try:
                    kind, detail = await asyncio.wait_for(one_chat(http, rng), REQUEST_BOUND_S)
                except TimeoutError:
                    kind, detail = "hung", f"request {i}"
                except httpx.HTTPError as exc:
                    kind, detail = "malformed", f"request {i}: {exc!r}"
                return kind, detail, time.monotonic() - began

        return await asyncio.gather(*(bounded(i) for i in range(REQUESTS)))


def faults(gw, seed: int, until: list[bool]) -> list[str]:
    """Every 0.7 s: SIGKILL an engine, unload a model, or (once) reload with a sixth model."""
    rng = random.Random(seed + 1)
    did: list[str] = []
    reloaded = False
    while not until:
        time.sleep(0.7)
        models = gw.status()["models"]
        ready = [m for m in models if m["state"] == "ready" and m["pid"]]
        roll = rng.random()
        if not reloaded and len(did) >= 4:
            gw.config_path.write_text(yaml.safe_dump(config(extra=True)))
            gw.http.post("/admin/reload")
            reloaded = True
            did.append("reload")
        elif roll < 0.5 and ready:
            victim = rng.choice(ready)
            os.kill(victim["pid"], signal.SIGKILL)
            did.append(f"kill {victim['name']}")
        elif ready:
            victim = rng.choice(ready)
            gw.http.post(f"/admin/models/{victim['name']}/unload")
            did.append(f"unload {victim['name']}")
    return did


def test_storm_every_request_answered_none_waits_for_a_lost_wakeup(gateway):
    gw = gateway(config())
    seed = int(os.environ.get("VRAMGATE_STORM_SEED", "20261201"))

    async def run() -> tuple[list[tuple[str, str, float]], list[str]]:
        done: list[bool] = []
        chaos = asyncio.create_task(asyncio.to_thread(faults, gw, seed, done))
        try:
            return await storm(gw.url, seed), await _finish(chaos, done)
        except BaseException:
            done.append(True)
            raise

    async def _finish(chaos: asyncio.Task[list[str]], done: list[bool]) -> list[str]:
        done.append(True)
        return await chaos

    began = time.monotonic()
    results, did = asyncio.run(run())
    took = time.monotonic() - began
    kinds = [kind for kind, _, _ in results]
    summary = {k: kinds.count(k) for k in set(kinds)}
    errors = sorted({detail[:100] for kind, detail, _ in results if kind != "ok"})
    slowest = max(seconds for *_, seconds in results)
    print(f"storm (seed {seed}): {summary} in {took:.1f} s, slowest {slowest:.1f} s; {did}")
    print(f"storm errors: {errors[:20]}")
    if summary.get("hung", 0):
        import json as _json

        print(_json.dumps(gw.status()["models"], indent=0)[:6000])
        print(gw.log()[-8000:])
    assert summary.get("hung", 0) == 0, summary
    assert summary.get("malformed", 0) == 0, errors
    assert summary.get("ok", 0) >= 0.7 * REQUESTS, (summary, errors)
    assert len(did) >= 5, did
    # Afterwards every model answers and nothing is left counted.
    for name in (*MODELS, "s5"):
        reply = gw.client.chat.completions.create(
            model=name, messages=[{"role": "user", "content": "x"}], max_tokens=1
        )
        assert reply.choices[0].message.content == "tok0 "

    def settled() -> bool:
        return all(m["in_flight"] == 0 and m["queued"] == 0 for m in gw.status()["models"])

    assert wait_until(settled, 10), gw.status()["models"]
