"""End to end with the real engine: llama-server built from source serving gemma 3 270M."""

from __future__ import annotations

import os
import shutil
import signal
from pathlib import Path

import pytest

from tests.conftest import pid_alive, wait_until
from vramgate.gpu.logged import logged_buffers

GGUF = os.environ.get("VRAMGATE_DEFAULT_GGUF", "")
BINARY = os.environ.get("VRAMGATE_ENGINES__LLAMACPP__BINARY") or shutil.which("llama-server") or ""


def _require_e2e() -> None:
    missing = [what for what, path in (("GGUF", GGUF), ("llama-server", BINARY)) if not path]
    missing += [p for p in (GGUF, BINARY) if p and not Path(p).exists()]
    if not missing:
        return
    why = f"needs the gemma GGUF and llama-server (run scripts/setup.sh); missing: {missing}"
    if os.environ.get("VRAMGATE_REQUIRE_E2E"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture
def gemma(gateway):
    """A gateway started with no config file: `vramgate serve --model gemma=FILE.gguf`."""
    _require_e2e()
    return gateway({}, "--model", f"gemma={GGUF}")


def test_chat_through_llama_server(gemma):
    """A cold chat request starts llama-server and returns generated text."""
    reply = gemma.client.chat.completions.create(
        model="gemma",
        messages=[{"role": "user", "content": "Say hello."}],
        max_tokens=8,
        temperature=0,
    )
    assert reply.choices[0].message.content
    assert reply.usage and 0 < reply.usage.completion_tokens <= 8
    assert gemma.model("gemma")["engine"] == "llamacpp"


def test_llama_server_buffer_sizes_parse(gateway):
    """At -lv 4 llama-server logs its buffers; they parse as vramgate reads them (on a GPU,
    the device buffers measure its use where NVML cannot)."""
    _require_e2e()
    model = {"engine": "llamacpp", "source": GGUF, "args": ["-lv", "4", "-c", "4096"]}
    gw = gateway({"models": {"g": model}})
    gw.client.completions.create(model="g", prompt="Hi", max_tokens=2)
    buffers = logged_buffers(gw.engine_log("g").splitlines(), gpu_only=False)
    weights = sum(mib for kind, mib in buffers.items() if kind.endswith(" model"))
    assert 200 < weights < 300, buffers  # gemma 3 270M Q4_K_M: about 241 MiB of tensors
    assert any(kind.endswith(" KV") for kind in buffers), buffers


def test_streaming_chat_through_llama_server(gemma):
    """Streamed tokens from llama-server arrive as several chunks and end cleanly."""
    stream = gemma.client.chat.completions.create(
        model="gemma",
        messages=[{"role": "user", "content": "Count to five."}],
        max_tokens=12,
        stream=True,
        temperature=0,
    )
    pieces = [
        c.choices[0].delta.content for c in stream if c.choices and c.choices[0].delta.content
    ]
    assert len(pieces) >= 3
    assert "".join(pieces).strip()


def test_gateway_killed_leaves_no_llama_server(gemma):
    """SIGKILL of the gateway takes llama-server down with it."""
    gemma.http.post("/admin/models/gemma/load")
    pid = gemma.model("gemma")["pid"]
    assert pid_alive(pid)
    gemma.proc.send_signal(signal.SIGKILL)
    gemma.proc.wait(10)
    assert wait_until(lambda: not pid_alive(pid), 10)


def test_completions_through_llama_server(gemma):
    reply = gemma.client.completions.create(
        model="gemma", prompt="The capital of France is", max_tokens=4, temperature=0
    )
    assert reply.choices[0].text


def test_embeddings_and_generation_side_by_side(gateway):
    """One GGUF as two models: a chat engine and an embedding engine (--embeddings) at once."""
    _require_e2e()
    gw = gateway(
        {
            "engines": {"llamacpp": {"binary": BINARY}},
            "models": {
                "gemma": {"engine": "llamacpp", "source": GGUF, "args": ["-c", "2048"]},
                # gemma is a generative model: its GGUF names no pooling, so ask for mean.
                "gemma-embed": {
                    "engine": "llamacpp",
                    "source": GGUF,
                    "task": "embed",
                    "args": ["-c", "2048", "--pooling", "mean"],
                },
            },
        }
    )
    emb = gw.client.embeddings.create(model="gemma-embed", input=["a cat", "a dog"])
    assert len(emb.data) == 2
    assert len(emb.data[0].embedding) == 640  # gemma 3 270M's hidden size
    reply = gw.client.chat.completions.create(
        model="gemma", messages=[{"role": "user", "content": "Hi"}], max_tokens=4
    )
    assert reply.choices[0].message.content is not None
    assert {m["name"]: m["state"] for m in gw.status()["models"]} == {
        "gemma": "ready",
        "gemma-embed": "ready",
    }
