"""Every route that takes a body, fed bodies of the wrong shape (types, huge numbers, unicode,
NUL, deep nesting, not JSON at all), and well-formed requests of each client API with a value
of the wrong type put at any depth (a message's content block, a tool's function, an option):
never a 500, always an error in the asked API's own shape, and the gateway still serves
afterwards. Seeded: `VRAMGATE_FUZZ_SEED` replays, `VRAMGATE_FUZZ_CASES` runs more."""

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
    "/admin/models/m/load", "/admin/models/m/unload", "/admin/reload", "/v1/messages",
    "/v1/messages/count_tokens", "/api/chat", "/api/generate", "/api/embed", "/api/embeddings",
    "/api/show", "/api/pull", "/api/delete",
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


# Well-formed requests of each API, whose every value a case may replace by an ODD one.
_TEXT = [{"type": "text", "text": "hi"}]
_TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}
TEMPLATES: dict[str, dict[str, Any]] = {
    "openai": {
        "model": "m", "max_tokens": 2, "stream": False, "stop": ["x"], "tools": [_TOOL],
        "messages": [{"role": "user", "content": _TEXT},
                     {"role": "assistant", "content": None, "tool_calls": [
                         {"id": "c1", "type": "function",
                          "function": {"name": "f", "arguments": "{}"}}]},
                     {"role": "tool", "tool_call_id": "c1", "content": "ok"}],
        "prompt": "x", "input": ["a", "b"], "query": "q", "documents": ["d"],
    },
    "anthropic": {
        "model": "m", "max_tokens": 2, "stream": False, "system": _TEXT, "stop_sequences": ["x"],
        "tools": [{"name": "f", "input_schema": {"type": "object", "properties": {}}}],
        "tool_choice": {"type": "auto"}, "thinking": {"type": "enabled", "budget_tokens": 16},
        "messages": [{"role": "user", "content": _TEXT},
                     {"role": "assistant", "content": [
                         {"type": "tool_use", "id": "t1", "name": "f", "input": {}}]},
                     {"role": "user", "content": [
                         {"type": "tool_result", "tool_use_id": "t1", "content": _TEXT},
                         {"type": "image", "source": {"type": "base64", "media_type":
                                                      "image/png", "data": "AAAA"}}]}],
    },
    "ollama": {
        "model": "m", "stream": False, "keep_alive": "5m", "prompt": "x", "system": "s",
        "options": {"num_predict": 2, "temperature": 0.5, "stop": ["x"]}, "tools": [_TOOL],
        "format": {"type": "object"}, "images": ["AAAA"], "input": ["a"], "think": False,
        "messages": [{"role": "user", "content": "hi", "images": ["AAAA"]},
                     {"role": "assistant", "content": "", "tool_calls": [
                         {"function": {"name": "f", "arguments": {"a": 1}}}]},
                     {"role": "tool", "content": "ok", "tool_name": "f"}],
    },
}  # fmt: skip


def template_of(route: str) -> dict[str, Any]:
    if route.startswith("/api/"):
        return TEMPLATES["ollama"]
    return TEMPLATES["anthropic" if route.startswith("/v1/messages") else "openai"]


def mistyped(value: Any, rng: random.Random, rate: float) -> Any:
    """`value` with some of its values, at any depth, replaced by ODD ones (a copy)."""
    if rng.random() < rate:
        return rng.choice(ODD)
    if isinstance(value, dict):
        return {k: mistyped(v, rng, rate) for k, v in value.items()}
    if isinstance(value, list):
        return [mistyped(v, rng, rate) for v in value]
    return value


def paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every place in `value` a value sits, by its keys and indexes."""
    found = [prefix]
    if isinstance(value, dict):
        items = list(value.items())
    else:
        items = list(enumerate(value)) if isinstance(value, list) else []
    for key, item in items:
        found += paths(item, (*prefix, key))
    return found


def one_mistyped(value: dict[str, Any], rng: random.Random) -> dict[str, Any]:
    """`value` with exactly one value, at a place drawn among all of them, made ODD."""
    copy = json.loads(json.dumps(value))
    where = rng.choice(paths(copy)[1:])
    node = copy
    for key in where[:-1]:
        node = node[key]
    node[where[-1]] = rng.choice(ODD)
    return copy


def nested(depth: int, where: bytes = b"model") -> bytes:
    """JSON nested `depth` deep under the key `where` (beside a good `model` for any other),
    written out (json.dumps itself recurses)."""
    head = b'{"model": "m", ' if where != b"model" else b"{"
    return head + b'"' + where + b'":' + b'[{"k":' * depth + b'"deep"' + b"}]" * depth + b"}"


def body(rng: random.Random, route: str) -> bytes:
    kind = rng.random()
    if kind < 0.35:  # one API's own request, one value anywhere in it of the wrong type
        return json.dumps(one_mistyped(template_of(route), rng)).encode()
    if kind < 0.5:  # the same, with several
        fields = {k: mistyped(v, rng, 0.15) for k, v in template_of(route).items()}
        return json.dumps(fields | {"model": "m"}).encode()
    if kind < 0.58:
        return rng.choice([b"", b"{", b"nul\x00", b"\xff\xfe", b"[1,2", b"null", b"42", b'"s"'])
    if kind < 0.64:
        where = rng.choice([b"model", b"messages", b"tools", b"vramgate", b"extra"])
        return nested(rng.choice((10, 100, 200, 300, 1000, 5000)), where)
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
                sent = body(rng, route)
                headers = {"content-type": rng.choice(["application/json", "text/plain"])}
                method = "DELETE" if route == "/api/delete" else "POST"
                resp = http.request(method, route, content=sent, headers=headers)
                seen[resp.status_code] = seen.get(resp.status_code, 0) + 1
                where = f"case {case} (seed {SEED}): POST {route} {sent[:200]!r}"
                # An engine's own 500 (llama-server's for a value of the wrong type) is relayed,
                # with the relay's header; Anthropic's API has no 502/503, so an engine that
                # failed to start is its 500 `api_error`. A bug of the gateway's is neither.
                relayed = "x-vramgate-overhead-ms" in resp.headers
                bug = resp.status_code == 500 and "internal error" in resp.text
                mapped = route.startswith("/v1/messages") and not bug
                assert resp.status_code != 500 or relayed or mapped, f"{where} -> {resp.text}"
                if resp.status_code >= 400:
                    assert shaped(route, resp.json()), f"{where}: {resp.text}"
        # And afterwards it serves as before.
        reply = http.post("/v1/completions", json={"model": "m", "prompt": "x", "max_tokens": 1})
        assert reply.status_code == 200 and reply.json()["choices"][0]["text"] == "tok0 "
    print(f"fuzzed bodies: {seen}")


def shaped(route: str, answer: Any) -> bool:
    """Whether an error answer is in the shape of the route's API."""
    error = answer.get("error") if isinstance(answer, dict) else None
    if route.startswith("/api/"):
        return isinstance(error, str) and bool(error)
    if route.startswith("/v1/messages") and answer.get("type") != "error":
        return False
    return isinstance(error, dict) and bool(error.get("message"))
