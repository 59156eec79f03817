"""The guards every client API shares (issue 23): who may unload and how, the Host allow-list,
bounded durations, one body limit and one depth limit on every route, strict `stream`, errors in
the asked API's shape whoever produced them, and 404s that list only what the key may use."""

from __future__ import annotations

import socket
import threading
import time

import httpx
import pytest

from tests.conftest import fake_cmd, wait_until

USER, ADMIN = "k-user-23a", "k-admin-23b"
SLOW = fake_cmd("--tokens-per-s", "20")


def keyed(**models: dict) -> dict:
    return {"auth": {"api_keys": [USER], "admin_keys": [ADMIN]}, "models": models}


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def stream_tokens(url: str, model: str, out: dict, n: int = 12) -> None:
    """A streamed completion of `n` tokens; what came back, in `out`."""
    body = {"model": model, "prompt": "x", "max_tokens": n, "stream": True}
    with httpx.stream("POST", url + "/v1/completions", json=body, timeout=30) as resp:
        out["status"] = resp.status_code
        out["text"] = "".join(resp.iter_text())


# -- 1. unloading: one rule for every API -------------------------------------------------------


def test_ollama_unload_needs_an_admin_key_as_the_admin_unload_does(gateway):
    """Reproduced: `keep_alive: 0` with `messages: []` unloaded the model with any key that opens
    it, where /v1/models/unload answers 403. Now both refuse it, and the model keeps running."""
    gw = gateway(keyed(m={"engine": "command", "cmd": fake_cmd()}), key=ADMIN)
    user = bearer(USER)
    loaded = gw.http.post("/api/chat", json={"model": "m", "messages": []}, headers=user)
    assert loaded.status_code == 200 and gw.model("m")["state"] == "ready"
    admin_route = gw.http.post("/v1/models/unload", json={"model": "m"}, headers=user)
    assert admin_route.status_code == 403
    for path, empty in (("/api/chat", {"messages": []}), ("/api/generate", {"prompt": ""})):
        resp = gw.http.post(path, json={"model": "m", "keep_alive": 0, **empty}, headers=user)
        assert resp.status_code == 403, resp.text
        assert "admin key" in resp.json()["error"]  # Ollama's shape: {"error": "..."}
        assert gw.model("m")["state"] == "ready"
    unloaded = gw.http.post("/api/generate", json={"model": "m", "prompt": "", "keep_alive": 0})
    assert unloaded.json()["done_reason"] == "unload" and gw.model("m")["state"] == "stopped"


@pytest.mark.parametrize("how", ["ollama", "admin"])
def test_an_unload_lets_running_requests_finish_first(gateway, how):
    """Reproduced: the Ollama unload killed other users' streams mid-answer. Every unload now
    waits for the model's running requests, then stops it."""
    gw = gateway({"models": {"m": {"engine": "command", "cmd": SLOW}}})
    out: dict = {}
    thread = threading.Thread(target=stream_tokens, args=(gw.url, "m", out))
    thread.start()
    assert wait_until(lambda: gw.model("m")["in_flight"] == 1, 15)
    began = time.monotonic()
    if how == "ollama":
        resp = gw.http.post("/api/chat", json={"model": "m", "messages": [], "keep_alive": 0})
    else:
        resp = gw.http.post("/v1/models/unload", json={"model": "m"})
    thread.join(30)
    assert resp.status_code == 200, resp.text
    assert time.monotonic() - began > 0.2  # it waited for the stream
    assert out["status"] == 200 and out["text"].count("tok") == 12, out
    assert "error" not in out["text"]
    assert gw.model("m")["state"] == "stopped"


def test_a_pinned_model_stays_whoever_unloads_it(gateway):
    """Reproduced: the Ollama unload stopped pinned models (the next tick started them again,
    so it could be repeated). No API unloads a pinned model now: 409, and it keeps running."""
    gw = gateway({"models": {"p": {"engine": "command", "cmd": fake_cmd(), "pinned": True}}})
    assert wait_until(lambda: gw.model("p")["state"] == "ready", 15)
    pid = gw.model("p")["pid"]
    ollama = gw.http.post("/api/generate", json={"model": "p", "prompt": "", "keep_alive": 0})
    assert ollama.status_code == 409 and "pinned" in ollama.json()["error"]
    admin = gw.http.post("/v1/models/unload", json={"model": "p"})
    assert admin.status_code == 409 and "pinned" in admin.json()["error"]["message"]
    assert gw.http.post("/admin/models/p/unload").status_code == 409
    assert gw.http.post("/v1/models/unload-all").json()["unloaded"] == []
    assert gw.model("p")["state"] == "ready" and gw.model("p")["pid"] == pid


