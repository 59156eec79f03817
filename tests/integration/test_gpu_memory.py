"""GPU memory on a simulated GPU: discovery runs, packing, LRU eviction, learned footprints."""

from __future__ import annotations

import json
import subprocess
import sys
import threading

import httpx

from tests.conftest import fake_cmd, stream_beside, wait_until
from tests.unit.test_estimate import make_gguf


def engine(uses_mib: int, *knobs: str, **extra) -> dict:
    """A fake engine that reports `uses_mib` on the simulated GPU once loaded."""
    return {"engine": "command", "cmd": fake_cmd("--vram-mib", str(uses_mib), *knobs), **extra}


def gpus(*totals: int) -> dict:
    return {"simulate_mib": list(totals), "reserve_mib": 512}


def states(gw) -> dict[str, str]:
    return {m["name"]: m["state"] for m in gw.status()["models"]}


def ask(gw, name: str) -> None:
    reply = gw.client.completions.create(model=name, prompt="x", max_tokens=1)
    assert reply.choices[0].text == "tok0 "


def events(gw) -> list[str]:
    return [e["message"] for e in gw.status()["events"]]


def test_discovery_run_for_an_unknown_model(gateway):
    """An unknown footprint: the others on the GPU stop, it runs alone, its use is saved."""
    gw = gateway(
        {"gpus": gpus(10_000), "models": {"a": engine(3000, vram_mib=3000), "u": engine(2000)}}
    )
    ask(gw, "a")
    ask(gw, "u")
    assert states(gw) == {"a": "stopped", "u": "ready"}
    assert any(m.startswith("stop a (discovery") for m in events(gw))
    saved = json.loads((gw.state_dir / "footprints.json").read_text())
    assert [v["loads_mib"] for k, v in saved.items() if k.startswith("u@")] == [[2000]]
    u = gw.model("u")
    assert (u["footprint_mib"], u["footprint_source"], u["gpus"]) == (2000, "measured", [0])


def test_known_model_runs_without_discovery_and_smaller_one_fits_beside(gateway):
    """Once measured, a model starts beside others that fit: no discovery, no eviction."""
    gw = gateway({"gpus": gpus(10_000), "models": {"a": engine(4000), "b": engine(3000)}})
    ask(gw, "a")  # discovery (nothing to stop)
    ask(gw, "b")  # discovery: stops a
    ask(gw, "a")  # known now: 4000 + 3000 + 512 fit in 10000
    assert states(gw) == {"a": "ready", "b": "ready"}
    stops = [m for m in events(gw) if m.startswith("stop")]
    assert len(stops) == 1 and stops[0].startswith("stop a (discovery")
    memory = gw.status()["gpus"][0]
    assert (memory["used_mib"], memory["free_mib"], memory["reserved_mib"]) == (7000, 3000, 512)


def test_model_that_does_not_fit_evicts_the_least_recently_used(gateway):
    """With hints, three 4000 MiB models on 10000 MiB: the least recently used one makes way."""
    models = {n: engine(4000, vram_mib=4000) for n in ("a", "b", "c")}
    gw = gateway({"gpus": gpus(10_000), "models": models})
    for name in ("a", "b", "a", "c"):
        ask(gw, name)
    assert states(gw) == {"a": "ready", "b": "stopped", "c": "ready"}
    assert any(m.startswith("stop b (lru") and "to start c" in m for m in events(gw))


def test_idle_engine_stopped_by_ttl_frees_its_memory(gateway):
    gw = gateway({"gpus": gpus(10_000), "models": {"a": engine(4000, vram_mib=4000, ttl=1)}})
    ask(gw, "a")
    assert gw.status()["gpus"][0]["used_mib"] == 4000
    assert wait_until(lambda: states(gw)["a"] == "stopped", 5)
    assert gw.status()["gpus"][0]["used_mib"] == 0


