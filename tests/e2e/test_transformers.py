"""End to end with the Transformers engine: `transformers serve` on the CPU, serving SmolLM2-135M-
Instruct converted from the GGUF we ship to safetensors (scripts/gguf-to-safetensors.py)."""

from __future__ import annotations

import os
import shutil
import threading
from pathlib import Path

import httpx
import orjson
import pytest

from tests.e2e.test_llama_server import BINARY, CHAT_GGUF
from vramgate.gpu.estimate import estimate_safetensors

CHAT_HF = os.environ.get("VRAMGATE_CHAT_HF", "")  # SmolLM2-135M-Instruct as safetensors
QUESTION = [
    {"role": "system", "content": "You are a helpful assistant."},
    {"role": "user", "content": "What is the capital of France?"},
]


def needs_transformers() -> None:
    """Skip (or fail, under VRAMGATE_REQUIRE_E2E) where the Transformers engine is not set up."""
    missing = [what for what, path in (("VRAMGATE_CHAT_HF", CHAT_HF),) if not path]
    try:
        import transformers  # noqa: F401
    except ImportError:
        missing.append("transformers (pip install vramgate[transformers])")
    if CHAT_HF and not (Path(CHAT_HF) / "model.safetensors").exists():
        missing.append(f"{CHAT_HF}/model.safetensors")
    if not missing:
        return
    why = f"needs the Transformers engine and SmolLM2 as safetensors (scripts/setup.sh): {missing}"
    if os.environ.get("VRAMGATE_REQUIRE_E2E"):
        pytest.fail(why)
    pytest.skip(why)


@pytest.fixture(autouse=True)
def _needs_transformers() -> None:
    needs_transformers()


def test_chat_stream_completions_and_responses_through_transformers(gateway):
    gw = gateway({"models": {"smol": {"engine": "transformers", "source": CHAT_HF,
                                      "device": "cpu"}}})  # fmt: skip
    reply = gw.client.chat.completions.create(
        model="smol", messages=QUESTION, max_tokens=16, temperature=0
    )
    text = reply.choices[0].message.content or ""
    assert text and "<|im_" not in text
    assert reply.model == "smol"  # not the engine's `PATH@main`
    assert reply.usage and 0 < reply.usage.completion_tokens <= 16
    # A stream, as the openai client reads it, and as bytes: it ends with [DONE].
    chunks = list(
        gw.client.chat.completions.create(
            model="smol", messages=QUESTION, max_tokens=8, temperature=0, stream=True
        )
    )
    assert {c.model for c in chunks} == {"smol"}
    assert "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    body = {"model": "smol", "messages": QUESTION, "max_tokens": 3, "stream": True}
    with gw.http.stream("POST", "/v1/chat/completions", json=body) as resp:
        raw = b"".join(resp.iter_bytes())
    assert resp.status_code == 200 and raw.endswith(b"data: [DONE]\n\n")
    completion = gw.client.completions.create(
        model="smol", prompt="The capital of France is", max_tokens=4, temperature=0
    )
    assert completion.choices[0].text and completion.model == "smol"
    # Asked without `stream`, `transformers serve` streams anyway: the client gets the object.
    response = gw.client.responses.create(model="smol", input="Say hi.", max_output_tokens=8)
    assert response.output_text and response.model == "smol"
    # The engine's own errors, in OpenAI's shape; the gateway's fields never reach it (a 422).
    bad = gw.http.post("/v1/chat/completions", json={"model": "smol", "messages": "not a list"})
    assert bad.status_code >= 400 and set(bad.json()["error"]) >= {"message", "type", "code"}
    ok = gw.http.post(
        "/v1/chat/completions",
        json={"model": "smol", "messages": QUESTION, "max_tokens": 2, "vramgate": {}, "ttl": 9},
    )
    assert ok.status_code == 200, ok.text
    status = gw.model("smol")
    assert status["engine"] == "transformers" and status["footprint_source"] == "cpu"
    assert "--device cpu" in gw.engine_log("smol")


