"""Real llama-server serving gemma 3 270M on a worker node of a real Ray cluster (this machine,
loopback): started there by the node's agent, reached through its guard, streamed back."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import ray_config
from tests.e2e.test_llama_server import GGUF, _require_e2e


@pytest.fixture(scope="module")
def cluster(make_cluster):
    return make_cluster({"cpu-a": None})  # a node without GPUs: llama.cpp on its CPU


def test_llama_server_on_a_worker_node(gateway, cluster):
    _require_e2e()
    model = {"engine": "llamacpp", "source": GGUF, "nodes": ["cpu-a"], "args": ["-c", "512"]}
    gw = gateway(ray_config(cluster, {"gemma": model}))
    reply = gw.client.completions.create(
        model="gemma", prompt="The capital of France is", max_tokens=8, temperature=0
    )
    assert reply.choices[0].text and reply.usage and reply.usage.completion_tokens > 0
    status = gw.model("gemma")
    assert status["node"] == "cpu-a" and status["engine"] == "llamacpp"
    pieces = [
        chunk.choices[0].text
        for chunk in gw.client.completions.create(
            model="gemma", prompt="One, two, three,", max_tokens=8, stream=True, temperature=0
        )
        if chunk.choices
    ]
    assert len([p for p in pieces if p]) >= 2  # chunk by chunk, not one lump
    # Its output came back to the gateway's log of it, as for an engine on this machine.
    assert "llama" in gw.engine_log("gemma").lower() or "server" in gw.engine_log("gemma")
