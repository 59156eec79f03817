"""The sleep tier end to end with fake engines on a simulated GPU: engines put to sleep rather
than stopped when room is needed, woken by the next request, through vLLM's and SGLang's APIs."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import httpx

from tests.conftest import fake_cmd, wait_until

# One 8000 MiB GPU: two 6000 MiB models never fit at once.
GPU = {"simulate_mib": [8000], "reserve_mib": 0}
KNOBS = ("--vram-mib", "6000", "--sleep-vram-mib", "200", "--sleep-host-mib", "16")

# Stand-ins for `vllm` and `python3 -m sglang.launch_server`: they print the command line and
# environment the gateway gave them, then run the fake engine (whose routes are both APIs').
STAND_IN = """#!{python}
import os, sys
argv = sys.argv[1:]
print("stand-in argv:", " ".join(argv), flush=True)
print("stand-in VLLM_SERVER_DEV_MODE=" + os.environ.get("VLLM_SERVER_DEV_MODE", ""), flush=True)
from vramgate.testing.fake_engine import main
main(["--port", argv[argv.index("--port") + 1], *{knobs!r}])
"""


def sleepy(*knobs: str, level: int = 1) -> dict:
    cmd = fake_cmd(*KNOBS, "--wake-s", "0.2", *knobs)
    return {"engine": "command", "cmd": cmd, "vram_mib": 6000, "sleep": level}


def ask(gw, model: str) -> None:
    reply = gw.client.completions.create(model=model, prompt="x", max_tokens=2)
    assert reply.choices[0].text


def engine_stats(gw, model: str) -> dict:
    return httpx.get(gw.model(model)["url"] + "/stats", timeout=5).json()


def test_sleep_over_stop_then_wake_on_request(gateway):
    gw = gateway({"gpus": GPU, "host_ram_mib": 20_000, "models": {"a": sleepy(), "b": sleepy()}})
    ask(gw, "a")
    pid = gw.model("a")["pid"]
    ask(gw, "b")  # a makes way by sleeping: its process stays, its GPU memory goes
    a = gw.model("a")
    assert a["state"] == "sleeping" and a["pid"] == pid and a["asleep"]
    assert 16 <= a["host_mib"] < 1000, a  # its process tree's resident memory, measured
    assert [g["used_mib"] for g in gw.status()["gpus"]] == [6200]  # b + a's residue
    assert gw.status()["host_ram"]["sleeping_mib"] == a["host_mib"]
    ask(gw, "a")  # wakes where it sleeps (b, in turn, sleeps)
    a = gw.model("a")
    assert a["state"] == "ready" and a["pid"] == pid and a["starts"] == 1
    assert a["wakes"] == 1 and 0.2 <= a["wake_s"] < 2.0
    assert gw.model("b")["state"] == "sleeping"
    assert engine_stats(gw, "a")["sleep"] == {"asleep": False, "level": 1, "sleeps": 1, "wakes": 1}
    log = gw.log()
    assert "sleep a (lru to start b)" in log and "a woke in" in log
    metrics = gw.http.get("/metrics").text
    assert 'vramgate_model_state{model="b",state="sleeping"} 1.0' in metrics
    assert 'vramgate_sleeping_host_bytes{model="b"}' in metrics


def test_stop_when_host_ram_does_not_allow(gateway):
    gw = gateway({"gpus": GPU, "host_ram_mib": 10, "models": {"a": sleepy(), "b": sleepy()}})
    ask(gw, "a")
    ask(gw, "b")
    assert gw.model("a")["state"] == "stopped"
    assert "stop a (lru, idle" in gw.log() and "sleep a" not in gw.log()


def test_sleepers_stop_least_recently_used_first_under_host_ram_pressure(gateway):
    """The first sleep is charged its estimate (the 6000 MiB footprint at level 1), later ones
    what was measured (a python process: over 20 MiB). With room for one estimate and 20 MiB,
    c's start stops the older sleeper so that b may sleep."""
    models = {"a": sleepy(), "b": sleepy(), "c": sleepy()}
    gw = gateway({"gpus": GPU, "host_ram_mib": 6020, "models": models})
    ask(gw, "a")
    ask(gw, "b")
    assert gw.model("a")["state"] == "sleeping"
    ask(gw, "c")
    states = {m["name"]: m["state"] for m in gw.status()["models"]}
    assert states == {"a": "stopped", "b": "sleeping", "c": "ready"}
    assert "stop a (host_ram, idle" in gw.log()


