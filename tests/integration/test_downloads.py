"""Downloads from a (local) Hub: jobs through the gateway, resume, cancel, gated, path escape,
full disk, verify-repo, `vramgate pull`."""

from __future__ import annotations

import filecmp
import json
import os
import random
import resource
import signal
import subprocess
import sys

import pytest

from tests.conftest import safetensors_bytes, wait_until
from tests.e2e.test_llama_server import GGUF

ADMIN = "k-admin-3e1"
MIB = 1 << 20


def blob(mib: float, seed: int = 1) -> bytes:
    """Bytes that differ along the file, so that a misplaced resume would show."""
    return random.Random(seed).randbytes(int(mib * MIB))


@pytest.fixture
def models_dir(tmp_path):
    return tmp_path / "models"


def start_gateway(gateway, models_dir, **extra):
    config = {"models_dir": str(models_dir), "auth": {"admin_keys": [ADMIN]}, "models": {}} | extra
    return gateway(config, key=ADMIN)


def download(gw, **body) -> dict:
    resp = gw.http.post("/v1/models/download", json=body)
    assert resp.status_code == 202, resp.text
    return resp.json()


def finished(gw, job_id: str, timeout_s: float = 60) -> dict:
    def state() -> str:
        return gw.http.get(f"/v1/models/download/{job_id}").json()["state"]

    assert wait_until(lambda: state() not in ("queued", "running"), timeout_s)
    return gw.http.get(f"/v1/models/download/{job_id}").json()


def test_download_a_gguf_by_quantization_and_verify_it_first(gateway, hub, models_dir):
    if not os.path.exists(GGUF):
        if os.environ.get("VRAMGATE_REQUIRE_E2E"):
            pytest.fail("needs the gemma GGUF (scripts/setup.sh)")
        pytest.skip("needs the gemma GGUF (scripts/setup.sh)")
    repo = hub.repo("google/gemma-3-270m-GGUF", {"README.md": "# gemma\n", "config.json": "{}"})
    (repo / "gemma-3-270m-Q4_K_M.gguf").symlink_to(GGUF)
    (repo / "gemma-3-270m-Q8_0.gguf").write_bytes(b"GGUF" + b"\0" * 100)  # another quant
    gw = start_gateway(gateway, models_dir)
    check = gw.http.post(
        "/v1/models/verify-repo",
        json={"repo": "https://huggingface.co/google/gemma-3-270m-GGUF", "quantization": "Q4_K_M"},
    ).json()
    assert check["exists"] and not check["gated"]
    assert [f["path"] for f in check["files"]] == [
        "README.md", "config.json", "gemma-3-270m-Q4_K_M.gguf",
    ]  # fmt: skip
    assert check["bytes_total"] == os.path.getsize(GGUF) + len("# gemma\n") + 2
    # The footprint from the GGUF header alone (a Range request), as `vramgate estimate` gives it.
    assert (
        check["estimate"]["basis"] == "GGUF gemma3" and 800 < check["estimate"]["total_mib"] < 1200
    )
    assert not any(r[1].endswith(".gguf") and r[2] is None for r in hub.requests())  # no whole file
    wrong = gw.http.post(
        "/v1/models/verify-repo", json={"repo": "google/gemma-3-270m-GGUF", "quantization": "Q2_K"}
    )
    assert "the repository has Q4_K_M, Q8_0" in wrong.json()["error"]

    job = download(gw, url="https://huggingface.co/google/gemma-3-270m-GGUF", quantization="Q4_K_M")
    done = finished(gw, job["id"])
    assert done["state"] == "done", done
    assert done["bytes_done"] == done["bytes_total"] == check["bytes_total"]
    saved = models_dir / "google" / "gemma-3-270m-GGUF"
    assert filecmp.cmp(saved / "gemma-3-270m-Q4_K_M.gguf", GGUF, shallow=False)
    assert not (saved / "gemma-3-270m-Q8_0.gguf").exists()
    listed = gw.http.get("/v1/models/download").json()["data"]
    assert [j["id"] for j in listed] == [job["id"]]


def test_a_dropped_connection_is_resumed_from_where_it_broke(gateway, make_hub, models_dir):
    hub = make_hub("--fail-after-bytes", str(MIB))
    content = blob(3)
    hub.repo("acme/big", {"model.safetensors": content})
    gw = start_gateway(gateway, models_dir)
    done = finished(gw, download(gw, repo="acme/big")["id"])
    assert done["state"] == "done", done
    assert (models_dir / "acme" / "big" / "model.safetensors").read_bytes() == content
    ranges = [
        r[2] for r in hub.requests() if r[0] == "GET" and r[1] == "acme/big/model.safetensors"
    ]
    assert ranges == [None, f"bytes={MIB}-"]  # picked up where it broke, not restarted


