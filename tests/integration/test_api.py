"""The HTTP surface: errors in OpenAI's shape, model list, health, status, admin routes, CLI."""

from __future__ import annotations

import subprocess
import sys

import openai
import pytest

from tests.conftest import fake_cmd

CONFIG = {
    "max_body_mb": 0.01,
    "models": {
        "fake": {"engine": "command", "cmd": fake_cmd(), "aliases": ["f"]},
        "emb": {"engine": "command", "cmd": fake_cmd(), "task": "embed"},
    },
}


@pytest.fixture
def gw(gateway):
    return gateway(CONFIG)


def _error(resp, status: int, code: str) -> str:
    assert resp.status_code == status, resp.text
    error = resp.json()["error"]
    assert error["code"] == code and error["type"]
    return error["message"]


def test_malformed_json_is_400(gw):
    """A body that is not JSON is refused with 400 before any engine starts."""
    resp = gw.http.post("/v1/chat/completions", content=b'{"model": "fake",', headers={})
    assert "not valid JSON" in _error(resp, 400, "bad_request")
    assert gw.model("fake")["starts"] == 0


def test_missing_model_field_is_400(gw):
    """A body without `model` says what is missing."""
    resp = gw.http.post("/v1/chat/completions", json={"messages": []})
    assert "no `model` field" in _error(resp, 400, "bad_request")
    resp = gw.http.post("/v1/chat/completions", json=["not", "an", "object"])
    assert "JSON object" in _error(resp, 400, "bad_request")


def test_unknown_model_is_404_listing_known_names(gw):
    """The 404 for an unknown model names the models that exist, and the openai client agrees."""
    resp = gw.http.post("/v1/chat/completions", json={"model": "nope", "messages": []})
    assert "known models: emb, fake" in _error(resp, 404, "model_not_found")
    with pytest.raises(openai.NotFoundError):
        gw.client.chat.completions.create(model="nope", messages=[])


def test_body_over_max_body_mb_is_413(gw):
    """A body over max_body_mb is refused with 413, declared or streamed."""
    big = b'{"model": "fake", "prompt": "' + b"x" * 20_000 + b'"}'
    resp = gw.http.post("/v1/completions", content=big)
    assert "max_body_mb" in _error(resp, 413, "payload_too_large")

    def chunks():
        yield big

    resp = gw.http.post("/v1/completions", content=chunks())  # chunked, no content-length
    _error(resp, 413, "payload_too_large")


def test_route_the_model_does_not_serve_is_400(gw):
    """An embedding model does not take chat requests; the error says what it serves."""
    resp = gw.http.post("/v1/chat/completions", json={"model": "emb", "messages": []})
    assert "serves /v1/embeddings" in _error(resp, 400, "bad_request")
    emb = gw.client.embeddings.create(model="emb", input="x")
    assert len(emb.data) == 1


def test_unknown_route_is_404_in_openai_shape(gw):
    resp = gw.http.get("/v1/nothing")
    _error(resp, 404, "not_found")


def test_models_list_has_every_model_with_its_state(gw):
    """GET /v1/models lists configured models in OpenAI's shape plus a vramgate field."""
    models = gw.client.models.list()
    ids = [m.id for m in models.data]
    assert ids == ["fake", "emb"]
    raw = gw.http.get("/v1/models").json()["data"][0]
    assert raw["object"] == "model"
    assert raw["vramgate"] == {
        "state": "stopped",
        "engine": "command",
        "task": "generate",
        "aliases": ["f"],
    }


def test_health_and_status_report_running_engines(gw):
    """/health lists running engines; /gateway/status gives pid, port, times, in-flight."""
    assert gw.http.get("/health").json()["engines"] == {}
    gw.client.chat.completions.create(model="f", messages=[], max_tokens=1)
    health = gw.http.get("/health").json()
    assert health["status"] == "ok" and health["engines"] == {"fake": "ready"}
    fake = gw.model("fake")
    assert fake["pid"] and fake["port"] and fake["started_at"] <= fake["ready_at"]
    assert fake["last_used"] >= fake["ready_at"] and fake["in_flight"] == 0
    kinds = [e["kind"] for e in gw.status()["events"]]
    assert kinds == ["start", "ready"]


