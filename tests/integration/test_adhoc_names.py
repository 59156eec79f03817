"""Ad-hoc models (allow_adhoc): one model per file and settings however its path is spelled, a
cap on how many, the key checked before anything is defined, never a configured model's name."""

from __future__ import annotations

import httpx

from tests.conftest import FAKE_RAM, fake_cmd
from tests.integration.test_inventory import build, stand_in

TINY = "acme/tiny-GGUF/tiny-Q4_K_M"


def adhoc_gateway(gateway, tmp_path, monkeypatch, key=None, **config):
    root = build(tmp_path)
    monkeypatch.setenv("VRAMGATE_ENGINES__LLAMACPP__BINARY", stand_in(tmp_path))
    return root, gateway({"models_dir": str(root), "allow_adhoc": True, **config}, key=key)


def complete(gw, model: str | None, **extra) -> httpx.Response:
    body = {"model": model, "prompt": "x", "max_tokens": 1, **extra}
    return gw.http.post("/v1/completions", json=body)


def test_every_spelling_of_a_path_is_one_model_with_one_engine(gateway, tmp_path, monkeypatch):
    """Reproduced: `tiny`, `./tiny`, `.//tiny` and `/abs/./tiny.gguf` each became a model of its
    own, each able to run its own engine of the same file."""
    root, gw = adhoc_gateway(gateway, tmp_path, monkeypatch)
    spellings = [TINY, f"./{TINY}", f".//{TINY}", f"{TINY}.gguf", f"{root}/./{TINY}.gguf"]
    for spelling in spellings:
        resp = complete(gw, spelling)
        assert resp.status_code == 200 and resp.json()["choices"][0]["text"] == "tok0 "
    models = gw.status()["models"]
    assert [m["name"] for m in models] == [TINY]
    assert models[0]["starts"] == 1 and models[0]["requests"] == len(spellings)


def test_ad_hoc_models_are_capped_and_the_oldest_idle_one_goes(gateway, tmp_path, monkeypatch):
    root, gw = adhoc_gateway(gateway, tmp_path, monkeypatch, max_adhoc=2)
    for name in ("a", "b", "c"):
        (root / f"{name}.gguf").write_bytes((root / f"{TINY}.gguf").read_bytes())
    assert complete(gw, "a").status_code == 200
    assert complete(gw, "b").status_code == 200
    # Both have engines: a third has no room.
    third = complete(gw, "c")
    assert third.status_code == 503 and "max_adhoc=2" in third.json()["error"]["message"]
    gw.http.post("/admin/models/a/unload")
    assert complete(gw, "c").status_code == 200  # a, with no engine, made way
    assert sorted(m["name"] for m in gw.status()["models"]) == ["b", "c"]


def test_a_key_scoped_to_one_model_defines_nothing(gateway, tmp_path, monkeypatch):
    """Reproduced: a key scoped to a configured model added (and redefined) ad-hoc models
    before it was refused."""
    _, gw = adhoc_gateway(
        gateway, tmp_path, monkeypatch,
        auth={"admin_keys": ["admin"]},
        models={"own": {"engine": "command", "cmd": "x --port ${PORT}", "api_keys": ["scoped"]}},
        key="admin",
    )  # fmt: skip
    resp = httpx.post(
        f"{gw.url}/v1/completions", json={"model": TINY, "prompt": "x"},
        headers={"Authorization": "Bearer scoped"},
    )  # fmt: skip
    assert resp.status_code == 403 and "not models from models_dir" in resp.text
    assert [m["name"] for m in gw.status()["models"]] == ["own"]
    assert not any(e["kind"] == "adhoc" for e in gw.status()["events"])


def test_an_exclusive_name_never_takes_a_configured_models_place(gateway, tmp_path, monkeypatch):
    """Reproduced: a request for `LABEL@ENGINE-DEVICE` replaced the configured model of that
    name: its keys stopped applying and it served another file."""
    configured = {"engine": "command", "cmd": "x --port ${PORT}", "api_keys": ["k"]}
    _, gw = adhoc_gateway(
        gateway, tmp_path, monkeypatch,
        auth={"admin_keys": ["admin"]},
        models={f"{TINY}@llamacpp-cpu": configured},
        key="admin",
    )  # fmt: skip
    resp = complete(gw, TINY, backend="llamacpp", device="cpu")
    assert resp.status_code == 409 and "never take a configured model's name" in resp.text
    [model] = gw.status()["models"]
    assert model["name"] == f"{TINY}@llamacpp-cpu" and model["engine"] == "command"


