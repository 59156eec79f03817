"""A request that names no model, and no default the key may use: the 400 lists only the models
the request's key opens (as GET /v1/models does), on every route that answers it."""

from __future__ import annotations

from tests.conftest import fake_cmd

ADMIN, API, MINE, SECRET = "k-admin-25d", "k-api-25d", "k-mine-25d", "k-secret-25d"
MODELS = {
    "secret-model": {"engine": "command", "cmd": fake_cmd(), "api_keys": [SECRET]},
    "mine-model": {"engine": "command", "cmd": fake_cmd(), "api_keys": [MINE]},
    "shared-model": {"engine": "command", "cmd": fake_cmd()},  # any api key's
}
AUTH = {"auth": {"admin_keys": [ADMIN], "api_keys": [API]}}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
# Every route that answers a request naming no model: OpenAI, /v1-less, Anthropic, Ollama, an
# engine's own JSON POSTs and GETs (llama-server's /completion, /tokenize, /props).
NO_MODEL = [
    ("POST", "/v1/chat/completions", CHAT),
    ("POST", "/v1/completions", {"prompt": "x"}),
    ("POST", "/v1/embeddings", {"input": "x"}),
    ("POST", "/chat/completions", CHAT),
    ("POST", "/v1/messages", {**CHAT, "model": None}),
    ("POST", "/v1/messages/count_tokens", CHAT),
    ("POST", "/api/chat", CHAT),
    ("POST", "/api/generate", {"prompt": "x"}),
    ("POST", "/api/embed", {"input": "x"}),
    ("POST", "/completion", {"prompt": "x"}),
    ("POST", "/tokenize", {"content": "x"}),
    ("GET", "/props", None),
]


def _ask(gw, method: str, path: str, body, key: str):
    headers = {"Authorization": f"Bearer {key}"}
    return gw.http.request(method, path, json=body, headers=headers)


def test_no_model_400_lists_only_the_keys_models_on_every_route(gateway):
    """A key scoped to one model learns of that model only, and is told the list is its own."""
    gw = gateway({**AUTH, "models": MODELS}, key=ADMIN)
    for method, path, body in NO_MODEL:
        resp = _ask(gw, method, path, body, MINE)
        assert resp.status_code == 400, (path, resp.text)
        assert "models this API key may use: mine-model" in resp.text, (path, resp.text)
        assert "secret" not in resp.text and "shared" not in resp.text, (path, resp.text)
    resp = _ask(gw, "POST", "/v1/chat/completions", CHAT, API)
    assert "models this API key may use: shared-model" in resp.text, resp.text
    assert "secret" not in resp.text and "mine-model" not in resp.text, resp.text
    resp = _ask(gw, "POST", "/v1/chat/completions", CHAT, ADMIN)
    assert "known models: mine-model, secret-model, shared-model" in resp.text, resp.text
    assert all(m["starts"] == 0 for m in map(gw.model, MODELS))


def test_a_default_the_key_may_not_use_is_not_named_to_it(gateway):
    """`default_model` opened to other keys only: a scoped key's request naming none is the
    same 400 as with no default (not a 403 that names the default)."""
    gw = gateway({**AUTH, "default_model": "secret-model", "models": MODELS}, key=ADMIN)
    for method, path, body in (NO_MODEL[0], NO_MODEL[-1]):
        resp = _ask(gw, method, path, body, MINE)
        assert resp.status_code == 400, (path, resp.text)
        assert "mine-model" in resp.text and "secret" not in resp.text, (path, resp.text)
    resp = _ask(gw, "POST", "/v1/chat/completions", CHAT, SECRET)
    assert resp.status_code == 200, resp.text  # its own keys still reach it
    assert gw.model("secret-model")["starts"] == 1


def test_a_key_that_opens_no_default_learns_of_none(gateway):
    """A general API key, a default of another key's and no model of its own: the 400 lists
    nothing."""
    only = {"secret-model": MODELS["secret-model"], "mine-model": MODELS["mine-model"]}
    gw = gateway({**AUTH, "default_model": "mine-model", "models": only}, key=ADMIN)
    resp = _ask(gw, "POST", "/v1/chat/completions", CHAT, API)
    assert resp.status_code == 400, resp.text
    assert "models this API key may use: (none)" in resp.text, resp.text
    assert "mine-model" not in resp.text and "secret" not in resp.text, resp.text


def test_upstream_without_a_model_lists_only_the_keys_models(gateway):
    """`/upstream/` naming no model, or one not configured: the 404 lists the key's models."""
    cfg = {**AUTH, "upstream_access": "keys", "models": MODELS}
    gw = gateway(cfg, key=ADMIN)
    for path in ("/upstream//props", "/upstream/nope/props"):
        resp = _ask(gw, "GET", path, None, MINE)
        assert resp.status_code == 404, (path, resp.text)
        assert "models this API key may use: mine-model" in resp.text, (path, resp.text)
        assert "secret" not in resp.text, (path, resp.text)
