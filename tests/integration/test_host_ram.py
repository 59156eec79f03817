"""Host RAM placed like a GPU, with fake engines on the CPU that really hold what they say
(`--ram-mib`): one budget for CPU engines and sleepers, idle ones make way, busy ones drain, what
can never fit is refused at once, footprints are measured (PSS) and learned."""

from __future__ import annotations

import subprocess
import sys
import threading

import httpx
import pytest
import yaml

from tests.conftest import fake_cmd, wait_until
from tests.integration.test_gpu_memory import FAKE_VLLM
from vramgate.engines.vllm import NO_CPU_SLEEP
from vramgate.gpu.nvml import nvml_available
from vramgate.hostram import NO_GPU_NOTE


def cpu_model(mib: int, *knobs: str, **extra) -> dict:
    return {"engine": "command", "cmd": fake_cmd("--ram-mib", str(mib), *knobs), "device": "cpu",
            "ram_mib": mib + 60, **extra}  # fmt: skip


def ask(gw, model: str, tokens: int = 1) -> str:
    reply = gw.client.completions.create(model=model, prompt="x", max_tokens=tokens)
    return reply.choices[0].text


def test_cpu_engines_share_the_host_budget_and_make_way_for_each_other(gateway):
    models = {"a": cpu_model(300), "b": cpu_model(300), "huge": cpu_model(2000)}
    gw = gateway({"host_ram_mib": 600, "models": models})
    assert ask(gw, "a") == "tok0 "
    a = gw.model("a")
    assert a["ram_source"] == "measured" and 300 <= a["ram_mib"] < 450, a  # PSS, learned
    assert gw.status()["host_ram"]["models"] == {"a": a["ram_mib"]}
    assert ask(gw, "b") == "tok0 "  # a is idle: it makes way (two do not fit in 600)
    assert gw.model("a")["state"] == "stopped" and gw.model("b")["state"] == "ready"
    assert "stop a (host_ram" in gw.log()
    huge = gw.http.post("/v1/completions", json={"model": "huge", "prompt": "x"})
    assert huge.status_code == 507 and "host RAM" in huge.json()["error"]["message"]
    assert huge.json()["error"]["code"] == "insufficient_host_memory"  # not the GPU's code
    assert gw.model("b")["state"] == "ready"  # nothing was stopped for it
    metrics = gw.http.get("/metrics").text
    assert 'vramgate_host_ram_used_bytes{model="b"}' in metrics
    out = subprocess.run(
        [sys.executable, "-m", "vramgate", "ps", "--url", gw.url],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.splitlines()  # fmt: skip
    bar = next(line for line in out if line.startswith("RAM   ["))
    b_mib = gw.model("b")["ram_mib"]
    cells = bar[bar.index("[") + 1 : bar.index("]")]
    assert cells.startswith("a" * round(b_mib / 600 * 50) + ".") and len(cells) == 50, bar
    assert f"{b_mib}/600 MiB held by engines" in bar and bar.endswith("a=b"), bar


def test_without_a_gpu_models_run_on_the_cpu_counted_in_host_ram(gateway):
    """No GPU seen, none simulated: a model of no `device` (auto) runs on the CPU, its RAM
    measured and counted in host_ram; one that asks for cuda runs there too, saying so once."""
    if nvml_available():
        pytest.skip("this machine has a GPU: auto places on it")
    models = {"auto": {"engine": "command", "cmd": fake_cmd("--ram-mib", "200")},
              "cuda": {"engine": "command", "cmd": fake_cmd("--ram-mib", "100"),
                       "device": "cuda"}}  # fmt: skip
    gw = gateway({"models": models})
    # Nothing sizes a command engine before its first load: each first start is a discovery
    # run, alone in host RAM (the idle one makes way); once both are measured, both fit.
    for name in [*models, "auto"]:
        assert ask(gw, name) == "tok0 "
    auto, cuda = gw.model("auto"), gw.model("cuda")
    assert auto["device"] == cuda["device"] == "cpu" and auto["gpus"] == []
    assert auto["ram_source"] == "measured" and 200 <= auto["ram_mib"] < 350, auto
    assert cuda["ram_source"] == "measured" and 100 <= cuda["ram_mib"] < 250, cuda
    ram = gw.status()["host_ram"]
    assert ram["models"] == {"auto": auto["ram_mib"], "cuda": cuda["ram_mib"]}
    assert ram["used_mib"] == auto["ram_mib"] + cuda["ram_mib"]
    assert auto["notes"] == [] and cuda["notes"] == [NO_GPU_NOTE]
    assert gw.log().count(NO_GPU_NOTE) == 1
    engine = httpx.get(f"{gw.model('auto')['url']}/stats", timeout=5).json()
    assert engine["cuda_visible"] == ""  # it sees no GPU: what it holds is all host RAM
    out = subprocess.run(
        [sys.executable, "-m", "vramgate", "ps", "--url", gw.url],
        capture_output=True, text=True, timeout=60, check=True,
    ).stdout.splitlines()  # fmt: skip
    row = next(line for line in out if line.startswith("auto "))
    assert f"RAM {auto['ram_mib']} MiB measured" in row and " cpu " in row, out
    bar = next(line for line in out if line.startswith("RAM   ["))
    assert f"{ram['used_mib']}/{ram['budget_mib']} MiB held by engines" in bar, bar


def test_without_a_gpu_engines_are_started_for_the_cpu(gateway, tmp_path):
    """device auto where no GPU is seen: the engines' adapters are told the CPU, as for device
    cpu: transformers gets --device cpu and no continuous batching (its CPU cache would take
    ~14 GiB), vLLM no sleep mode (its CPU build refuses it), and says it cannot sleep."""
    if nvml_available():
        pytest.skip("this machine has a GPU: auto places on it")
    script = tmp_path / "engine"
    script.write_text(FAKE_VLLM.format(python=sys.executable, mib=0))
    script.chmod(0o755)
    weights = tmp_path / "weights"
    weights.mkdir()
    engines = {"transformers": {"binary": str(script)}, "vllm": {"binary": str(script)}}
    models = {"tf": {"engine": "transformers", "source": str(weights)},
              "vl": {"engine": "vllm", "source": str(weights), "sleep": 1}}  # fmt: skip
    gw = gateway({"engines": engines, "models": models})
    for name in models:
        ask(gw, name)
    argv = {n: next(x for x in gw.engine_log(n).splitlines() if "argv:" in x) for n in models}
    assert "--device cpu" in argv["tf"] and "--continuous-batching" not in argv["tf"], argv
    assert "--enable-sleep-mode" not in argv["vl"], argv
    assert gw.model("vl")["notes"] == [NO_CPU_SLEEP]


def test_a_busy_cpu_engine_finishes_then_makes_way(gateway):
    models = {"a": cpu_model(300, "--tokens-per-s", "20"), "b": cpu_model(300)}
    gw = gateway({"host_ram_mib": 600, "gpus": {"drain_after": 0}, "models": models})
    ask(gw, "a")
    streamed: list[str] = []

    def stream() -> None:
        chunks = gw.client.completions.create(model="a", prompt="x", max_tokens=20, stream=True)
        streamed.extend(c.choices[0].text for c in chunks if c.choices)

    worker = threading.Thread(target=stream)
    worker.start()
    assert wait_until(lambda: gw.model("a")["in_flight"] == 1, 5)
    assert ask(gw, "b") == "tok0 "  # waits for a's stream, which is never cut
    worker.join(20)
    assert len([t for t in streamed if t]) == 20
    assert "drain a" in gw.log() and gw.model("a")["state"] == "stopped"


def test_sleepers_count_against_the_budget_cpu_engines_share(gateway):
    """A sleeper holds host RAM (measured once asleep); a CPU engine that needs it stops it."""
    gpu = {"simulate_mib": [8000], "reserve_mib": 0}
    sleepy = {"engine": "command", "vram_mib": 6000, "sleep": 1,
              "cmd": fake_cmd("--vram-mib", "6000", "--sleep-vram-mib", "100",
                              "--sleep-host-mib", "300")}  # fmt: skip
    # c claims 6800 MiB until measured (its hint), and holds 100.
    models = {"g1": sleepy, "g2": sleepy, "c": cpu_model(100, ram_mib=6800)}
    gw = gateway({"gpus": gpu, "host_ram_mib": 7000, "models": models})
    ask(gw, "g1")
    ask(gw, "g2")  # g1 sleeps (its weights "in host RAM": about 350 MiB, measured)
    assert gw.model("g1")["state"] == "sleeping"
    asleep = gw.status()["host_ram"]["models"]["g1"]
    assert 300 <= asleep < 500
    ask(gw, "c")  # 6800 + the sleeper's 350 > 7000: the sleeper stops
    assert gw.model("g1")["state"] == "stopped" and gw.model("c")["state"] == "ready"
    assert "stop g1 (host_ram" in gw.log()


def test_a_cpu_engine_nothing_sizes_is_measured_alone_and_again(gateway):
    """No hint and no estimate (a `command` engine): before, it needed no room at all and was
    never measured after its load. Now its start is a discovery run (the idle engine in host
    RAM makes way), it is measured at its load and again after its first requests (it grows),
    and what it was measured to hold makes way for the next start (issue 24, defect 10)."""
    unknown = {"engine": "command", "device": "cpu",
               "cmd": fake_cmd("--ram-mib", "200", "--ram-grow-mib", "250")}  # fmt: skip
    gw = gateway({"host_ram_mib": 700, "models": {"a": cpu_model(300), "u": unknown}})
    ask(gw, "a")
    assert ask(gw, "u") == "tok0 "
    assert gw.model("a")["state"] == "stopped" and "stop a (host_ram" in gw.log()
    u = gw.model("u")
    assert u["ram_source"] == "measured" and u["ram_mib"] >= 200, u
    assert wait_until(lambda: gw.model("u")["ram_mib"] >= 450, 10), gw.model("u")
    ask(gw, "a")  # 360 + 450 > 700: u makes way
    assert gw.model("u")["state"] == "stopped" and gw.model("a")["state"] == "ready"


def test_an_engine_measured_above_its_hint_makes_idle_ones_go(gateway):
    """`liar` claims 100 MiB and holds 400: placed by its hint beside b, the host is over its
    budget once it is measured, and the idle b goes at the next tick."""
    models = {"b": cpu_model(300), "liar": cpu_model(400, ram_mib=100)}
    gw = gateway({"host_ram_mib": 700, "models": models})
    ask(gw, "b")
    ask(gw, "liar")
    assert wait_until(lambda: gw.model("b")["state"] == "stopped", 10), gw.log()[-2000:]
    assert "host RAM over 700 MiB" in gw.log() and gw.model("liar")["state"] == "ready"


def test_a_reload_applies_the_host_and_kv_budgets_and_says_what_needs_a_restart(gateway):
    """host_ram_mib lowered by a reload: taken at once, the idle CPU engine over it goes;
    kv_disk_mib too; a changed cluster is said to need a restart (issue 24, defect 16)."""
    config = {"host_ram_mib": 1000, "models": {"a": cpu_model(300)}}
    gw = gateway(config)
    ask(gw, "a")
    config |= {"host_ram_mib": 200, "kv_disk_mib": 64,
               "cluster": {"ray": {"address": "127.0.0.1:1"}}}  # fmt: skip
    gw.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
    summary = gw.http.post("/admin/reload").json()
    assert summary["applied"] == ["host_ram_mib", "kv_disk_mib"], summary
    assert summary["restart_required"] == ["cluster"], summary
    assert gw.status()["host_ram"]["budget_mib"] == 200
    assert wait_until(lambda: gw.model("a")["state"] == "stopped", 10)
    assert "host RAM over 200 MiB" in gw.log() and "restart_required cluster" in gw.log()
