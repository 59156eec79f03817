"""API keys: /v1 routes, per-model keys, admin routes, keys from the environment, never shown."""

from __future__ import annotations

import subprocess
import sys

import httpx
import openai
import pytest
import yaml

from tests.conftest import fake_cmd

API, ADMIN, PRIVATE = "k-api-7f3a", "k-admin-91c2", "k-private-5d0e"
CONFIG = {
    "auth": {"api_keys": [API], "admin_keys": ["${env.VRAMGATE_TEST_ADMIN_KEY}"]},
    "models": {
        "open": {"engine": "command", "cmd": fake_cmd()},
        "private": {"engine": "command", "cmd": fake_cmd(), "api_keys": [PRIVATE]},
    },
}


@pytest.fixture
def gw(gateway, monkeypatch):
    monkeypatch.setenv("VRAMGATE_TEST_ADMIN_KEY", ADMIN)
    return gateway(CONFIG, key=ADMIN)


def client(gw, key: str | None) -> openai.OpenAI:
    return openai.OpenAI(base_url=gw.url + "/v1", api_key=key or "", max_retries=0)


def complete(gw, key: str | None, model: str) -> str:
    reply = client(gw, key).completions.create(model=model, prompt="x", max_tokens=1)
    return reply.choices[0].text


def test_keys_open_v1_routes_and_each_model_its_own(gw):
    assert complete(gw, API, "open") == "tok0 "
    assert complete(gw, PRIVATE, "private") == "tok0 "
    assert complete(gw, ADMIN, "private") == "tok0 "  # an admin key opens every model
    with pytest.raises(openai.AuthenticationError, match="the API key is not valid"):
        complete(gw, "k-wrong", "open")
    with pytest.raises(openai.PermissionDeniedError, match="does not open model 'private'"):
        complete(gw, API, "private")  # valid, but that model takes only its own keys
    with pytest.raises(openai.PermissionDeniedError, match="does not open model 'open'"):
        complete(gw, PRIVATE, "open")  # a model's key reaches only that model
    missing = httpx.post(f"{gw.url}/v1/completions", json={"model": "open", "prompt": "x"})
    assert missing.status_code == 401
    assert missing.json()["error"]["code"] == "invalid_api_key"
    assert "Authorization: Bearer KEY" in missing.json()["error"]["message"]
    by_header = httpx.post(
        f"{gw.url}/v1/completions",
        json={"model": "open", "prompt": "x"},
        headers={"x-api-key": API},
    )
    assert by_header.status_code == 200


def test_the_model_list_shows_what_the_key_opens(gw):
    assert [m.id for m in client(gw, PRIVATE).models.list()] == ["private"]
    assert [m.id for m in client(gw, API).models.list()] == ["open"]
    assert [m.id for m in client(gw, ADMIN).models.list()] == ["open", "private"]
    assert httpx.get(f"{gw.url}/v1/models").status_code == 401


def test_admin_routes_need_an_admin_key(gw):
    def unload(key: str) -> httpx.Response:
        headers = {"Authorization": f"Bearer {key}"}
        return httpx.post(f"{gw.url}/v1/models/unload", json={"model": "open"}, headers=headers)

    assert unload(API).status_code == 403
    assert unload("k-wrong").status_code == 401
    assert unload(ADMIN).status_code == 200
    logs = httpx.get(f"{gw.url}/admin/models/open/logs", headers={"x-api-key": API})
    assert logs.status_code == 403 and "admin key" in logs.json()["error"]["message"]
    # Read-only routes take any key; /health none.
    assert httpx.get(f"{gw.url}/gateway/status", headers={"x-api-key": API}).status_code == 200
    assert httpx.get(f"{gw.url}/gateway/status").status_code == 401
    assert httpx.get(f"{gw.url}/health").status_code == 200
    assert httpx.get(f"{gw.url}/metrics").status_code == 401  # auth.metrics: key (default)
    assert httpx.get(f"{gw.url}/metrics", headers={"x-api-key": API}).status_code == 200


def test_keys_never_appear_in_status_errors_or_logs(gw):
    complete(gw, API, "open")
    with pytest.raises(openai.AuthenticationError) as denied:
        complete(gw, "k-wrong-secret", "open")
    status = httpx.get(f"{gw.url}/gateway/status", headers={"x-api-key": ADMIN}).text
    for key in (API, ADMIN, PRIVATE, "k-wrong-secret"):
        assert key not in status
        assert key not in gw.log()
        assert key not in str(denied.value)
    assert "auth: 1 API key(s), 1 admin key(s), 1 model(s) with their own keys" in gw.log()


def test_open_when_no_key_is_configured_and_said_so(gateway):
    gw = gateway({"models": {"m": {"engine": "command", "cmd": fake_cmd()}}})
    assert (
        gw.client.completions.create(model="m", prompt="x", max_tokens=1).choices[0].text == "tok0 "
    )
    assert gw.http.post("/v1/models/unload", json={"model": "m"}).status_code == 200
    assert "no API keys configured: every route is open" in gw.log()


def test_an_unset_environment_variable_is_a_config_error(tmp_path, monkeypatch):
    monkeypatch.delenv("VRAMGATE_TEST_ADMIN_KEY", raising=False)
    path = tmp_path / "vramgate.yaml"
    path.write_text(yaml.safe_dump(CONFIG))
    result = subprocess.run(
        [sys.executable, "-m", "vramgate", "check", str(path)],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert result.returncode == 1
    assert "auth.admin_keys[0]: ${env.VRAMGATE_TEST_ADMIN_KEY} is used but the environment " \
        "variable VRAMGATE_TEST_ADMIN_KEY is not set" in result.stderr  # fmt: skip
