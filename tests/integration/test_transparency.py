"""An engine's own API through the gateway, with the fake engine: the default model, /v1-less
routes, /upstream/MODEL/PATH, CORS and the engine's own key (the real llama-server's routes:
tests/e2e/test_llama_native.py)."""

from __future__ import annotations

import httpx

from tests.conftest import fake_cmd

ONE = {"models": {"solo": {"engine": "command", "cmd": fake_cmd(), "aliases": ["s"]}}}
TWO = {
    "models": {
        "a": {"engine": "command", "cmd": fake_cmd("--name", "a")},
        "b": {"engine": "command", "cmd": fake_cmd("--name", "b")},
    }
}
CHAT = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}


def test_sole_model_serves_requests_naming_none(gateway):
    """With one model configured, a request without `model`, or with `"model": null`, goes to
    it."""
    gw = gateway(ONE)
    for body in (CHAT, {**CHAT, "model": None}):
        resp = gw.http.post("/v1/chat/completions", json=body)
        assert resp.status_code == 200, resp.text
        assert resp.json()["choices"][0]["message"]["content"]
    assert gw.model("solo")["starts"] == 1


def test_no_default_is_400_listing_models_and_default_model_routes(gateway):
    """Two models and no default: a request naming none is a 400 that lists them; with
    `default_model` it goes to that one."""
    gw = gateway(TWO)
    resp = gw.http.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 400
    message = resp.json()["error"]["message"]
    assert "default_model" in message and "a, b" in message
    gw2 = gateway({**TWO, "default_model": "b"})
    resp = gw2.http.post("/v1/chat/completions", json=CHAT)
    assert resp.status_code == 200, resp.text
    assert gw2.model("b")["starts"] == 1 and gw2.model("a")["starts"] == 0


def test_unknown_default_model_is_a_config_error(gateway, tmp_path):
    """`default_model` must name a configured model (or alias)."""
    from vramgate.config import ConfigError, load_settings

    path = tmp_path / "bad.yaml"
    path.write_text("default_model: nope\nmodels: {}\n")
    try:
        load_settings(path)
    except ConfigError as exc:
        assert "default_model" in str(exc) and "nope" in str(exc)
    else:
        raise AssertionError("no ConfigError")


def test_unversioned_openai_routes_relay_as_v1(gateway):
    """`/chat/completions` and `/completions` (an SDK given a base URL without /v1) are the
    OpenAI routes for an engine that serves only the /v1 spellings."""
    gw = gateway(ONE)
    resp = gw.http.post("/chat/completions", json={**CHAT, "model": "s"})
    assert resp.status_code == 200, resp.text
    assert resp.json()["object"] == "chat.completion"
    resp = gw.http.post("/completions", json={"prompt": "x", "max_tokens": 2})
    assert resp.status_code == 200, resp.text
    assert resp.json()["choices"][0]["text"]


def test_upstream_reaches_any_engine_route(gateway):
    """`/upstream/MODEL/PATH` starts the engine and relays any method and path, query kept,
    with the engine's own headers; with auth on it takes admin keys only unless
    `upstream_access: keys`."""
    gw = gateway(ONE)
    resp = gw.http.get("/upstream/solo/stats?x=1")
    assert resp.status_code == 200, resp.text
    assert resp.json()["pid"] == gw.model("solo")["pid"]
    assert resp.headers["server"].startswith("Python")  # aiohttp's, the engine's own
    assert gw.http.get("/upstream/s/v1/models").json()["data"][0]["id"] == "fake"
    assert gw.http.get("/upstream/nope/stats").status_code == 404
    keyed = {
        "auth": {"api_keys": ["user-key"], "admin_keys": ["admin-key"]},
        "models": ONE["models"],
    }
    gw2 = gateway(keyed, key="admin-key")
    user = {"Authorization": "Bearer user-key"}
    assert gw2.http.get("/upstream/solo/stats", headers=user).status_code == 403
    admin = {"Authorization": "Bearer admin-key"}
    assert gw2.http.get("/upstream/solo/stats", headers=admin).status_code == 200
    gw3 = gateway({**keyed, "upstream_access": "keys"}, key="admin-key")
    assert gw3.http.get("/upstream/solo/stats", headers=user).status_code == 200


def test_upstream_reaches_a_model_whose_name_holds_a_slash(gateway):
    """Review finding 9: `/upstream/org%2Fm/...` was model 'org' (404), and only the
    double-encoded `org%252Fm` reached it; the name is %-encoded once, as a URL spells it."""
    gw = gateway({"models": {"org/m": {"engine": "command", "cmd": fake_cmd()}}})
    resp = gw.http.get("/upstream/org%2Fm/stats")
    assert resp.status_code == 200, resp.text
    assert resp.json()["pid"] == gw.model("org/m")["pid"]
    twice = gw.http.get("/upstream/org%252Fm/stats")
    assert twice.status_code == 404 and "'org%2Fm'" in twice.text, twice.text