def test_a_keep_alive_from_a_key_that_may_not_unload_is_ignored(gateway):
    """A generation's `keep_alive` sets when the model stops: a user key's is ignored (the
    configured ttl stays), an admin key's is taken."""
    gw = gateway(keyed(m={"engine": "command", "cmd": fake_cmd(), "ttl": 600}), key=ADMIN)
    chat = {"model": "m", "messages": [{"role": "user", "content": "hi"}], "stream": False}
    resp = gw.http.post("/api/chat", json={**chat, "keep_alive": 0}, headers=bearer(USER))
    assert resp.status_code == 200
    time.sleep(0.6)  # a few ticks: keep_alive 0 would have stopped it by now
    assert gw.model("m")["state"] == "ready" and gw.model("m")["ttl_s"] == 600
    assert gw.http.post("/api/chat", json={**chat, "keep_alive": "2m"}).status_code == 200
    assert gw.model("m")["ttl_s"] == 120


# -- 2. the Host allow-list -----------------------------------------------------------------


def rebound(port: int, name: str = "evil.example") -> dict[str, str]:
    """What a browser sends after a DNS rebinding: the attacker's name, same-origin."""
    return {
        "Host": f"{name}:{port}",
        "Origin": f"http://{name}:{port}",
        "Sec-Fetch-Site": "same-origin",
        "Content-Type": "application/json",
    }


def test_a_rebound_name_is_refused_before_the_cross_site_rule(gateway):
    """Reproduced: with auth off, a page at evil.example (rebound to 127.0.0.1) drove the admin
    API. A Host that is not the gateway's is now a 403, in the asked API's shape."""
    gw = gateway({"models": {"m": {"engine": "command", "cmd": fake_cmd()}}})
    headers = rebound(gw.port)
    load = httpx.post(f"{gw.url}/admin/models/m/load", headers=headers, content=b"{}")
    assert load.status_code == 403 and "evil.example" in load.json()["error"]["message"]
    assert gw.model("m")["state"] == "stopped"
    tags = httpx.get(f"{gw.url}/api/tags", headers=headers)
    assert tags.status_code == 403 and isinstance(tags.json()["error"], str)
    chat = httpx.post(
        f"{gw.url}/v1/messages",
        headers=headers,
        content=b'{"model":"m","max_tokens":1,"messages":[]}',
    )
    assert chat.status_code == 403 and chat.json()["error"]["type"] == "permission_error"
    for host in ("localhost", "a.localhost", "127.0.0.2", "[::1]", "127.0.0.1"):
        assert httpx.get(f"{gw.url}/health", headers={"Host": f"{host}:{gw.port}"}).is_success
    assert gw.model("m")["state"] == "stopped"


@pytest.mark.parametrize("listed", [["gw.lan"], ["*"]])
def test_allowed_hosts_from_the_file_are_let_in(gateway, listed):
    """`allowed_hosts` names more (any case), `*` any; the machine's own name is always let in."""
    gw = gateway(
        {"allowed_hosts": listed, "models": {"m": {"engine": "command", "cmd": fake_cmd()}}}
    )
    resp = httpx.get(f"{gw.url}/health", headers={"Host": f"GW.lan:{gw.port}"})
    assert resp.status_code == 200
    machine = httpx.get(f"{gw.url}/health", headers={"Host": f"{socket.gethostname()}:1"})
    assert machine.status_code == 200
    other = httpx.get(f"{gw.url}/health", headers={"Host": "other.example"})
    assert other.status_code == (200 if listed == ["*"] else 403)


