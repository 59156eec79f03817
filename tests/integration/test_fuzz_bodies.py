"""Every route that takes a body, fed bodies of the wrong shape (types, huge numbers, unicode,
NUL, deep nesting, not JSON at all): never a 500, always an error in the API's own shape, and the
gateway still serves afterwards. Seeded: `VRAMGATE_FUZZ_SEED` replays, `VRAMGATE_FUZZ_CASES`
runs more."""

from __future__ import annotations

import json
import os
import random
from typing import Any

import httpx

from tests.conftest import fake_cmd
from tests.unit.test_estimate import make_gguf

SEED = int(os.environ.get("VRAMGATE_FUZZ_SEED", "20261201"))
CASES = int(os.environ.get("VRAMGATE_FUZZ_CASES", "60"))

ROUTES = [
    "/v1/chat/completions", "/v1/completions", "/v1/embeddings", "/v1/rerank", "/v1/responses",
    "/v1/models/unload", "/v1/models/unload-all", "/v1/models/download", "/v1/models/verify-repo",
    "/admin/models/m/load", "/admin/models/m/unload", "/admin/reload",
]  # fmt: skip

ODD: list[Any] = [
    None, True, 0, -1, 2**63, -(2**64), 1e308, -1e308, 1.5, "", " ", "\x00", "a\x00b", "\ud7ff",
    "é" * 3, "🦙" * 50, "x" * 10_000, "../../etc/passwd", "/etc/passwd", "m", "m@llamacpp-cpu",
    "tiny", "./tiny", "%2e%2e/x", [], [None], [[[]]], {}, {"a": None}, {"": ""},
]  # fmt: skip
KEYS = [
    "model", "messages", "prompt", "input", "max_tokens", "stream", "vramgate", "backend",
    "device", "n_gpu_layers", "n_ctx", "ttl", "repo", "url", "revision", "quantization",
    "destination", "documents", "query", "temperature", "tools", "engine", "context_length",
]  # fmt: skip


def nested(depth: int) -> bytes:
    """JSON nested `depth` deep, written out (json.dumps itself recurses)."""
    return b'{"model":' + b'[{"k":' * depth + b'"deep"' + b"}]" * depth + b"}"


def body(rng: random.Random) -> bytes:
    kind = rng.random()
    if kind < 0.08:
        return rng.choice([b"", b"{", b"nul\x00", b"\xff\xfe", b"[1,2", b"null", b"42", b'"s"'])
    if kind < 0.14:
        return nested(rng.choice((10, 100, 5000)))
    payload: dict[str, Any] = {}
    for key in rng.sample(KEYS, rng.randint(1, 6)):
        payload[key] = rng.choice(ODD)
    if rng.random() < 0.5:
        payload["model"] = rng.choice(["m", "tiny", "./tiny", "nope", "m\x00", 7, None])
    if rng.random() < 0.3:
        payload["vramgate"] = {k: rng.choice(ODD) for k in rng.sample(KEYS, 2)}
    return json.dumps(payload).encode()


def test_no_body_on_any_route_is_a_500(gateway, tmp_path):
    models_dir = tmp_path / "models"
    models_dir.mkdir()
    make_gguf(models_dir / "tiny.gguf")
    gw = gateway(
        {
            "models_dir": str(models_dir),
            "allow_adhoc": True,
            "max_body_mb": 1,
            "engines": {"llamacpp": {"binary": "/nonexistent/llama-server"}},
            "models": {"m": {"engine": "command", "cmd": fake_cmd()}},
        }
    )
    rng = random.Random(SEED)
    seen: dict[int, int] = {}
    with httpx.Client(base_url=gw.url, timeout=30) as http:
        for case in range(CASES):
            for route in ROUTES:
                sent = body(rng)
                headers = {"content-type": rng.choice(["application/json", "text/plain"])}
                resp = http.post(route, content=sent, headers=headers)
                seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
                where = f"case {case} (seed {SEED}): POST {route} {sent[:200]!r}"
                assert resp.status_code != 500, f"{where} -> 500 {resp.text[:300]}"
                if resp.status_code >= 400:
                    error = resp.json().get("error")
                    assert isinstance(error, dict) and error.get("message"), f"{where}: {resp.text}"
        # And afterwards it serves as before.
        reply = http.post("/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 1})
        assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == "tok0 "
    print(f"fuzzed bodies: {seen}")