def test_busy_engine_is_not_evicted_mid_stream(gateway):
    """The model that needs room waits for the stream to end, then the engine makes way."""
    models = {
        "a": engine(6000, "--tokens-per-s", "10", vram_mib=6000),
        "b": engine(6000, vram_mib=6000),
    }
    gw = gateway({"gpus": gpus(10_000), "models": models})
    text, stream_end, other_text, other_at, seen = stream_beside(gw, "a", "b")
    assert seen == {"ready"}  # never stopped under the stream (the engine dies at SIGTERM)
    assert text.endswith("tok7 ")
    assert other_text == "tok0 "
    assert other_at >= stream_end
    assert states(gw) == {"a": "stopped", "b": "ready"}


def test_pinned_engine_is_never_evicted(gateway):
    """A pinned model is up from the start; a model needing its room waits, then gets 503."""
    models = {"p": engine(5000, vram_mib=5000, pinned=True), "x": engine(6000, vram_mib=6000)}
    gw = gateway({"gpus": gpus(10_000), "defaults": {"evict_wait": 1}, "models": models})
    assert wait_until(lambda: states(gw)["p"] == "ready", 10)
    resp = gw.http.post("/v1/completions", json={"model": "x", "prompt": "x"})
    assert resp.status_code == 503
    assert "held by engines that cannot make way (p: pinned)" in resp.json()["error"]["message"]
    assert states(gw) == {"p": "ready", "x": "failed"}


def test_hint_lower_than_reality_is_corrected_by_measurement(gateway):
    """A model using more than its hint is caught (simulated OOM), retried with room, learned."""
    models = {"a": engine(4000, vram_mib=4000), "h": engine(6000, vram_mib=1000)}
    gw = gateway({"gpus": gpus(9000), "models": models})
    ask(gw, "a")
    ask(gw, "h")  # hint 1000 fits beside a; it reports 6000: out of memory, retried alone
    assert states(gw) == {"a": "stopped", "h": "ready"}
    assert any(m.startswith("h out of memory at start") for m in events(gw))
    h = gw.model("h")
    assert (h["footprint_mib"], h["footprint_source"]) == (6000, "measured")
    ask(gw, "a")  # placement now uses 6000: a cannot join h, so h (idle) makes way
    assert states(gw) == {"a": "ready", "h": "stopped"}


def test_buffers_the_engine_logged_measure_it_where_the_gpu_cannot(gateway):
    """No per-process reading (it never reports use): llama.cpp's logged buffer sizes serve."""
    logged = [
        "load_tensors:        CUDA0 model buffer size =  1500.00 MiB",
        "llama_kv_cache:      CUDA0 KV buffer size =   300.00 MiB",
        "llama_context:  CUDA_Host compute buffer size =    99.00 MiB",
    ]
    cmd = fake_cmd(*(arg for line in logged for arg in ("--log-line", line)))
    gw = gateway({"gpus": gpus(10_000), "models": {"l": {"engine": "command", "cmd": cmd}}})
    ask(gw, "l")
    l_status = gw.model("l")
    assert (l_status["footprint_mib"], l_status["footprint_source"]) == (1928, "measured")
    assert l_status["used_mib"] == 1928  # 1800 logged on CUDA0 + one CUDA context (128)


def test_footprints_survive_a_gateway_restart(gateway, tmp_path):
    config = {
        "state_dir": str(tmp_path / "shared-state"),
        "gpus": gpus(10_000),
        "models": {"u": engine(2500)},
    }
    first = gateway(config)
    ask(first, "u")
    first.stop()
    second = gateway(config)
    u = second.model("u")
    assert (u["state"], u["footprint_mib"], u["footprint_source"]) == ("stopped", 2500, "measured")