# -- 3. durations ---------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["9" * 400, 1e308, -1e308, "99999999999h", -5, "-1m"])
def test_a_huge_or_negative_keep_alive_never_breaks_the_list_of_running_models(gateway, value):
    """Reproduced: a keep_alive of 400 digits or 1e308 was stored and /api/ps answered 500 for
    everyone. Past the bound (or negative) it means kept loaded, as Ollama's negative does."""
    gw = gateway({"models": {"m": {"engine": "command", "cmd": fake_cmd()}}})
    resp = gw.http.post("/api/generate", json={"model": "m", "prompt": "", "keep_alive": value})
    assert resp.status_code == 200, resp.text
    ps = gw.http.get("/api/ps")
    assert ps.status_code == 200, ps.text
    assert ps.json()["models"][0]["expires_at"].startswith("2318")
    assert gw.model("m")["ttl_s"] == 0  # never stopped for idleness


@pytest.mark.parametrize("value", ["inf", "nan", "1e400s", "5 parsecs"])
def test_a_keep_alive_that_is_no_duration_is_a_400(gateway, value):
    gw = gateway({"models": {"m": {"engine": "command", "cmd": fake_cmd()}}})
    resp = gw.http.post("/api/generate", json={"model": "m", "prompt": "", "keep_alive": value})
    assert resp.status_code == 400 and "keep_alive" in resp.json()["error"]
    assert gw.http.get("/api/ps").status_code == 200


# -- 4, 5. one body limit and one depth limit for every route -----------------------------------

SHAPES = {
    "/api/show": "ollama",
    "/api/pull": "ollama",
    "/api/delete": "ollama",
    "/api/chat": "ollama",
    "/v1/models/unload": "openai",
    "/admin/models/m/load": "openai",
    "/admin/reload": "openai",
    "/v1/models/download": "openai",
    "/v1/chat/completions": "openai",
    "/v1/messages": "anthropic",
}


def error_of(resp: httpx.Response, shape: str) -> str:
    body = resp.json()
    if shape == "ollama":
        return body["error"]
    if shape == "anthropic":
        assert body["type"] == "error"
    return body["error"]["message"]


def send(gw, path: str, content: bytes | object) -> httpx.Response:
    method = "DELETE" if path == "/api/delete" else "POST"
    headers = {"content-type": "application/json"}
    return gw.http.request(method, path, content=content, headers=headers)  # type: ignore[arg-type]


@pytest.mark.parametrize("chunked", [False, True])
def test_the_body_limit_holds_on_every_route(gateway, chunked):
    """Reproduced: /api/show, /api/pull, /api/delete and the admin routes read bodies of any size
    into memory. Every route now answers 413 past max_body_mb, with Content-Length or chunked."""
    gw = gateway({"max_body_mb": 1, "models": {"m": {"engine": "command", "cmd": fake_cmd()}}})
    big = b'{"model": "m", "pad": "' + b"x" * (2 << 20) + b'"}'
    for path, shape in SHAPES.items():
        content = iter([big[i : i + 65536] for i in range(0, len(big), 65536)]) if chunked else big
        resp = send(gw, path, content)
        assert resp.status_code == 413, f"{path}: {resp.status_code} {resp.text[:200]}"
        assert "max_body_mb" in error_of(resp, shape), path
    assert gw.model("m")["state"] == "stopped"


def deep(depth: int) -> bytes:
    return b'{"model": "m", "x": ' + b"[" * depth + b"]" * depth + b"}"


def test_a_body_nested_too_deep_is_a_400_on_every_route(gateway):
    """Reproduced: bodies nested 255-1024 levels deep were parsed, then refused when serialised
    again: a 500 on every route. They are a 400 at parse now, in the asked API's shape."""
    gw = gateway({"models": {"m": {"engine": "command", "cmd": fake_cmd()}}})
    for path, shape in SHAPES.items():
        for depth in (300, 1000):
            resp = send(gw, path, deep(depth))
            assert resp.status_code == 400, f"{path} {depth}: {resp.status_code} {resp.text[:200]}"
            assert "nested" in error_of(resp, shape), path
    shallow = gw.http.post(
        "/v1/chat/completions",
        json={"model": "m", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}],
              "x": [[[[[[[[1]]]]]]]]},
    )  # fmt: skip
    assert shallow.status_code == 200


# -- 6. engine errors in the asked API's shape ------------------------------------------------