def test_seed_003_requests_choose_engine_and_device_per_request(gateway, tmp_path):
    """Seed 003's request shape: a folder in models_dir, `backend`, `device`, `n_ctx`, `ttl`.
    The same folder through Transformers on the CPU and llama.cpp at once: two instances."""
    if not (CHAT_GGUF and BINARY):
        pytest.skip("needs the SmolLM2 GGUF and llama-server (scripts/setup.sh)")
    folder = tmp_path / "models" / "smollm2"
    folder.mkdir(parents=True)
    # Hard links or copies: a symlink leading out of models_dir is refused (and should be).
    for item in [*Path(CHAT_HF).iterdir(), Path(CHAT_GGUF)]:
        try:
            os.link(item, folder / item.name)
        except OSError:
            shutil.copy(item, folder / item.name)
    gw = gateway({"models_dir": str(tmp_path / "models"), "allow_adhoc": True})
    asked = {
        "transformers": {"backend": "transformers", "device": "cpu", "ttl": 300},
        "llamacpp": {"backend": "llamacpp", "n_gpu_layers": -1, "n_ctx": 2048},
    }
    answers: dict[str, httpx.Response] = {}

    def ask(backend: str) -> None:
        body = {"model": str(folder), "messages": QUESTION, "max_tokens": 8, "temperature": 0}
        with httpx.Client(base_url=gw.url, timeout=120) as http:
            answers[backend] = http.post("/v1/chat/completions", json=body | asked[backend])

    threads = [threading.Thread(target=ask, args=(b,)) for b in asked]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    for backend, resp in answers.items():
        assert resp.status_code == 200, (backend, resp.text)
        assert resp.json()["choices"][0]["message"]["content"]
    assert set(answers) == set(asked)
    # Instances are named by their name inside models_dir, however the request spelled the path;
    # llama.cpp's is the GGUF file the folder holds.
    tf, llama = "smollm2@transformers-cpu", f"smollm2/{Path(CHAT_GGUF).stem}@llamacpp-auto"
    states = {m["name"]: m for m in gw.status()["models"]}
    assert states[tf]["state"] == states[llama]["state"] == "ready"
    assert states[tf]["engine"] == "transformers" and states[tf]["ttl_s"] == 300
    assert states[llama]["engine"] == "llamacpp"
    llama_log = gw.engine_log(llama)
    assert "-c 2048 -ngl 999" in llama_log and f"{folder}/SmolLM2" in llama_log
    # Other settings for a running instance: 409, as for the `vramgate` object.
    clash = gw.http.post(
        "/v1/chat/completions",
        json={"model": str(folder), "messages": QUESTION} | asked["transformers"] | {"ttl": 5},
    )
    assert clash.status_code == 409 and "unload it first" in clash.json()["error"]["message"]
    # Seed 003's unload names the instance by path, backend and device.
    gone = gw.http.post(
        "/v1/models/unload",
        json={"model": str(folder), "backend": "transformers", "device": "cpu"},
    )
    assert gone.status_code == 200 and gone.json()["model"] == tf
    assert gw.model(tf)["state"] == "stopped" and gw.model(llama)["state"] == "ready"


def test_placement_sees_the_safetensors_estimate_and_cpu_models_take_no_gpu(gateway):
    estimate = estimate_safetensors(Path(CHAT_HF))
    gw = gateway(
        {
            "gpus": {"simulate_mib": [4096]},
            "models": {
                "on-gpu": {"engine": "transformers", "source": CHAT_HF},
                "on-cpu": {"engine": "transformers", "source": CHAT_HF, "device": "cpu"},
            },
        }
    )
    on_gpu = gw.model("on-gpu")
    assert (on_gpu["footprint_mib"], on_gpu["footprint_source"]) == (
        estimate.placement_mib,
        "estimate",
    )
    assert estimate.weights_mib == pytest.approx(269_060_000 / (1 << 20), rel=0.01)
    reply = gw.client.completions.create(model="on-cpu", prompt="One, two,", max_tokens=2)
    assert reply.choices[0].text
    on_cpu = gw.model("on-cpu")
    assert (on_cpu["footprint_mib"], on_cpu["gpus"]) == (0, [])
    assert gw.status()["gpus"][0]["used_mib"] == 0
    assert orjson.loads(orjson.dumps(on_cpu))["state"] == "ready"