def test_upstream_streams_the_request_body_up(gateway):
    """A POST through /upstream carries its body, sent in pieces, to the engine as it is."""
    gw = gateway(ONE)

    def pieces():
        yield b'{"model": "fake", "prompt": "x",'
        yield b' "max_tokens": 3}'

    resp = gw.http.post(
        "/upstream/solo/v1/completions",
        content=pieces(),
        headers={"Content-Type": "application/json"},
    )
    assert resp.status_code == 200, resp.text
    assert resp.json()["usage"]["completion_tokens"] == 3


def test_cors_preflight_and_headers_for_allowed_origins(gateway):
    """`cors_origins`: a preflight from an allowed origin is answered with Access-Control-*,
    its POST passes the cross-site guard and gets them too; another origin gets no Allow
    headers and its POST is refused (403)."""
    gw = gateway({**ONE, "cors_origins": ["http://app.example"]})
    preflight = {
        "Origin": "http://app.example",
        "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "authorization, content-type",
    }
    resp = gw.http.options("/v1/chat/completions", headers=preflight)
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == "http://app.example"
    assert "POST" in resp.headers["access-control-allow-methods"]
    assert resp.headers["access-control-allow-headers"] == "authorization, content-type"
    resp = gw.http.post("/v1/chat/completions", json=CHAT, headers={"Origin": "http://app.example"})
    assert resp.status_code == 200, resp.text
    assert resp.headers["access-control-allow-origin"] == "http://app.example"
    other = {**preflight, "Origin": "http://evil.example"}
    resp = gw.http.options("/v1/chat/completions", headers=other)
    assert resp.status_code == 200 and "access-control-allow-origin" not in resp.headers
    resp = gw.http.post(
        "/v1/chat/completions", json=CHAT, headers={"Origin": "http://evil.example"}
    )
    assert resp.status_code == 403


def test_no_cors_by_default(gateway):
    """Without `cors_origins` no page of another origin is let in: no Allow headers."""
    gw = gateway(ONE)
    resp = gw.http.post("/v1/chat/completions", json=CHAT, headers={"Origin": "http://x.example"})
    assert resp.status_code == 403
    assert "access-control-allow-origin" not in resp.headers
    # Review finding 7: an Origin that is no URL made the cross-site guard raise (a 500).
    resp = gw.http.post("/v1/chat/completions", json=CHAT, headers={"Origin": "http://[::1"})
    assert resp.status_code == 403, resp.text


def test_an_origin_that_is_no_url_is_refused_not_a_500(gateway):
    """Review finding 7: with `localhost` in cors_origins, an Origin whose port is no number in
    range, or that is no URL, was a 500 on every route (/health too) from the CORS middleware;
    it is no allowed origin: no Allow headers, its POSTs refused as another site's."""
    gw = gateway({**ONE, "cors_origins": ["localhost"]})
    for origin in ("http://localhost:99999", "http://localhost:abc", "http://[::1"):
        headers = {"Origin": origin}
        health = gw.http.get("/health", headers=headers)
        assert health.status_code == 200 and "access-control-allow-origin" not in health.headers
        ask = {**headers, "Access-Control-Request-Method": "POST"}
        preflight = gw.http.options("/v1/chat/completions", headers=ask)
        assert preflight.status_code == 200, preflight.text
        assert "access-control-allow-origin" not in preflight.headers
        for path in ("/v1/chat/completions", "/tokenize", "/upstream/solo/x", "/admin/reload"):
            resp = gw.http.post(path, json=CHAT, headers=headers)
            assert resp.status_code == 403, (origin, path, resp.status_code, resp.text)
    assert gw.model("solo")["starts"] == 0


def test_engine_key_is_sent_and_never_shown(gateway):
    """A model whose engine wants a key (`--api-key K` in args) is reached with it on every
    relayed route (the client's own key is the gateway's); K is in no log or status."""
    secret = "engine-secret-123"
    config = {
        "models": {"k": {"engine": "command", "cmd": fake_cmd(), "args": ["--api-key", secret]}}
    }
    gw = gateway(config)
    resp = gw.http.post("/v1/chat/completions", json={**CHAT, "model": "k"})
    assert resp.status_code == 200, resp.text
    assert gw.http.get("/upstream/k/stats").status_code == 200
    raw = httpx.get(f"http://127.0.0.1:{_engine_port(gw, 'k')}/stats")
    assert raw.status_code == 401  # the engine does want it
    assert secret not in gw.http.get("/gateway/status").text
    assert secret not in gw.engine_log("k")
    assert secret not in gw.log()


def test_upstream_api_key_is_sent(gateway):
    """`upstream_api_key` is the key sent where the engine gets its key another way."""
    secret = "other-secret"
    model = {"engine": "command", "cmd": fake_cmd("--api-key", secret), "upstream_api_key": secret}
    gw = gateway({"models": {"k": model}})
    resp = gw.http.post("/v1/completions", json={"model": "k", "prompt": "x", "max_tokens": 1})
    assert resp.status_code == 200, resp.text


def _engine_port(gw, name: str) -> int:
    return int(gw.model(name)["url"].rsplit(":", 1)[1])
