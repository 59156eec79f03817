"""KV caches kept across swaps with the real llama-server and gemma 3 (a sliding-window model)."""

from __future__ import annotations

import yaml

from tests.e2e.test_llama_server import BINARY, CHAT_GGUF, GGUF, _require_e2e

# About 1100 tokens: long enough that its prefill is most of an answer's time on a CPU.
PROMPT = " ".join(f"The {i}th stone of the old wall was grey and cold." for i in range(70))


def ask(gw, model: str) -> dict:
    body = {"model": model, "prompt": PROMPT, "max_tokens": 1, "temperature": 0}
    resp = gw.http.post("/v1/completions", json=body, timeout=120)
    assert resp.status_code == 200, resp.text
    return resp.json()


def test_a_prompt_cached_before_a_swap_is_not_evaluated_again(gateway):
    """Stopped and started again, the engine finds the slots it saved: the same prompt reuses
    the cache (llama-server's own count, `timings.cache_n`) instead of a prefill. gemma 3
    slides: at a 2048 context its full cache costs nothing more, so it is kept with keep_kv
    unset. The model that does not keep them (keep_kv: false), and a changed definition of
    the same one, start from nothing."""
    _require_e2e()
    common = {"engine": "llamacpp", "source": GGUF, "args": ["-c", "2048"]}
    gw = gateway(
        {
            "engines": {"llamacpp": {"binary": BINARY}},
            "max_running": 1,  # each request for the other model is a swap
            "models": {"kept": common, "plain": common | {"keep_kv": False}},
        }
    )
    first = ask(gw, "kept")
    tokens = first["usage"]["prompt_tokens"]
    assert tokens > 900 and first["timings"]["cache_n"] == 0
    assert ask(gw, "plain")["timings"]["cache_n"] == 0  # evicts `kept`, which saves its slots
    assert gw.model("kept")["state"] == "stopped"
    again = ask(gw, "kept")  # evicts `plain`; `kept` restores before it serves
    assert again["timings"]["cache_n"] >= tokens - 1, again["timings"]
    assert again["timings"]["prompt_n"] <= 1
    assert gw.model("kept")["kv_reused"] is True  # the gateway read the same from the answer
    assert "its restored KV cache was used" in gw.log()
    assert ask(gw, "plain")["timings"]["cache_n"] == 0  # no keeping: nothing kept
    log = gw.log()
    assert "model 'kept': kv cache save: 1 slot(s)" in log
    assert "model 'kept': kv cache restore: 1 slot(s)" in log
    assert "model 'plain': kv cache" not in log
    assert "--swa-full" in gw.engine_log("kept")  # gemma 3 slides: the full cache is kept
    assert "--swa-full" not in gw.engine_log("plain")
    assert "--slot-save-path" not in gw.engine_log("plain")
    # A changed definition (other args) never restores the old cache.
    config = yaml.safe_load(gw.config_path.read_text())
    config["models"]["kept"]["args"] = ["-c", "2560"]
    gw.config_path.write_text(yaml.safe_dump(config))
    assert gw.http.post("/admin/reload", json={}).json()["changed"] == ["kept"]
    assert ask(gw, "kept")["timings"]["cache_n"] == 0


def test_models_that_do_not_slide_keep_their_caches_by_default(gateway):
    """SmolLM2 (llama, no sliding window) with keep_kv unset: its caches are kept across a
    swap, without --swa-full; `keep_kv: false` opts out."""
    _require_e2e()
    common = {"engine": "llamacpp", "source": CHAT_GGUF, "args": ["-c", "2048"]}
    gw = gateway(
        {
            "engines": {"llamacpp": {"binary": BINARY}},
            "max_running": 1,
            "models": {"smol": common, "off": common | {"keep_kv": False}},
        }
    )
    tokens = ask(gw, "smol")["usage"]["prompt_tokens"]
    assert ask(gw, "off")["timings"]["cache_n"] == 0  # the swap: `smol` saves its slots
    again = ask(gw, "smol")
    assert again["timings"]["cache_n"] >= tokens - 1 and again["timings"]["prompt_n"] <= 1
    assert ask(gw, "off")["timings"]["cache_n"] == 0
    # A prompt that shares nothing with the saved ones: the restore goes unused, and is reported.
    other = {"model": "smol", "prompt": "Unrelated words.", "max_tokens": 1, "temperature": 0}
    assert gw.http.post("/v1/completions", json=other, timeout=120).status_code == 200
    assert gw.model("smol")["kv_reused"] is False
    assert "its restored KV cache" in gw.log() and "was not used by the first answer" in gw.log()
    assert "--slot-save-path" in gw.engine_log("smol") and "--swa-full" not in gw.engine_log("smol")
    assert "--slot-save-path" not in gw.engine_log("off")