def test_a_busy_engine_is_never_put_to_sleep(gateway):
    """b needs a's room while a streams: a finishes its stream, then sleeps."""
    models = {"a": sleepy("--tokens-per-s", "20"), "b": sleepy()}
    gpus = {**GPU, "drain_after": 0}  # drained at once, not after its turn
    gw = gateway({"gpus": gpus, "host_ram_mib": 20_000, "models": models})
    ask(gw, "a")
    tokens: list[str] = []

    def stream() -> None:
        chunks = gw.client.completions.create(model="a", prompt="x", max_tokens=20, stream=True)
        tokens.extend(c.choices[0].text for c in chunks if c.choices)

    streaming = threading.Thread(target=stream)
    streaming.start()
    assert wait_until(lambda: gw.model("a")["in_flight"] == 1, 5)
    ask(gw, "b")  # waits for a to drain
    streaming.join(20)
    assert len([t for t in tokens if t]) == 20  # the stream was never cut
    assert gw.model("a")["state"] == "sleeping" and gw.model("b")["state"] == "ready"
    assert "drain a" in gw.log()


def test_a_wake_that_fails_falls_back_to_a_restart(gateway):
    gw = gateway({"gpus": GPU, "host_ram_mib": 20_000,
                  "models": {"a": sleepy("--wake-fails"), "b": sleepy()}})  # fmt: skip
    ask(gw, "a")
    pid = gw.model("a")["pid"]
    ask(gw, "b")
    assert gw.model("a")["state"] == "sleeping"
    ask(gw, "a")  # the wake answers 500: the engine is replaced, the request still served
    a = gw.model("a")
    assert a["state"] == "ready" and a["pid"] != pid and a["starts"] == 2
    assert "a did not wake" in gw.log()


def test_idle_engines_sleep_after_their_time_and_then_stop_at_their_ttl(gateway):
    gw = gateway({"gpus": GPU, "host_ram_mib": 20_000,
                  "models": {"a": sleepy() | {"sleep_after": 0.5, "ttl": 2.5}}})  # fmt: skip
    ask(gw, "a")
    assert wait_until(lambda: gw.model("a")["state"] == "sleeping", 5)
    assert "sleep a (sleep_after idle" in gw.log()
    assert wait_until(lambda: gw.model("a")["state"] == "stopped", 5)
    ask(gw, "a")  # and starts again


def test_vllm_and_sglang_sleep_apis(gateway, tmp_path):
    """The vLLM adapter starts it with --enable-sleep-mode and VLLM_SERVER_DEV_MODE=1 and calls
    /sleep?level=2 then /wake_up, /collective_rpc reload_weights, /reset_prefix_cache; the SGLang
    adapter starts it with the memory saver and calls release/resume memory occupation."""
    script = tmp_path / "engine"
    script.write_text(STAND_IN.format(python=sys.executable, knobs=KNOBS))
    script.chmod(0o755)
    common = {"vram_mib": 6000, "source": "org/model"}
    gw = gateway(
        {
            "gpus": GPU,
            "host_ram_mib": 20_000,
            "engines": {"vllm": {"binary": str(script)}, "sglang": {"binary": str(script)}},
            "models": {
                "v": common | {"engine": "vllm", "sleep": 2},
                "s": common | {"engine": "sglang", "sleep": 1},
            },
        }
    )
    ask(gw, "v")
    ask(gw, "s")  # v sleeps (level 2)
    ask(gw, "v")  # v wakes, s sleeps
    ask(gw, "s")  # s wakes
    assert gw.model("v")["wakes"] == 1 and gw.model("s")["wakes"] == 1
    v_log, s_log = gw.engine_log("v"), gw.engine_log("s")
    assert "--enable-sleep-mode" in v_log and "VLLM_SERVER_DEV_MODE=1" in v_log
    assert "asleep (level 2)" in v_log and "collective_rpc reload_weights" in v_log
    assert "--enable-memory-saver --enable-weights-cpu-backup" in s_log
    assert "asleep (level 1)" in s_log
    assert Path(script).exists()


def test_sleeping_to_make_room_ages_frequency_eviction(gateway):
    """gpus.eviction: frequency is GreedyDual: each engine that makes way raises the floor
    later requests count from, so that old popularity fades. Evictions by sleep age it as stops
    do: a, asked for five times long ago, goes once b and c have been asked for in turn since;
    were sleeps not aging it, a would stay for ever and b and c take each other's room."""
    knobs = ("--vram-mib", "4000", "--sleep-vram-mib", "200", "--sleep-host-mib", "16")
    model = {"engine": "command", "cmd": fake_cmd(*knobs), "vram_mib": 4000, "sleep": 1}
    gpus = {"simulate_mib": [9000], "reserve_mib": 0, "eviction": "frequency"}
    models = {"a": model, "b": model, "c": model}
    gw = gateway({"gpus": gpus, "host_ram_mib": 20_000, "models": models})
    for name in ("a",) * 5 + ("b", "c", "b", "c", "b"):
        ask(gw, name)
    assert gw.model("a")["state"] == "ready"  # 5 against b's and c's aged counts: still first
    ask(gw, "c")
    states = {n: gw.model(n)["state"] for n in ("a", "b", "c")}
    assert states == {"a": "sleeping", "b": "ready", "c": "ready"}, states