def test_admin_load_and_unload(gw):
    """Admin routes start and stop a model by name or alias; unknown names are 404."""
    loaded = gw.http.post("/admin/models/f/load").json()
    assert loaded["state"] == "ready" and loaded["name"] == "fake"
    unloaded = gw.http.post("/admin/models/fake/unload").json()
    assert unloaded["state"] == "stopped" and unloaded["pid"] is None
    _error(gw.http.post("/admin/models/zzz/load"), 404, "model_not_found")


def vramgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "vramgate", *args], capture_output=True, text=True, timeout=60
    )


def gw_ram(gw, name: str) -> str:
    model = gw.model(name)
    assert model["device"] == "cpu" and model["ram_source"] == "measured", model
    return str(model["ram_mib"])


def test_cli_ps_load_unload(gw):
    """`vramgate load|ps|unload` drive a running gateway."""
    out = vramgate("load", "fake", "--url", gw.url)
    assert out.returncode == 0 and "fake: ready" in out.stdout
    table = vramgate("ps", "--url", gw.url).stdout.splitlines()
    assert table[0].split()[:3] == ["MODEL", "ENGINE", "STATE"]
    # No GPU here (none simulated): on the CPU (device auto), its RAM measured once it started.
    assert table[1].split()[:6] == ["fake", "command", "ready", "cpu", "RAM", gw_ram(gw, "fake")]
    assert table[2].split()[:3] == ["emb", "command", "stopped"]
    out = vramgate("unload", "fake", "--url", gw.url)
    assert out.returncode == 0 and "fake: stopped" in out.stdout
    out = vramgate("load", "nope", "--url", gw.url)
    assert out.returncode == 1 and "known models" in out.stderr


def test_cli_reports_an_unreachable_gateway():
    out = vramgate("ps", "--url", "http://127.0.0.1:9")
    assert out.returncode == 1 and "cannot reach the gateway" in out.stderr


def test_check_names_file_key_path_and_expectation(tmp_path):
    """`vramgate check` exits 1 naming the file, the key path and what was expected."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("models:\n  gemma:\n    engine: llamacpp\n    source: /m.gguf\n    ttl: -5\n")
    out = vramgate("check", str(bad))
    assert out.returncode == 1
    assert str(bad) in out.stderr
    assert "models.gemma.ttl: Input should be greater than or equal to 0, got -5" in out.stderr
    good = tmp_path / "good.yaml"
    good.write_text("models:\n  gemma:\n    engine: llamacpp\n    source: /m.gguf\n")
    out = vramgate("check", str(good))
    assert out.returncode == 0 and "ok, 1 model(s): gemma" in out.stdout


def test_serve_refuses_a_bad_config(tmp_path):
    """`vramgate serve` with a bad file fails before listening, with the same message."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("port: 8080\nmodles: {}\n")
    out = vramgate("serve", "--config", str(bad))
    assert out.returncode == 1
    assert "modles: unknown key; expected one of: host, port" in out.stderr


def test_config_schema_is_json_schema_of_the_file():
    out = subprocess.run(
        [sys.executable, "-m", "vramgate", "config-schema"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0
    import json

    schema = json.loads(out.stdout)
    assert schema["title"] == "vramgate configuration"
    assert {"models", "auth", "gpus", "models_dir", "drain_timeout"} <= set(schema["properties"])
    assert "api_keys" in schema["$defs"]["ModelConfig"]["properties"]


def test_status_page_is_served_and_can_be_turned_off(gateway):
    on = gateway({"models": {}})
    page = on.http.get("/")
    assert page.status_code == 200 and "<title>vramgate</title>" in page.text
    assert on.http.get("/static/app.js").status_code == 200
    off = gateway({"auth": {"status_page": "off"}, "models": {}})
    assert off.http.get("/").status_code == 404
