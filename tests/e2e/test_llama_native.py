"""llama-server's own API through the gateway, with the real engine and SmolLM2: its native
routes, the default model, /upstream/MODEL/PATH, CORS and its own key (issue 25)."""

from __future__ import annotations

import httpx
import pytest

from tests.e2e.test_llama_server import BINARY, CHAT_GGUF, _require_e2e


def _model(*args: str) -> dict:
    return {"engine": "llamacpp", "source": CHAT_GGUF, "args": ["-c", "512", *args]}


def _config(**extra) -> dict:
    return {"engines": {"llamacpp": {"binary": BINARY}}, **extra}


@pytest.fixture
def smol(gateway):
    """One SmolLM2 model, so the default one; its engine serves /metrics and /slots."""
    _require_e2e(("chat GGUF", CHAT_GGUF))
    return gateway(_config(models={"smol": _model("--metrics", "--slots")}))


def test_completion_route_without_model(smol):
    """llama-server's /completion, with no `model` (one model: the default), whole and
    streamed, as the engine answers it (its own fields: `content`, `tokens_predicted`)."""
    resp = smol.http.post("/completion", json={"prompt": "One, two,", "n_predict": 4})
    assert resp.status_code == 200, resp.text
    body = resp.json()
    assert body["content"] and body["tokens_predicted"] <= 4
    assert resp.headers["server"] == "llama.cpp"  # the engine's, relayed
    with smol.http.stream(
        "POST", "/completion", json={"prompt": "Hi", "n_predict": 3, "stream": True}
    ) as streamed:
        assert streamed.status_code == 200
        assert streamed.headers["content-type"].startswith("text/event-stream")
        lines = [line for line in streamed.iter_lines() if line.startswith("data: ")]
    assert len(lines) >= 2 and '"stop":true' in lines[-1]


def test_tokenize_detokenize_apply_template_props(smol):
    """/tokenize and /detokenize round-trip, /apply-template renders the chat template, GET
    /props (its `model` query parameter, or the default) and POST /props reach the engine."""
    tokens = smol.http.post("/tokenize", json={"content": "Hello world"}).json()["tokens"]
    assert tokens
    text = smol.http.post("/detokenize", json={"tokens": tokens}).json()["content"]
    assert text.strip() == "Hello world"
    messages = [{"role": "user", "content": "hi"}]
    prompt = smol.http.post("/apply-template", json={"messages": messages}).json()["prompt"]
    assert "<|im_start|>user" in prompt
    for path in ("/props", "/props?model=smol"):
        props = smol.http.get(path)
        assert props.status_code == 200, props.text
        assert ".gguf" in props.json()["model_path"]
    assert smol.http.get("/props?model=nope").status_code == 404
    assert smol.http.post("/props", json={}).status_code in (200, 403, 501)  # the engine's say


def test_slots_models_and_unversioned_openai_routes(smol):
    """GET /slots and POST /slots/N (query kept) are the engine's; /models is its list; the
    /v1-less /chat/completions and /completions are llama-server's own routes."""
    slots = smol.http.get("/slots")
    assert slots.status_code == 200 and isinstance(slots.json(), list)
    erased = smol.http.post("/slots/0?action=erase")
    assert erased.status_code == 200, erased.text
    assert erased.json()["id_slot"] == 0
    assert smol.http.get("/models").json()["data"][0]["id"] == "smol"
    chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 2}
    resp = smol.http.post("/chat/completions", json=chat)
    assert resp.status_code == 200 and resp.json()["object"] == "chat.completion"
    resp = smol.http.post("/completions", json={"prompt": "x", "n_predict": 2})
    assert resp.status_code == 200 and "content" in resp.json()  # its own format, not /v1's


def test_upstream_reaches_the_engines_metrics_and_ui(smol):
    """/upstream/MODEL/PATH: the engine's /metrics (the gateway's /metrics is its own) and any
    other path (its web UI's, where built with it), answered as the engine answers, its Server
    header included."""
    metrics = smol.http.get("/upstream/smol/metrics")
    assert metrics.status_code == 200
    assert "llamacpp:prompt_tokens_total" in metrics.text
    assert metrics.headers["server"] == "llama.cpp"
    assert "llamacpp:" not in smol.http.get("/metrics").text
    page = smol.http.get("/upstream/smol/no-such-page")
    assert page.status_code == 404 and page.json()["error"]["message"] == "File Not Found"


def test_default_model_among_two(gateway):
    """Two models: `default_model` takes the requests that name none (native routes too)."""
    _require_e2e(("chat GGUF", CHAT_GGUF))
    models = {"smol": _model(), "other": _model()}
    gw = gateway(_config(models=models, default_model="other"))
    resp = gw.http.post("/completion", json={"prompt": "x", "n_predict": 1})
    assert resp.status_code == 200, resp.text
    assert gw.model("other")["state"] == "ready" and gw.model("smol")["starts"] == 0
    resp = gw.http.post("/tokenize", json={"model": "smol", "content": "a"})
    assert resp.status_code == 200 and gw.model("smol")["starts"] == 1


def test_cors_preflight_for_a_browser_client(gateway):
    """`cors_origins`: a browser page's preflight to /completion is answered, and its request
    carries Access-Control-Allow-Origin."""
    _require_e2e(("chat GGUF", CHAT_GGUF))
    gw = gateway(_config(models={"smol": _model()}, cors_origins=["http://localhost:5173"]))
    origin = {"Origin": "http://localhost:5173"}
    asked = {**origin, "Access-Control-Request-Method": "POST"}
    resp = gw.http.options("/completion", headers=asked)
    assert resp.status_code == 200
    assert resp.headers["access-control-allow-origin"] == "http://localhost:5173"
    resp = gw.http.post("/completion", json={"prompt": "x", "n_predict": 1}, headers=origin)
    assert resp.status_code == 200, resp.text
    assert resp.headers["access-control-allow-origin"] == "http://localhost:5173"


def test_engine_key_from_args(gateway):
    """`--api-key K` in args: llama-server wants K (401 without it), the gateway sends it on
    every route; K is in no argv shown, log or status."""
    _require_e2e(("chat GGUF", CHAT_GGUF))
    secret = "llama-engine-key-42"
    gw = gateway(_config(models={"smol": _model("--api-key", secret)}))
    resp = gw.http.post("/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert resp.status_code == 200, resp.text
    assert gw.http.post("/tokenize", json={"content": "a"}).status_code == 200
    assert gw.http.get("/props").status_code == 200
    assert gw.http.get("/upstream/smol/slots").status_code in (200, 501)
    port = int(gw.model("smol")["url"].rsplit(":", 1)[1])
    assert httpx.post(f"http://127.0.0.1:{port}/tokenize", json={"content": "a"}).status_code == 401
    for shown in (gw.http.get("/gateway/status").text, gw.log(), gw.engine_log("smol")):
        assert secret not in shown
    with open(f"/proc/{gw.model('smol')['pid']}/cmdline", "rb") as f:
        assert secret.encode() not in f.read()


def test_messages_the_engine_judges_itself(smol):
    """A Messages request to an engine that serves /v1/messages is the engine's to judge: an
    empty `messages` list gets llama-server's own answer, not the gateway's 400."""
    body = {"max_tokens": 2, "messages": []}
    direct_kind = smol.http.post("/v1/messages", json=body)
    assert "Field required (a non-empty list" not in direct_kind.text
