"""The Hub as vramgate reads it, against a local hub that speaks its API (vramgate.testing)."""

from __future__ import annotations

import json
import sys

import pytest

from tests.conftest import safetensors_bytes
from tests.integration.test_gpu_memory import FAKE_VLLM, ask, gpus
from vramgate.config import ModelConfig
from vramgate.gpu.estimate import EstimateError, estimate_hub, estimate_model
from vramgate.gpu.nvml import nvml_available

# 32 layers x 8 KV heads x 128 dims: 128 KiB of KV cache per token at 2 bytes.
CONFIG = {
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "head_dim": 128,
    "hidden_size": 4096,
    "max_position_embeddings": 32768,
    "torch_dtype": "bfloat16",
}
ONE_MIB_OF_WEIGHTS = safetensors_bytes({"w": ("BF16", [512, 1024])})


def test_estimate_from_hub_metadata_without_the_weights(hub):
    hub.repo(
        "acme/tiny", {"model.safetensors": ONE_MIB_OF_WEIGHTS, "config.json": json.dumps(CONFIG)}
    )
    found = estimate_hub("acme/tiny", ["--max-model-len", "8192"])
    assert (found.weights_mib, found.kv_cache_mib, found.context) == (1.0, 1024.0, 8192)
    assert estimate_hub("acme/tiny").kv_cache_mib == 4096.0  # the model's own context
    assert (
        estimate_hub("acme/tiny", ["--max-model-len", "8192", "--max-num-seqs", "2"]).kv_cache_mib
        == 2048.0
    )
    # Only the header was read, by Range requests: never the whole weights file.
    fetched = [r for r in hub.requests() if r[0] == "GET" and r[1].endswith(".safetensors")]
    assert fetched and all(r[2] and r[2].startswith("bytes=") for r in fetched)


def test_sharded_repo_sums_every_shard(hub):
    index = {
        "weight_map": {
            "a": "model-00001-of-00002.safetensors",
            "b": "model-00002-of-00002.safetensors",
        }
    }
    hub.repo(
        "acme/sharded",
        {
            "model-00001-of-00002.safetensors": safetensors_bytes({"a": ("BF16", [512, 1024])}),
            "model-00002-of-00002.safetensors": safetensors_bytes({"b": ("F32", [256, 1024])}),
            "model.safetensors.index.json": json.dumps(index),
        },
    )
    found = estimate_hub("acme/sharded")
    assert found.weights_mib == 2.0 and found.kv_cache_mib == 0.0  # no config.json: no KV figure


def test_hub_errors_say_what_to_do(hub, monkeypatch):
    hub.repo("acme/locked", {"model.safetensors": ONE_MIB_OF_WEIGHTS, ".gated": ""})
    with pytest.raises(
        EstimateError, match="acme/locked is gated: accept its terms on the Hub and set HF_TOKEN"
    ):
        estimate_hub("acme/locked")
    with pytest.raises(EstimateError, match="acme/missing was not found on the Hub"):
        estimate_hub("acme/missing")
    hub.repo("acme/pickles", {"pytorch_model.bin": b"\0" * 10})
    with pytest.raises(EstimateError, match="no safetensors weights"):
        estimate_hub("acme/pickles")
    monkeypatch.setenv("HF_TOKEN", hub.token)
    assert estimate_hub("acme/locked").weights_mib == 1.0
    # A repo the hub cannot describe still has its parameter count to go by, if configured.
    monkeypatch.delenv("HF_TOKEN")
    guess = estimate_model(ModelConfig(engine="vllm", source="acme/missing", param_count=1))
    assert guess is not None and guess.basis == "1B parameters at bf16"


def test_a_hub_model_is_placed_by_its_estimate_and_vllm_told_the_budget(gateway, hub, tmp_path):
    """vLLM serving a hub id: the gateway reads the repo's metadata (no weights) for a footprint."""
    hub.repo(
        "acme/tiny", {"model.safetensors": ONE_MIB_OF_WEIGHTS, "config.json": json.dumps(CONFIG)}
    )
    script = tmp_path / "vllm"
    script.write_text(FAKE_VLLM.format(python=sys.executable, mib=1200))
    script.chmod(0o755)
    model = {"engine": "vllm", "source": "acme/tiny", "args": ["--max-model-len", "8192"]}
    gw = gateway(
        {
            "gpus": gpus(10_000),
            "engines": {"vllm": {"binary": str(script)}},
            "models": {"q": model},
        }
    )
    before = gw.model("q")
    assert before["footprint_source"] == "unknown"  # asked of the hub when first needed
    ask(gw, "q")
    line = next(x for x in gw.engine_log("q").splitlines() if x.startswith("fake vllm argv:"))
    # 1 MiB weights + 1024 MiB KV (8192 tokens) + 128 MiB process = 1153 MiB, x 1.10 = 1269.
    assert line.endswith("--gpu-memory-utilization 0.1269")
    after = gw.model("q")
    assert (after["footprint_mib"], after["footprint_source"]) == (1200, "measured")


def test_a_hub_model_on_the_cpu_is_held_to_the_host_ram_budget(gateway, hub, tmp_path):
    """Reproduced (review 26): a hub model on the CPU (auto, no GPU seen) got its metadata's
    estimate for the GPU only; its host RAM stayed unknown and it started whatever the budget."""
    if nvml_available():
        pytest.skip("this machine has a GPU: auto places on it")
    hub.repo(
        "acme/tiny", {"model.safetensors": ONE_MIB_OF_WEIGHTS, "config.json": json.dumps(CONFIG)}
    )
    script = tmp_path / "vllm"
    script.write_text(FAKE_VLLM.format(python=sys.executable, mib=0))
    script.chmod(0o755)
    # vLLM on the CPU: its weights, VLLM_CPU_KVCACHE_SPACE (4 GiB by default) and ~2 GiB of
    # runtime: over 6 GiB, three times this budget.
    gw = gateway(
        {
            "host_ram_mib": 2000,
            "engines": {"vllm": {"binary": str(script)}},
            "models": {"q": {"engine": "vllm", "source": "acme/tiny"}},
        }
    )
    assert gw.model("q")["ram_source"] == "unknown"  # the hub is asked before the first start
    reply = gw.http.post(
        "/v1/completions", json={"model": "q", "prompt": "x", "max_tokens": 1}, timeout=60
    )
    assert reply.status_code == 507 and "host RAM" in reply.text, (reply.status_code, reply.text)
    q = gw.model("q")
    assert q["ram_source"] == "estimate" and q["ram_mib"] > 6000, q
