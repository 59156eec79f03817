"""Swaps on the CPU, in one run: what a request that needs another model costs through vramgate,
through llama.cpp's own router, and by hand; the sleep tier's wake; a long prompt after a swap.

    python -m bench.swap [--rounds 8] [--prompt-tokens 4200] [--out FILE.json]

1. Cold swap: two copies of gemma 3 270M asked alternately for 1 token, one engine at a time:
   vramgate (`max_running: 1`) plain (`keep_kv: false`) and keeping its KV caches, at gemma's
   default 32k context (kept only with `keep_kv: true`: the full sliding cache costs) and at
   4k (kept by default), SmolLM2 (no sliding window, kept by default) likewise; plain and
   kept swaps paired in one gateway (`plain_and_kept`). Then llama.cpp's router
   (`llama-server --models-dir D --models-max 1`)
   and the floor, a bare llama-server stopped and started by hand (SIGTERM and wait, start, poll
   /health every 5 ms, ask). Median and max of request to answer.
2. Sleep tier: two fake engines on a simulated GPU that fits one, `sleep: 1`, waking in --wake-s:
   request to answer after a swap, and the gateway's time beyond the wake itself.
3. KV keeping: a ~N-token prompt, then a swap, then the same prompt, gemma kept by default
   and with `keep_kv: false`: request to answer (1 token) after the swap, and the prefill it
   replaces.
4. Readiness gap: how long after a (fake) engine is ready the gateway sees it.
Needs scripts/setup.sh's exports (llama-server, gemma).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
from bench.gateway import running_gateway

from vramgate.runtimes.local import free_port

ROOT = Path(__file__).resolve().parent.parent
GGUF = os.environ.get("VRAMGATE_DEFAULT_GGUF", "")
CHAT_GGUF = os.environ.get("VRAMGATE_CHAT_GGUF", "")
BINARY = os.environ.get("VRAMGATE_ENGINES__LLAMACPP__BINARY", "")
FAKE = f"{sys.executable} -m vramgate.testing.fake_engine --port ${{PORT}}"


def summary(seconds: list[float]) -> dict[str, Any]:
    return {"median_ms": round(statistics.median(seconds) * 1000, 1),
            "max_ms": round(max(seconds) * 1000, 1), "runs": len(seconds)}  # fmt: skip


def one_token(http: httpx.Client, model: str, prompt: str = "Hello") -> float:
    began = time.perf_counter()
    resp = http.post("/v1/completions", json={"model": model, "prompt": prompt, "max_tokens": 1})
    resp.raise_for_status()
    return time.perf_counter() - began


def alternate(
    http: httpx.Client, names: list[str], rounds: int, dropped: list[str] | None = None
) -> list[float]:
    """Request to answer of each swap. `dropped`: a request the server hangs up on is asked
    once more and its error noted there (llama.cpp's router did, once in a run); else raised."""
    one_token(http, names[0])  # the first load is not a swap
    times = []
    for i in range(rounds * len(names)):
        name = names[(i + 1) % len(names)]
        try:
            times.append(one_token(http, name))
        except httpx.RemoteProtocolError as exc:
            if dropped is None:
                raise
            dropped.append(f"{name}: {exc}")
            times.append(one_token(http, name))
    return times


def copies(folder: Path, source: str = GGUF, stem: str = "gemma") -> list[Path]:
    paths = [folder / f"{stem}-copy-{i}.gguf" for i in (1, 2)]
    for path in paths:
        shutil.copy(source, path)
    return paths


def plain_and_kept(
    paths: list[Path], rounds: int, kept: bool | None, args: list[str] | None = None
) -> dict[str, dict[str, Any]]:
    """Plain and kept swaps paired in one gateway, so that this machine's drift (swaps here
    took 1.1 s in one run and 1.5 s in the next) falls on both alike: each file is served as
    two models, `plain` (keep_kv: false) and `kept` (`kept`: True, or None for the default),
    asked in the order p1 p2 k1 k2 p1 p2 ...: a request for p2 is a swap from a plain engine to
    a plain one, for k2 from a kept one to a kept one (saved before it stops, restored as it
    starts); those for p1 and k1 change kind and are not counted."""
    model: dict[str, Any] = {"engine": "llamacpp", "args": args or []}
    models: dict[str, Any] = {}
    for i, path in enumerate(paths, 1):
        models[f"p{i}"] = model | {"source": str(path), "keep_kv": False}
        setting = {} if kept is None else {"keep_kv": kept}
        models[f"k{i}"] = model | {"source": str(path)} | setting
    times: dict[str, list[float]] = {"plain": [], "kept": []}
    with running_gateway(models, max_running=1, engines={"llamacpp": {"binary": BINARY}}) as http:
        for name in ("p1", "p2", "k1", "k2"):  # each engine's first start (and save) is done
            one_token(http, name)
        for _ in range(rounds):
            for name in ("p1", "p2", "k1", "k2"):
                took = one_token(http, name)
                if name.endswith("2"):
                    times["plain" if name == "p2" else "kept"].append(took)
    plain, keeping = summary(times["plain"]), summary(times["kept"])
    return {"plain": plain, "kept": keeping | {"keep_kv": kept, "args": args or [],
            "ratio": round(keeping["median_ms"] / plain["median_ms"], 3)}}  # fmt: skip


def wait_health(url: str, proc: subprocess.Popen[bytes] | None = None, poll_s: float = 0.005):
    while True:
        try:
            if httpx.get(url + "/health", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            pass
        if proc is not None and proc.poll() is not None:
            raise RuntimeError("llama-server exited")
        time.sleep(poll_s)


def through_router(folder: Path, rounds: int, dropped: list[str]) -> list[float]:
    port = free_port()
    argv = [BINARY, "--models-dir", str(folder), "--models-max", "1", "--host", "127.0.0.1",
            "--port", str(port)]  # fmt: skip
    router = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        url = f"http://127.0.0.1:{port}"
        wait_health(url, router)
        with httpx.Client(base_url=url, timeout=120) as http:
            names = sorted(m["id"] for m in http.get("/v1/models").json()["data"])
            return alternate(http, names, rounds, dropped)
    finally:
        router.terminate()
        router.wait(30)


def by_hand(paths: list[Path], rounds: int) -> list[float]:
    """The floor: what a swap costs with nothing in between (stop, start, poll, ask)."""
    times: list[float] = []
    running: subprocess.Popen[bytes] | None = None
    try:
        for i in range(rounds * 2 + 1):
            began = time.perf_counter()
            if running is not None:
                running.send_signal(signal.SIGTERM)
                running.wait(30)
            port = free_port()
            argv = [BINARY, "-m", str(paths[i % 2]), "--host", "127.0.0.1", "--port", str(port)]
            running = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
            url = f"http://127.0.0.1:{port}"
            wait_health(url, running)
            with httpx.Client(base_url=url, timeout=120) as http:
                one_token(http, "gemma")
            if i:  # the first load is not a swap
                times.append(time.perf_counter() - began)
    finally:
        if running is not None:
            running.kill()
            running.wait()
    return times


def sleep_tier(rounds: int, wake_s: float) -> list[float]:
    knobs = f"--vram-mib 6000 --sleep-vram-mib 200 --sleep-host-mib 16 --wake-s {wake_s}"
    model = {"engine": "command", "cmd": f"{FAKE} {knobs}", "vram_mib": 6000, "sleep": 1}
    settings = {"gpus": {"simulate_mib": [8000], "reserve_mib": 0}, "host_ram_mib": 20_000}
    with running_gateway({"a": model, "b": model}, **settings) as http:
        one_token(http, "b")  # both loaded once: from here on each swap is a sleep and a wake
        return alternate(http, ["a", "b"], rounds)


def readiness_gap(rounds: int) -> list[float]:
    """How long after an engine is ready the gateway sees it: the fake engine records when it
    became ready, the gateway when it saw it (both wall clocks of this machine)."""
    model = {"engine": "command", "cmd": f"{FAKE} --load-delay 0.3"}
    gaps = []
    with running_gateway({"a": model}) as http:
        for _ in range(rounds):
            http.post("/v1/models/unload", json={"model": "a"}).raise_for_status()
            one_token(http, "a")
            status = next(m for m in http.get("/gateway/status").json()["models"])
            engine = httpx.get(status["url"] + "/stats", timeout=5).json()
            gaps.append(status["ready_at"] - engine["ready_at"])
    return gaps


def kv_after_swap(prompt_tokens: int) -> dict[str, Any]:
    prompt = " ".join(["The old stone wall was grey and cold."] * (prompt_tokens // 10))
    common = {"engine": "llamacpp", "source": GGUF, "args": ["-c", str(prompt_tokens + 512)]}
    # kept: keep_kv unset (at this context gemma keeps its caches by default)
    models = {"kept": common, "plain": common | {"keep_kv": False}, "other": common}
    result: dict[str, Any] = {}
    with running_gateway(models, max_running=1, engines={"llamacpp": {"binary": BINARY}}) as http:
        for name in ("kept", "plain"):
            first = one_token(http, name, prompt)  # a cold start and the prefill
            warm = one_token(http, name, prompt)  # the same prompt, cached in its slot
            one_token(http, "other")  # the swap
            after = one_token(http, name, prompt)
            result[name] = {"first_ms": round(first * 1000, 1), "warm_ms": round(warm * 1000, 1),
                            "after_swap_ms": round(after * 1000, 1)}  # fmt: skip
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--rounds", type=int, default=8)
    parser.add_argument("--prompt-tokens", type=int, default=4200)
    parser.add_argument("--wake-s", type=float, default=0.5)
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "swap.json"))
    args = parser.parse_args()
    if not (GGUF and BINARY):
        sys.exit("needs llama-server and gemma: source scripts/setup.sh")
    dropped: list[str] = []  # requests llama.cpp's router hung up on (each asked again)
    with tempfile.TemporaryDirectory(prefix="vramgate-swap-") as tmp:
        paths = copies(Path(tmp))
        keeping = {
            "gemma 32k, keep_kv: true": plain_and_kept(paths, args.rounds, True),
            "gemma 4k, default": plain_and_kept(paths, args.rounds, None, ["-c", "4096"]),
        }
        swaps = {
            "vramgate": keeping["gemma 32k, keep_kv: true"]["plain"],
            "router": summary(through_router(Path(tmp), args.rounds, dropped)),
            "by_hand": summary(by_hand(paths, args.rounds)),
        }
    if CHAT_GGUF:
        with tempfile.TemporaryDirectory(prefix="vramgate-swap-") as tmp:
            smol = copies(Path(tmp), CHAT_GGUF, "smollm2")
            keeping["SmolLM2 8k, default"] = plain_and_kept(smol, args.rounds, None)
    wakes = sleep_tier(args.rounds, args.wake_s)
    gateway_ms = [(w - args.wake_s) * 1000 for w in wakes]
    sleep = summary(wakes) | {
        "wake_knob_ms": args.wake_s * 1000,
        "gateway_ms_median": round(statistics.median(gateway_ms), 1),
    }
    gap = summary(readiness_gap(args.rounds * 2))
    kv = kv_after_swap(args.prompt_tokens)
    print(f"{'cold swap, 1 token':<24}{'median ms':>10}{'max ms':>10}")
    for name, row in swaps.items():
        print(f"{name:<24}{row['median_ms']:>10}{row['max_ms']:>10}")
    ours = swaps["vramgate"]["median_ms"]
    floor, router = swaps["by_hand"]["median_ms"], swaps["router"]["median_ms"]
    print(f"vramgate / by hand {ours / floor:.2f}, vramgate / router {ours / router:.2f}")
    if dropped:
        print(f"the router hung up on {len(dropped)} request(s), asked again: {dropped[0]}")
    swaps["router"]["dropped"] = dropped
    print(f"{'kept KV caches':<26}{'plain ms':>10}{'kept ms':>10}{'kept/plain':>12}")
    for name, pair in keeping.items():
        plain, kept = pair["plain"]["median_ms"], pair["kept"]["median_ms"]
        print(f"{name:<26}{plain:>10}{kept:>10}{pair['kept']['ratio']:>12}")
    print(
        f"sleep tier: wake {args.wake_s * 1000:.0f} ms by the knob, request to answer median "
        f"{sleep['median_ms']} ms (gateway {sleep['gateway_ms_median']} ms), "
        f"max {sleep['max_ms']}"
    )
    print(f"readiness seen {gap['median_ms']} ms after the engine was ready (max {gap['max_ms']})")
    for name, row in kv.items():
        print(f"{args.prompt_tokens}-token prompt, {name}: first {row['first_ms']} ms, "
              f"warm {row['warm_ms']} ms, after a swap {row['after_swap_ms']} ms")  # fmt: skip
    result = {"swaps": swaps, "keeping": keeping, "sleep": sleep, "kv": kv, "readiness_gap": gap,
              "rounds": args.rounds,
              "prompt_tokens": args.prompt_tokens, "when": time.strftime("%Y-%m-%dT%H:%M:%S"),
              "cpus": os.cpu_count()}  # fmt: skip
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"saved {args.out}")


if __name__ == "__main__":
    main()
