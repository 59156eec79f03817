"""Two edges a hostile client finds: a decoded CR/LF in a path would end the engine's request
line and start headers of the client's choosing (upstream.py writes the path as it is), so a
path with a control character is a 400 on every route; and `/api/delete {"model": "."}` names
models_dir itself when it holds a model at its top, which would remove every model in it."""

from __future__ import annotations

import socket

import httpx
import pytest

from tests.conftest import fake_cmd, gateway  # noqa: F401  (the fixture)
from tests.unit.test_estimate import make_gguf


def raw_request(port: int, target: bytes) -> bytes:
    """The gateway's answer head to `POST target` sent as it is (no client re-encodes it)."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(b"POST " + target + b" HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Type: application/json\r\nContent-Length: 2\r\n\r\n{}")  # fmt: skip
        return sock.recv(65536)


@pytest.mark.parametrize("target", [
    b"/completion%0D%0AX-Injected:%20yes%0D%0A?model=m",
    b"/upstream/m/x%0D%0AX-Injected:%20yes",
    b"/v1/chat/completions%00",
    b"/api/show%0A",
    b"/slots/0%0D%0AX-Injected:%20yes?model=m",  # {id}: llama-server got this line as it is
])  # fmt: skip
def test_a_path_with_a_control_character_is_a_400(gateway, target):  # noqa: F811
    """A %-encoded CR, LF or NUL decodes into the path: refused before anything is relayed,
    and no engine starts."""
    gw = gateway({"models": {"m": {"engine": "command", "cmd": fake_cmd()}}})
    head = raw_request(gw.port, target)
    assert head.startswith(b"HTTP/1.1 400 "), head[:300]
    assert b"control characters" in head, head[:300]
    assert gw.model("m")["state"] == "stopped"


def test_deleting_models_dir_itself_is_refused(gateway, tmp_path):  # noqa: F811
    """models_dir holds a model at its top (config.json, weights) and another in a folder:
    `.` (or models_dir's own path) is a 400, and nothing is removed."""
    models = tmp_path / "models"
    (models / "sub").mkdir(parents=True)
    (models / "config.json").write_text("{}")
    (models / "model.safetensors").write_bytes(b"x" * 64)
    make_gguf(models / "sub" / "a.gguf")
    gw = gateway({"models_dir": str(models), "allow_adhoc": True,
                  "models": {"m": {"engine": "command", "cmd": fake_cmd()}}})  # fmt: skip
    for name in (".", "./", str(models)):
        resp = httpx.request("DELETE", f"{gw.url}/api/delete", json={"model": name}, timeout=30)
        assert resp.status_code == 400, f"{name}: {resp.status_code} {resp.text}"
        assert set(resp.json()) == {"error"}, resp.text
    assert (models / "sub" / "a.gguf").exists() and (models / "model.safetensors").exists()
    resp = httpx.request("DELETE", f"{gw.url}/api/delete", json={"model": "sub/a"}, timeout=30)
    assert resp.status_code == 200, resp.text  # a model inside models_dir still goes
    assert not (models / "sub" / "a.gguf").exists() and (models / "config.json").exists()
