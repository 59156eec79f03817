"""Hostile or careless input: file names from a hub, corrupt downloads, blank keys, other sites'
pages, and engine output that only admins may read."""

from __future__ import annotations

import json
import subprocess
import sys

import httpx
import pytest

from tests.conftest import fake_cmd, wait_until
from tests.integration.test_downloads import ADMIN, blob, finished, start_gateway
from vramgate.auth import presented_key

API = "k-user-7f2"


@pytest.mark.parametrize("listed", ["../../escape.bin", "/tmp/vramgate-escape.bin", "a/../../x"])
def test_a_hub_file_name_that_leads_out_is_refused(gateway, hub, tmp_path, listed):
    """Reproduced: the download wrote outside models_dir when the hub listed `..` or an
    absolute path. Now the job is refused and nothing is written anywhere."""
    models_dir = tmp_path / "deep" / "er" / "models"
    folder = hub.repo("evil/repo", {"ok.txt": "fine", "weights.bin": blob(0.1)})
    (folder / ".names.json").write_text(json.dumps({"weights.bin": listed}))
    gw = start_gateway(gateway, models_dir)
    resp = gw.http.post("/v1/models/download", json={"repo": "evil/repo"})
    assert resp.status_code == 400
    assert "unsafe name" in resp.json()["error"]["message"]
    assert not (tmp_path / "deep" / "escape.bin").exists()
    assert not (tmp_path / "escape.bin").exists()
    assert not list(models_dir.rglob("*")) if models_dir.exists() else True
    assert not any(r[1].endswith("weights.bin") for r in hub.requests())


def test_a_corrupt_download_fails_its_checksum_and_leaves_no_file(gateway, make_hub, tmp_path):
    """The hub serves a file whose last byte is flipped (--corrupt), under the right size and
    checksum: the SHA-256 check fails the job and nothing whole-looking is left."""
    hub = make_hub("--corrupt")
    hub.repo("acme/weights", {"model.safetensors": blob(1.5)})
    models_dir = tmp_path / "models"
    gw = start_gateway(gateway, models_dir)
    job = gw.http.post("/v1/models/download", json={"repo": "acme/weights"}).json()
    done = finished(gw, job["id"])
    assert done["state"] == "failed"
    assert "SHA-256 does not match" in done["error"]
    target = models_dir / "acme" / "weights"
    assert not (target / "model.safetensors").exists()
    assert not (target / "model.safetensors.part").exists()


def test_a_blank_key_from_the_environment_is_a_config_error(tmp_path):
    """Reproduced: `${env.X}` with X set to "" was matched by a header holding a non-breaking
    space (str.strip() removed it), opening status and admin routes."""
    path = tmp_path / "vramgate.yaml"
    path.write_text("auth:\n  admin_keys: ['${env.VRAMGATE_TEST_BLANK}']\n")
    env = {"VRAMGATE_TEST_BLANK": "", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "vramgate", "check", str(path)],
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert done.returncode == 1
    assert "auth.admin_keys: key [0] is empty" in done.stderr


def test_a_non_breaking_space_is_not_an_empty_key():
    """Only HTTP's own whitespace is trimmed: U+00A0 stays a (wrong) key."""
    assert presented_key([(b"authorization", b"Bearer \xa0")]) == "\xa0"
    assert presented_key([(b"x-api-key", b" \t ")]) is None
    assert presented_key([(b"authorization", b"Bearer  k1 ")]) == "k1"


def open_gateway(gateway):
    return gateway({"models": {"m": {"engine": "command", "cmd": fake_cmd()}}})


def test_another_sites_page_cannot_unload_or_start_models(gateway):
    """With auth off, a page on any site could POST to the gateway (a form, or fetch with a
    text/plain body): browsers say so with Origin / Sec-Fetch-Site, and it is refused."""
    gw = open_gateway(gateway)
    evil = {"Origin": "http://evil.example", "Content-Type": "text/plain"}
    body = json.dumps({"model": "m", "prompt": "x"})
    assert gw.http.post("/v1/completions", content=body, headers=evil).status_code == 403
    assert gw.http.post("/admin/models/m/load", headers=evil).status_code == 403
    site = {"Sec-Fetch-Site": "cross-site"}
    assert gw.http.post("/v1/models/unload-all", headers=site).status_code == 403
    assert gw.model("m")["state"] == "stopped"
    # The gateway's own page (same origin) and programs (no Origin) are served.
    same = {"Origin": gw.url, "Sec-Fetch-Site": "same-origin"}
    assert gw.http.post("/admin/models/m/load", headers=same).status_code == 200
    assert gw.http.post("/v1/completions", json={"model": "m", "max_tokens": 1}).status_code == 200


def test_admin_routes_take_json_bodies_only(gateway):
    gw = open_gateway(gateway)
    form = {"Content-Type": "application/x-www-form-urlencoded"}
    resp = gw.http.post("/v1/models/unload", content="model=m", headers=form)
    assert resp.status_code == 415
    assert resp.json()["error"]["code"] == "unsupported_media_type"
    assert gw.http.post("/v1/models/unload", json={"model": "m"}).status_code == 200


def test_engine_output_reaches_admin_keys_only(gateway):
    """An engine's output can hold paths, tokens in URLs, prompts: plain keys get the error
    without it (and no event carries it); admin keys get it, as the log route gives it."""
    bad = {"engine": "command", "cmd": fake_cmd("--fail-start")}
    config = {"auth": {"api_keys": [API], "admin_keys": [ADMIN]}, "models": {"bad": bad}}
    gw = gateway(config, key=ADMIN)
    as_user = httpx.post(
        f"{gw.url}/v1/completions", json={"model": "bad"}, headers={"x-api-key": API}, timeout=30
    )
    assert as_user.status_code == 503
    message = as_user.json()["error"]["message"]
    assert "exited with code 3" in message and "admin log route" in message
    assert "failed to load model" not in message
    as_admin = gw.http.post("/v1/completions", json={"model": "bad"})
    assert "failed to load model (--fail-start)" in as_admin.json()["error"]["message"]
    events = gw.http.get("/gateway/status", headers={"x-api-key": API}).json()["events"]
    assert events and not any("failed to load model" in e["message"] for e in events)
    assert wait_until(lambda: "failed to load model" in gw.engine_log("bad"), 5)
