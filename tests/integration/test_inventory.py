"""The inventory of models_dir, and models named by path when `allow_adhoc` is on."""

from __future__ import annotations

import json
import shutil
import sys

import httpx
import pytest

from tests.conftest import safetensors_bytes
from tests.unit.test_estimate import make_gguf

# Stands in for llama-server: prints its command line, then serves as the fake engine.
FAKE_LLAMA_SERVER = """#!{python}
import sys
argv = sys.argv[1:]
print("fake llama-server argv:", " ".join(argv), flush=True)
from vramgate.testing.fake_engine import main
main(["--port", argv[argv.index("--port") + 1]])
"""


def build(tmp_path):
    root = tmp_path / "models"
    (root / "acme" / "tiny-GGUF").mkdir(parents=True)
    make_gguf(root / "acme" / "tiny-GGUF" / "tiny-Q4_K_M.gguf")
    (root / "acme" / "big-GGUF").mkdir(parents=True)
    for part in (1, 2):
        make_gguf(root / "acme" / "big-GGUF" / f"big-Q8_0-0000{part}-of-00002.gguf")
    (root / "acme" / "big-GGUF" / "big-F16.gguf.part").write_bytes(b"half")
    st = root / "acme" / "st-model"
    st.mkdir(parents=True)
    (st / "model.safetensors").write_bytes(safetensors_bytes({"w": ("BF16", [512, 1024])}))
    (st / "config.json").write_text(json.dumps({"num_hidden_layers": 2, "torch_dtype": "bfloat16"}))
    return root


def stand_in(tmp_path):
    script = tmp_path / "llama-server"
    script.write_text(FAKE_LLAMA_SERVER.format(python=sys.executable))
    script.chmod(0o755)
    return str(script)


def test_inventory_lists_models_with_format_quant_engine_estimate(gateway, tmp_path):
    root = build(tmp_path)
    tiny = str(root / "acme" / "tiny-GGUF" / "tiny-Q4_K_M.gguf")
    gw = gateway({"models_dir": str(root), "models": {"t": {"engine": "llamacpp", "source": tiny}}})
    listing = gw.http.get("/v1/models/inventory").json()
    assert listing["models_dir"] == str(root)
    by_name = {m["name"]: m for m in listing["data"]}
    assert sorted(by_name) == [
        "acme/big-GGUF/big-Q8_0",
        "acme/st-model",
        "acme/tiny-GGUF/tiny-Q4_K_M",
    ]
    t = by_name["acme/tiny-GGUF/tiny-Q4_K_M"]
    assert (t["format"], t["quantization"], t["engine"], t["configured_as"]) == (
        "gguf",
        "Q4_K_M",
        "llamacpp",
        ["t"],
    )
    assert t["estimated_mib"] > 3 and t["estimate_basis"] == "GGUF gemma3"
    big = by_name["acme/big-GGUF/big-Q8_0"]
    assert len(big["files"]) == 2 and big["quantization"] == "Q8_0" and not big["configured"]
    assert big["size"] == 2 * (root / "acme/big-GGUF/big-Q8_0-00001-of-00002.gguf").stat().st_size
    st = by_name["acme/st-model"]
    assert (st["format"], st["engine"], st["quantization"]) == ("safetensors", "vllm", "bfloat16")


def test_adhoc_models_by_name_with_per_request_settings(gateway, tmp_path, monkeypatch):
    root = build(tmp_path)
    # The environment wins over the file: scripts/setup.sh points this at the real llama-server.
    monkeypatch.setenv("VRAMGATE_ENGINES__LLAMACPP__BINARY", stand_in(tmp_path))
    gw = gateway(
        {
            "models_dir": str(root),
            "allow_adhoc": True,
            "engines": {"llamacpp": {"binary": stand_in(tmp_path)}},
        }
    )
    name = "acme/tiny-GGUF/tiny-Q4_K_M"
    reply = gw.client.completions.create(
        model=name,
        prompt="x",
        max_tokens=1,
        extra_body={"vramgate": {"context_length": 4096, "ttl": 30}},
    )
    assert reply.choices[0].text == "tok0 "
    status = gw.model(name)
    assert status["state"] == "ready" and status["ttl_s"] == 30
    log = gw.engine_log(name)
    assert f"-m {root}/acme/tiny-GGUF/tiny-Q4_K_M.gguf" in log and "-c 4096" in log
    # Other settings while it runs: refused, not silently ignored.
    other = gw.http.post(
        "/v1/completions", json={"model": name, "prompt": "x", "vramgate": {"context_length": 8192}}
    )
    assert other.status_code == 409 and "unload it first" in other.json()["error"]["message"]
    # Its engine's log is reachable by its name, slashes and all.
    assert gw.http.get(f"/admin/models/{name}/logs").json()["model"] == name


@pytest.mark.parametrize(
    ("model", "status", "says"),
    [
        ("../outside", 400, "must be inside models_dir"),
        ("/etc/passwd", 400, "must be inside models_dir"),
        ("acme/nothing-here", 404, "GET /v1/models/inventory lists what is there"),
    ],
)
def test_adhoc_names_outside_models_dir_or_unknown_are_refused(
    gateway, tmp_path, model, status, says
):
    root = build(tmp_path)
    (tmp_path / "outside.gguf").write_bytes(b"GGUF")
    gw = gateway({"models_dir": str(root), "allow_adhoc": True})
    resp = gw.http.post("/v1/completions", json={"model": model, "prompt": "x"})
    assert resp.status_code == status and says in resp.json()["error"]["message"]
    assert gw.status()["models"] == []


def test_adhoc_is_off_by_default_and_a_symlink_out_is_refused(gateway, tmp_path):
    root = build(tmp_path)
    outside = make_gguf(tmp_path / "elsewhere-Q4_0.gguf")
    (root / "linked-Q4_0.gguf").symlink_to(outside)
    off = gateway({"models_dir": str(root)})
    assert (
        off.http.post("/v1/completions", json={"model": "acme/tiny-GGUF/tiny-Q4_K_M"}).status_code
        == 404
    )
    on = gateway({"models_dir": str(root), "allow_adhoc": True})
    resp = on.http.post("/v1/completions", json={"model": "linked-Q4_0", "prompt": "x"})
    assert resp.status_code == 400 and "leads outside models_dir" in resp.json()["error"]["message"]
    bad = on.http.post(
        "/v1/completions", json={"model": "acme/tiny-GGUF/tiny-Q4_K_M", "vramgate": {"gpu": 1}}
    )
    assert (
        bad.status_code == 400
        and "accepted: context_length, device, engine, gpu_memory_mib, gpu_memory_utilization"
        in bad.text
    )
    for model in ("acme/tiny-GGUF/tiny-Q4_K_M", "acme/nothing-here"):  # not an object: 400
        odd = on.http.post("/v1/completions", json={"model": model, "vramgate": "fast"})
        assert odd.status_code == 400 and "must be an object" in odd.text, odd.text
    assert httpx.get(f"{on.url}/health").status_code == 200
    shutil.rmtree(root)
    assert on.http.get("/v1/models/inventory").json()["data"] == []