def test_cancel_leaves_no_whole_looking_file_and_a_new_download_resumes(
    gateway, make_hub, models_dir
):
    slow = make_hub("--bytes-per-s", str(2 * MIB))
    content = blob(8, seed=3)
    slow.repo("acme/slow", {"model.safetensors": content})
    gw = start_gateway(gateway, models_dir)
    job = download(gw, repo="acme/slow")
    progress = f"/v1/models/download/{job['id']}"
    assert wait_until(lambda: gw.http.get(progress).json()["bytes_done"] >= MIB, 20)
    assert gw.http.delete(f"/v1/models/download/{job['id']}").status_code == 200
    cancelled = finished(gw, job["id"])
    assert cancelled["state"] == "cancelled"
    folder = models_dir / "acme" / "slow"
    assert not (folder / "model.safetensors").exists()
    partial = folder / "model.safetensors.part"
    assert MIB <= partial.stat().st_size < len(content)
    done = finished(gw, download(gw, repo="acme/slow")["id"])
    assert done["state"] == "done"
    assert (folder / "model.safetensors").read_bytes() == content
    gets = [r for r in slow.requests() if r[1] == "acme/slow/model.safetensors" and r[0] == "GET"]
    last = gets[-1][2]
    assert last is not None and int(last.removeprefix("bytes=").rstrip("-")) >= MIB  # resumed


def test_gated_repo_needs_hf_token(gateway, hub, models_dir, monkeypatch):
    hub.repo(
        "acme/locked",
        {"model.safetensors": safetensors_bytes({"w": ("F16", [64, 64])}), ".gated": ""},
    )
    gw = start_gateway(gateway, models_dir)
    assert (
        gw.http.post("/v1/models/verify-repo", json={"repo": "acme/locked"}).json()["gated"] is True
    )
    failed = finished(gw, download(gw, repo="acme/locked")["id"])
    assert failed["state"] == "failed"
    assert failed["error"] == "acme/locked is gated: accept its terms on the Hub and set HF_TOKEN"
    assert not (models_dir / "acme" / "locked" / "model.safetensors").exists()
    monkeypatch.setenv("HF_TOKEN", hub.token)
    gw2 = start_gateway(gateway, models_dir)
    assert finished(gw2, download(gw2, repo="acme/locked")["id"])["state"] == "done"


def test_bad_requests_are_refused_before_anything_is_fetched(gateway, hub, models_dir):
    hub.repo("acme/tiny", {"config.json": "{}"})
    gw = start_gateway(gateway, models_dir)
    for body, says in (
        ({"repo": "acme/tiny", "destination": "../outside"}, "is outside models_dir"),
        ({"repo": "acme/tiny", "destination": "/etc"}, "must be relative to models_dir"),
        ({"repo": "acme/missing"}, "acme/missing was not found on the Hub"),
        ({"repo": "not a repo"}, "is not a repository id"),
        ({"repo": "acme/tiny", "include": ["*.gguf"]}, "no file of the repository matches"),
    ):
        resp = gw.http.post("/v1/models/download", json=body)
        assert resp.status_code == 400 and says in resp.json()["error"]["message"], resp.text
    assert (
        gw.http.post("/v1/models/download", json={"repo": "acme/tiny", "bogus": 1}).status_code
        == 400
    )
    assert gw.http.get("/v1/models/download/nope").status_code == 404
    assert (
        gw.http.post("/v1/models/verify-repo", json={"repo": "acme/missing"}).json()["exists"]
        is False
    )
    assert not (models_dir / "outside").exists()
    assert gw.http.get("/v1/models/download").json()["data"] == []


def pull(
    args: list[str], models_dir, fsize_limit: int | None = None
) -> subprocess.CompletedProcess:
    def limit() -> None:
        if fsize_limit is not None:  # a file may grow only this far: writes then fail (EFBIG)
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize_limit, fsize_limit))

    env = os.environ | {"VRAMGATE_MODELS_DIR": str(models_dir)}
    return subprocess.run(
        [sys.executable, "-m", "vramgate", "pull", *args],
        capture_output=True, text=True, timeout=120, env=env, preexec_fn=limit,
    )  # fmt: skip


def test_pull_downloads_with_a_progress_bar(hub, models_dir):
    content = blob(2)
    hub.repo("acme/pulled", {"model.safetensors": content, "config.json": json.dumps({"a": 1})})
    result = pull(["acme/pulled", "--exclude", "config.json"], models_dir)
    assert result.returncode == 0, result.stderr
    assert "1 file(s): model.safetensors" in result.stdout
    assert "100%" in result.stderr  # tqdm's bar
    assert (models_dir / "acme" / "pulled" / "model.safetensors").read_bytes() == content
    assert not (models_dir / "acme" / "pulled" / "config.json").exists()


def test_a_full_disk_fails_clearly_and_leaves_no_whole_looking_file(hub, models_dir):
    hub.repo("acme/huge", {"model.safetensors": blob(4)})
    result = pull(["acme/huge"], models_dir, fsize_limit=1 * MIB)
    assert result.returncode == 1
    assert "error: download failed: disk full writing" in result.stderr
    assert "File too large" in result.stderr
    assert not (models_dir / "acme" / "huge" / "model.safetensors").exists()
    assert (models_dir / "acme" / "huge" / "model.safetensors.part").stat().st_size == MIB