@pytest.mark.parametrize(("kind", "status", "error_type"), [
    ("json", 400, "invalid_request_error"), ("text", 500, "api_error"),
])  # fmt: skip
def test_a_native_anthropic_engine_error_comes_in_anthropics_shape(
    gateway, kind, status, error_type
):
    """Reproduced: relayed natively, llama-server's {"error": {"code": 400, ...}} or a text/plain
    500 reached Anthropic clients as it was. It is Anthropic's error shape now."""
    cmd = fake_cmd("--messages-error", kind)
    gw = gateway({"models": {"m": {"engine": "command", "cmd": cmd, "native_apis": ["anthropic"]}}})
    body = {"model": "m", "max_tokens": 4, "messages": [{"role": "user", "content": "x"}]}
    for stream in (False, True):
        resp = gw.http.post("/v1/messages", json={**body, "stream": stream})
        assert resp.status_code == status, resp.text
        assert resp.headers["content-type"].startswith("application/json")
        error = resp.json()
        assert error["type"] == "error" and error["error"]["type"] == error_type, error
        assert "context" in error["error"]["message"]


# -- 8. strict `stream` ---------------------------------------------------------------------


@pytest.mark.parametrize("value", ["yes", "false", 1, 0, [], {}])
def test_stream_that_is_not_a_boolean_is_a_400(gateway, value):
    """Reproduced: "yes" and "false" were taken one way or the other; the real APIs answer 400."""
    gw = gateway({"models": {"m": {"engine": "command", "cmd": fake_cmd()}}})
    msgs = [{"role": "user", "content": "x"}]
    for path, shape in (("/v1/chat/completions", "openai"), ("/v1/messages", "anthropic"),
                        ("/api/chat", "ollama"), ("/api/generate", "ollama")):  # fmt: skip
        body = {"model": "m", "max_tokens": 2, "messages": msgs, "prompt": "x", "stream": value}
        resp = gw.http.post(path, json=body)
        assert resp.status_code == 400, f"{path}: {resp.status_code} {resp.text[:200]}"
        assert "stream" in error_of(resp, shape)


def test_stream_null_means_the_apis_default(gateway):
    gw = gateway({"models": {"m": {"engine": "command", "cmd": fake_cmd()}}})
    msgs = [{"role": "user", "content": "x"}]
    chat = gw.http.post(
        "/v1/chat/completions",
        json={"model": "m", "max_tokens": 2, "messages": msgs, "stream": None},
    )
    assert chat.status_code == 200 and chat.json()["object"] == "chat.completion"
    ollama = gw.http.post("/api/chat", json={"model": "m", "messages": msgs, "stream": None})
    assert ollama.status_code == 200  # Ollama's default: streamed, NDJSON lines
    assert ollama.headers["content-type"].startswith("application/x-ndjson")


# -- 9. a 404 lists only what the key may use ------------------------------------------------


def test_an_unknown_model_lists_only_the_models_the_key_may_use(gateway):
    """Reproduced: the 404 named every configured model, those of other keys included."""
    models = {
        "shared": {"engine": "command", "cmd": fake_cmd()},
        "secret-finance": {"engine": "command", "cmd": fake_cmd(), "api_keys": ["k-fin"]},
    }
    gw = gateway(keyed(**models), key=ADMIN)
    for path in ("/v1/chat/completions", "/api/chat", "/v1/messages"):
        body = {"model": "nope", "max_tokens": 1, "messages": [{"role": "user", "content": "x"}]}
        resp = gw.http.post(path, json=body, headers=bearer(USER))
        assert resp.status_code == 404
        assert "shared" in resp.text and "secret-finance" not in resp.text, resp.text
    admin = gw.http.post("/v1/chat/completions", json={"model": "nope", "messages": []})
    assert "secret-finance" in admin.text  # an admin key may use every model


def test_a_field_of_the_wrong_type_is_named_by_its_path_and_not_echoed(gateway):
    """Review suspicion: FastAPI's validation 400 answered str(exc.errors()), a Python repr that
    echoes what was sent; now the field's path and what is wrong with it, nothing else."""
    gw = gateway({"models": {"m": {"engine": "command", "cmd": fake_cmd()}}})
    resp = gw.http.post("/v1/models/unload", json={"model": ["marker-23g"]})
    assert resp.status_code == 400, resp.text
    message = resp.json()["error"]["message"]
    assert message.startswith("model: "), message
    assert "marker-23g" not in resp.text and "'type'" not in resp.text, resp.text