def test_long_and_slashed_names_get_their_own_files(gateway, tmp_path, monkeypatch):
    """Reproduced: `a/b` and `a--b` shared an engine log; a name over ~240 bytes with keep_kv
    failed every start (ENAMETOOLONG)."""
    root, gw = adhoc_gateway(gateway, tmp_path, monkeypatch)
    long_dir = root / ("d" * 120) / ("e" * 120)
    long_dir.mkdir(parents=True)
    (long_dir / "m.gguf").write_bytes((root / f"{TINY}.gguf").read_bytes())
    (root / "a").mkdir()
    (root / "a" / "b.gguf").write_bytes((root / f"{TINY}.gguf").read_bytes())
    (root / "a--b.gguf").write_bytes((root / f"{TINY}.gguf").read_bytes())
    long_name = f"{'d' * 120}/{'e' * 120}/m"
    assert complete(gw, long_name, vramgate={"context_length": 512}).status_code == 200
    assert complete(gw, "a/b").status_code == 200
    assert complete(gw, "a--b").status_code == 200
    assert gw.engine_log("a/b") != gw.engine_log("a--b")
    assert "-c 512" in gw.engine_log(long_name)


def test_backend_alone_and_backend_with_a_device_are_two_definitions_two_names(
    gateway, tmp_path, monkeypatch
):
    """Reproduced (review 26): `backend` alone was named `...-cuda` but defined `device: auto`,
    so `backend` with `device: cuda` named the same instance with another definition: 409."""
    _, gw = adhoc_gateway(gateway, tmp_path, monkeypatch)
    assert complete(gw, TINY, backend="llamacpp").status_code == 200
    assert [m["name"] for m in gw.status()["models"]] == [f"{TINY}@llamacpp-auto"]
    cuda = complete(gw, TINY, backend="llamacpp", device="cuda")
    assert cuda.status_code == 200, cuda.text
    auto = complete(gw, TINY, vramgate={"engine": "llamacpp", "device": "auto"})
    assert auto.status_code == 200, auto.text  # the same definition as `backend` alone
    names = sorted(m["name"] for m in gw.status()["models"])
    assert names == [f"{TINY}@llamacpp-auto", f"{TINY}@llamacpp-cuda"]


def test_an_unknown_ad_hoc_name_shows_models_dir_and_others_models_to_admins_only(
    gateway, tmp_path, monkeypatch
):
    """Review suspicion: the ad-hoc 404 showed models_dir's absolute path, and every configured
    name, to any key; a non-admin key now learns neither (as resolve_or_404's 404)."""
    root, gw = adhoc_gateway(
        gateway, tmp_path, monkeypatch,
        auth={"admin_keys": ["admin"], "api_keys": ["user"]},
        models={"secret": {"engine": "command", "cmd": "x --port ${PORT}", "api_keys": ["k"]}},
        key="admin",
    )  # fmt: skip
    asked = {"model": "nope", "prompt": "x"}
    user = httpx.post(f"{gw.url}/v1/completions", json=asked,
                      headers={"Authorization": "Bearer user"})  # fmt: skip
    assert user.status_code == 404, user.text
    assert str(root) not in user.text and "secret" not in user.text, user.text
    admin = complete(gw, "nope")
    assert admin.status_code == 404 and str(root.resolve()) in admin.text, admin.text


def test_the_sole_configured_model_stays_the_default_after_an_ad_hoc_request(
    gateway, tmp_path, monkeypatch
):
    """Reproduced (review, finding 6): define_adhoc adds the ad-hoc model to settings.models,
    which the default counted: after one ad-hoc request, requests naming no model were 400s."""
    solo = {"engine": "command", "cmd": fake_cmd(), **FAKE_RAM}
    _, gw = adhoc_gateway(gateway, tmp_path, monkeypatch, models={"solo": solo})
    assert complete(gw, None).status_code == 200
    assert complete(gw, TINY).status_code == 200
    again = complete(gw, None)
    assert again.status_code == 200, again.text
    assert gw.model("solo")["requests"] == 2 and gw.model(TINY)["requests"] == 1


def test_an_ad_hoc_model_never_becomes_the_default(gateway, tmp_path, monkeypatch):
    """With no configured model, the first ad-hoc one was the sole model, so everyone's default."""
    _, gw = adhoc_gateway(gateway, tmp_path, monkeypatch)
    assert complete(gw, TINY).status_code == 200
    unnamed = complete(gw, None)
    assert unnamed.status_code == 400 and "no default model" in unnamed.text, unnamed.text
    assert gw.model(TINY)["requests"] == 1