def test_too_big_model_is_refused_and_nothing_is_evicted(gateway):
    models = {"a": engine(3000, vram_mib=3000), "z": engine(100, vram_mib=20_000)}
    gw = gateway({"gpus": gpus(10_000), "models": models})
    ask(gw, "a")
    resp = gw.http.post("/v1/completions", json={"model": "z", "prompt": "x"})
    assert resp.status_code == 507
    error = resp.json()["error"]
    assert error["code"] == "insufficient_gpu_memory"
    assert "needs 20000 MiB but the largest GPU has 10000 MiB" in error["message"]
    assert states(gw) == {"a": "ready", "z": "failed"}


def test_two_gpus_a_model_goes_where_it_fits(gateway):
    models = {"a": engine(6000, vram_mib=6000), "b": engine(6000, vram_mib=6000)}
    gw = gateway({"gpus": gpus(8000, 8000), "models": models})
    ask(gw, "a")
    ask(gw, "b")
    placed = {m["name"]: (m["state"], m["gpus"]) for m in gw.status()["models"]}
    assert placed == {"a": ("ready", [0]), "b": ("ready", [1])}
    assert [g["used_mib"] for g in gw.status()["gpus"]] == [6000, 6000]


def test_tensor_parallel_model_is_split_over_gpus_with_room(gateway):
    """`gpus: 2`: half of its footprint on each of two GPUs, which it sees as its only ones."""
    models = {
        "a": engine(6000, vram_mib=6000),
        "tp": engine(8000, vram_mib=8000, gpus=2),
    }
    gw = gateway({"gpus": gpus(8000, 8000, 8000), "models": models})
    ask(gw, "a")
    ask(gw, "tp")
    status = {m["name"]: m for m in gw.status()["models"]}
    assert status["tp"]["gpus"] == [1, 2]
    assert [g["used_mib"] for g in gw.status()["gpus"]] == [6000, 4000, 4000]
    engine_stats = httpx.get(f"http://127.0.0.1:{status['tp']['port']}/stats").json()
    assert engine_stats["cuda_visible"] == "1,2"
    # Too big for two GPUs even empty: refused at once, nothing stopped.
    gw2 = gateway({"gpus": gpus(8000, 8000), "models": {"huge": engine(1, vram_mib=16000, gpus=2)}})
    resp = httpx.post(f"{gw2.url}/v1/completions", json={"model": "huge", "prompt": "x"})
    assert resp.status_code == 507
    assert "8000 MiB on each of 2 GPUs" in resp.json()["error"]["message"]


def test_ps_shows_footprints_and_a_bar_per_gpu(gateway):
    """`vramgate ps` lists each model's GPU and footprint, and draws each GPU's memory."""
    models = {"a": engine(4000, vram_mib=4000), "b": engine(3000, vram_mib=2000)}
    gw = gateway({"gpus": gpus(10_000), "models": models})
    ask(gw, "a")
    ask(gw, "b")
    out = subprocess.run(
        [sys.executable, "-m", "vramgate", "ps", "--url", gw.url],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.splitlines()  # fmt: skip
    assert out[1].split()[:6] == ["a", "command", "ready", "0", "4000", "MiB"]
    assert out[2].split()[:7] == ["b", "command", "ready", "0", "3000", "MiB", "measured"]
    bar = next(line for line in out if line.startswith("GPU 0 ["))
    cells = bar[bar.index("[") + 1 : bar.index("]")]
    # 50 cells for 10000 MiB: a 4000 -> 20, b 3000 -> 15, free 2488 -> 12, reserve 512 -> 3.
    assert cells == "a" * 20 + "b" * 15 + "." * 12 + ":" * 3
    assert "7000/10000 MiB used, 512 reserved (simulated)" in bar
    assert bar.endswith("a=a b=b")


def test_loads_on_one_gpu_are_serial_on_two_gpus_parallel(gateway):
    """Two cold models at once: one after the other on one GPU, side by side on two."""

    def start_times(gw) -> dict[str, tuple[float, float]]:
        times: dict[str, list[float]] = {}
        for e in gw.status()["events"]:
            if e["kind"] in ("start", "ready"):
                times.setdefault(e["model"], []).append(e["time"])
        return {name: (t[0], t[1]) for name, t in times.items()}

    for totals, serial in (((10_000,), True), ((6000, 6000), False)):
        models = {n: engine(4000, "--load-delay", "1", vram_mib=4000) for n in ("a", "b")}
        gw = gateway({"gpus": gpus(*totals), "models": models})
        threads = [threading.Thread(target=ask, args=(gw, n)) for n in ("a", "b")]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        (a_start, a_ready), (b_start, b_ready) = sorted(start_times(gw).values())
        assert (b_start >= a_ready) is serial, (totals, a_start, a_ready, b_start, b_ready)


def test_estimate_spares_a_discovery_run_until_measured(gateway, tmp_path):
    """A model with readable metadata starts beside others on its estimate, then is measured."""
    gguf = make_gguf(tmp_path / "small.gguf")
    models = {"a": engine(3000, vram_mib=3000), "e": engine(900, source=str(gguf))}
    gw = gateway({"gpus": gpus(10_000), "models": models})
    e = gw.model("e")
    assert e["footprint_source"] == "estimate" and 130 < e["footprint_mib"] < 200
    ask(gw, "a")
    ask(gw, "e")
    assert states(gw) == {"a": "ready", "e": "ready"}  # no discovery run stopped a
    e = gw.model("e")
    assert (e["footprint_mib"], e["footprint_source"]) == (900, "measured")


def test_refuse_policy_refuses_unknown_footprints(gateway):
    models = {"u": engine(1000)}
    gw = gateway({"gpus": gpus(10_000) | {"unknown_footprint": "refuse"}, "models": models})
    resp = gw.http.post("/v1/completions", json={"model": "u", "prompt": "x"})
    assert resp.status_code == 507
    assert "gpus.unknown_footprint is 'refuse'; set vram_mib" in resp.json()["error"]["message"]


def test_estimate_command_prints_the_parts(tmp_path):
    gguf = make_gguf(tmp_path / "small.gguf")
    config = tmp_path / "v.yaml"
    config.write_text(f"models:\n  s: {{engine: llamacpp, source: {gguf}, args: [-c, '4096']}}\n")
    out = subprocess.run(
        [sys.executable, "-m", "vramgate", "estimate", "s", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    # Its KV caches are kept by default (the full sliding cache adds 7.5 MiB, 5%): 12 x 2 MiB.
    assert lines[0] == "s: GGUF gemma3, full sliding-window cache (--swa-full), context 4096"
    assert lines[1].split() == ["weights", "3.0", "MiB"]
    assert lines[2].split() == ["KV", "cache", "24.0", "MiB"]
    assert "placement uses" in lines[-1]
    text = config.read_text().replace("'4096']}", "'4096'], keep_kv: false}")
    config.write_text(text)
    out = subprocess.run(
        [sys.executable, "-m", "vramgate", "estimate", "s", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    lines = out.stdout.splitlines()
    assert lines[0] == "s: GGUF gemma3, context 4096"
    # 2 global layers x 2 MiB, 10 sliding x 2560 cells (4 slots' windows and a ubatch): 1.25
    assert lines[2].split() == ["KV", "cache", "16.5", "MiB"]
    missing = subprocess.run(
        [sys.executable, "-m", "vramgate", "estimate", "nope", "--config", str(config)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert missing.returncode == 1 and "no model 'nope'" in missing.stderr


FAKE_VLLM = """#!{python}
# Stands in for `vllm serve`: prints its command line, then runs the fake engine on its port.
import sys
argv = sys.argv[1:]
print("fake vllm argv:", " ".join(argv), flush=True)
port = argv[argv.index("--port") + 1]
from vramgate.testing.fake_engine import main
main(["--port", port, "--vram-mib", "{mib}"])
"""


def test_vllm_is_told_its_budget_on_its_gpu(gateway, tmp_path):
    """The vLLM adapter passes --gpu-memory-utilization = footprint / GPU total."""
    script = tmp_path / "vllm"
    script.write_text(FAKE_VLLM.format(python=sys.executable, mib=2500))
    script.chmod(0o755)
    gw = gateway(
        {
            "gpus": gpus(10_000),
            "engines": {"vllm": {"binary": str(script)}},
            "models": {"q": {"engine": "vllm", "source": "Org/Model", "vram_mib": 2500}},
        }
    )
    ask(gw, "q")
    line = next(x for x in gw.engine_log("q").splitlines() if x.startswith("fake vllm argv:"))
    assert line.endswith("serve Org/Model --host 127.0.0.1 --port " + str(gw.model("q")["port"])
                         + " --served-model-name q --gpu-memory-utilization 0.2500")  # fmt: skip


def test_frequency_eviction_keeps_the_model_asked_for_most(gateway):
    """gpus.eviction: frequency: the least often asked for goes, although used more recently."""
    models = {n: engine(4000, vram_mib=4000) for n in ("a", "b", "c")}
    gw = gateway({"gpus": gpus(9000) | {"eviction": "frequency"}, "models": models})
    for name in ("a", "a", "a", "b"):
        ask(gw, name)
    ask(gw, "c")
    assert states(gw) == {"a": "ready", "b": "stopped", "c": "ready"}
    lru = gateway({"gpus": gpus(9000), "models": models})
    for name in ("a", "a", "a", "b", "c"):
        ask(lru, name)
    assert states(lru) == {"a": "stopped", "b": "ready", "c": "ready"}


GREEDY_VLLM = """#!{python}
# Stands in for `vllm serve` on a {total} MiB GPU: it takes --gpu-memory-utilization of it
# (0.9 when not told), as vLLM does.
import sys
argv = sys.argv[1:]
flag = "--gpu-memory-utilization"
share = float(argv[argv.index(flag) + 1]) if flag in argv else 0.9
print("fake vllm share:", share, flush=True)
from vramgate.testing.fake_engine import main
main(["--port", argv[argv.index("--port") + 1], "--vram-mib", str(int(share * {total}))])
"""


def test_a_self_sizing_engines_footprint_is_learned_per_gpu_size(gateway, tmp_path):
    """vLLM left to itself takes 90% of its GPU: learned on a 16000 MiB GPU, that is 14400,
    no footprint for an 8000 MiB one (it was refused there with a 507). Each GPU size learns
    its own; on the two together, the least is told to either."""
    (tmp_path / "model").mkdir()  # no metadata: nothing estimates it

    def config(*totals: int) -> dict:
        script = tmp_path / f"vllm-{max(totals)}"
        script.write_text(GREEDY_VLLM.format(python=sys.executable, total=max(totals)))
        script.chmod(0o755)
        return {"state_dir": str(tmp_path / "state"), "gpus": gpus(*totals),
                "engines": {"vllm": {"binary": str(script)}},
                "models": {"v": {"engine": "vllm", "source": str(tmp_path / "model")}}}  # fmt: skip

    big = gateway(config(16_000))
    ask(big, "v")
    assert (big.model("v")["footprint_mib"], big.model("v")["footprint_source"]) == (
        14_400, "measured")  # fmt: skip
    big.stop()
    small = gateway(config(8000))
    assert small.model("v")["footprint_source"] == "unknown"  # not 14400 on this GPU
    ask(small, "v")  # a discovery run here
    assert small.model("v")["footprint_mib"] == 7200
    small.stop()
    both = gateway(config(8000, 16_000))
    assert both.model("v")["footprint_mib"] == 7200
    ask(both, "v")
    share = [x for x in both.engine_log("v").splitlines() if x.startswith("fake vllm share:")]
    assert share and float(share[-1].split()[-1]) in (0.9, 0.45), share  # 7200 of 8000 or 16000
