"""The engine routes (native and /upstream) held against a hostile page or user: the engine's
CORS headers never reach a client; the metrics' route label is the route's pattern; the
engine's operator routes take an admin key; a client that hangs up before the answer's head
cancels the engine's request; a cross-site GET starts nothing; a multipart upload goes to its
form's model; a hang-up mid-upload counts as the client's. Each was found by the review of issue
25 (a real gateway; echo_engine.py beside this file stands in for llama-server)."""

from __future__ import annotations

import contextlib
import socket
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import wait_until
from tests.integration.test_inventory import make_gguf

EVIL = "https://evil.example"
ECHO = Path(__file__).with_name("echo_engine.py")


@pytest.fixture
def llama(tmp_path, monkeypatch):
    """A llamacpp model whose llama-server is echo_engine.py."""
    binary = tmp_path / "llama-server"
    binary.write_text(f'#!/bin/sh\nexec {sys.executable} {ECHO} "$@"\n')
    binary.chmod(0o755)
    monkeypatch.setenv("VRAMGATE_ENGINES__LLAMACPP__BINARY", str(binary))

    def model(name: str, **extra: Any) -> dict[str, Any]:
        path = tmp_path / f"{name}.gguf"
        if not path.exists():
            make_gguf(path)
        return {"engine": "llamacpp", "source": str(path), "ram_mib": 50, "keep_kv": False,
                **extra}  # fmt: skip

    return model


def test_the_engines_cors_headers_never_reach_a_client(gateway, llama):
    """llama-server echoes any Origin: relayed as it was, any page could read /props."""
    gw = gateway({"models": {"m": llama("m")}})
    page = {"Origin": EVIL, "Sec-Fetch-Mode": "cors"}
    for path in ("/props", "/slots", "/upstream/m/props"):
        answer = gw.http.get(path, headers=page)
        assert "access-control-allow-origin" not in answer.headers, (path, answer.headers)
    # Preflights too (no cors_origins: the gateway answers none, the engine's is relayed).
    answer = gw.http.request("OPTIONS", "/upstream/m/props", headers={
        **page, "Access-Control-Request-Method": "GET"})  # fmt: skip
    assert "access-control-allow-origin" not in answer.headers, answer.headers


def test_the_cors_origins_get_the_gateways_own_cors_headers_only(gateway, llama):
    gw = gateway({"cors_origins": ["http://ui.example"], "models": {"m": llama("m")}})
    answer = gw.http.get("/props", headers={"Origin": "http://ui.example"})
    assert answer.status_code == 200
    assert answer.headers.get_list("access-control-allow-origin") == ["http://ui.example"]
    answer = gw.http.get("/props", headers={"Origin": EVIL})
    assert "access-control-allow-origin" not in answer.headers


def test_metrics_label_engine_routes_by_their_pattern(gateway, llama):
    """Any text in /slots/{id}, unauthenticated, once made a series a request."""
    gw = gateway(
        {"auth": {"admin_keys": ["ADMIN"], "metrics": "open"}, "models": {"a": llama("a")}},
        key="ADMIN",
    )
    with httpx.Client(base_url=gw.url, timeout=30) as anonymous:
        for i in range(30):
            assert anonymous.post(f"/slots/{'x' * 300}{i}", json={}).status_code == 401
    text = gw.http.get("/metrics").text
    assert "x" * 300 not in text
    assert 'route="/slots/{id}"' in text


def test_the_engines_operator_routes_take_an_admin_key(gateway, llama):
    """Slot files land where the gateway keeps its own KV caches; GET /slots shows other
    users' requests; POST /props changes the engine for everyone."""
    keys = {"admin_keys": ["ADMIN"], "api_keys": ["USER"]}
    gw = gateway({"auth": keys, "models": {"m": llama("m")}}, key="ADMIN")
    user = {"Authorization": "Bearer USER"}
    assert gw.http.post("/completion", json={"prompt": "hi"}, headers=user).status_code == 200
    assert gw.http.get("/props", headers=user).status_code == 200  # its reading is any user's
    for method, path in (("POST", "/slots/0?action=save"), ("GET", "/slots"), ("POST", "/props"),
                         ("POST", "/lora-adapters"), ("POST", "/tools"),
                         ("GET", "/v1/stream?conv_id=victim"), ("DELETE", "/v1/stream"),
                         ("POST", "/v1/streams/lookup"),
                         ("POST", "/v1/chat/completions/control")):  # fmt: skip
        body = {"filename": "slot-0.bin"} if method == "POST" else None
        answer = gw.http.request(method, path, json=body, headers=user)
        assert answer.status_code == 403, (method, path, answer.status_code, answer.text)
        assert "admin key" in answer.json()["error"]["message"]
        answer = gw.http.request(method, path, json=body)  # the admin key
        assert answer.status_code == 200, (method, path, answer.text)
        assert answer.json()["path"] == path.partition("?")[0]


@pytest.mark.parametrize(("method", "path"), [("GET", "/upstream/m/slow"), ("GET", "/props")])
def test_a_hangup_before_the_answers_head_cancels_the_engines_request(
    gateway, llama, tmp_path, method, path
):
    log = tmp_path / "engine.log"
    gw = gateway({"models": {"m": llama("m", args=["--delay", "8", "--log", str(log)])}})
    assert gw.http.get("/upstream/m/health").status_code == 200  # started: not what is timed
    with httpx.Client(base_url=gw.url, timeout=2) as client, pytest.raises(httpx.ReadTimeout):
        client.request(method, path)
    assert wait_until(lambda: "cancelled" in log.read_text(), 5), log.read_text()
    assert wait_until(lambda: gw.model("m")["in_flight"] == 0, 5)


@pytest.mark.parametrize("path", ["/props?model=b", "/upstream/b/"])
def test_a_cross_site_get_starts_no_engine(gateway, llama, path):
    """With auth off, an <img> on any page would start (and make room for) an engine."""
    gw = gateway({"models": {"a": llama("a"), "b": llama("b")}})
    page = {"Sec-Fetch-Site": "cross-site", "Sec-Fetch-Mode": "no-cors"}
    answer = gw.http.get(path, headers=page)
    assert answer.status_code == 403, answer.text
    assert gw.model("b")["starts"] == 0
    assert gw.http.get(path).status_code == 200  # a program's GET (no such headers) goes on


def test_a_multipart_upload_goes_to_its_forms_model(gateway, llama):
    gw = gateway({"default_model": "a", "models": {"a": llama("a"), "b": llama("b")}})
    with contextlib.suppress(openai.APIError):  # the echo's answer is no transcription
        gw.client.audio.transcriptions.create(model="b", file=("a.wav", b"RIFF0000WAVE"))
    starts = {m["name"]: m["starts"] for m in gw.status()["models"]}
    assert starts == {"a": 0, "b": 1}, starts


def test_a_hangup_mid_upload_is_the_clients_not_the_engines(gateway, llama):
    gw = gateway({"auth": {"metrics": "open"}, "models": {"m": llama("m")}})
    assert gw.http.get("/upstream/m/health").status_code == 200
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(b"POST /upstream/m/up HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                     b"Content-Length: 10000000\r\n\r\n" + b"a" * 65536)  # fmt: skip
        time.sleep(1)

    def counted() -> list[str]:
        text = gw.http.get("/metrics").text
        return [line for line in text.splitlines()
                if line.startswith("vramgate_requests_total") and "/upstream" in line]  # fmt: skip

    assert wait_until(lambda: any('status="499"' in line for line in counted()), 10), counted()
    assert not any('status="502"' in line for line in counted()), counted()


MULTIPART_HEAD = b"Content-Type: multipart/form-data; boundary=XX\r\n"
# Requests whose body (or what may be one) is read before the engine's answer begins: a hang-up
# after it was all read must still cancel (the second review: only bodiless ones did).
AFTER_A_BODY = {
    "upstream POST": b"POST /upstream/m/slow HTTP/1.1\r\nContent-Length: 5\r\n\r\nhello",
    "text/plain POST": b"POST /completion HTTP/1.1\r\nContent-Type: text/plain\r\n"
    b"Content-Length: 2\r\n\r\n{}",
    "multipart, ?model=": b"POST /audio/transcriptions?model=m HTTP/1.1\r\n"
    + MULTIPART_HEAD
    + b"Content-Length: 8\r\n\r\n--XX--\r\n",
    "multipart, form model": b"POST /audio/transcriptions HTTP/1.1\r\n"
    + MULTIPART_HEAD
    + b"Content-Length: 65\r\n\r\n"
    + b'--XX\r\nContent-Disposition: form-data; name="model"\r\n\r\nm\r\n--XX--\r\n',
    "empty chunked GET": b"GET /props HTTP/1.1\r\nTransfer-Encoding: chunked\r\n\r\n0\r\n\r\n",
    "Content-Length: 00": b"GET /props HTTP/1.1\r\nContent-Length: 00\r\n\r\n",
}


@pytest.mark.parametrize("case", list(AFTER_A_BODY))
def test_a_hangup_after_the_body_cancels_the_engines_request(gateway, llama, tmp_path, case):
    log = tmp_path / "engine.log"
    gw = gateway({"models": {"m": llama("m", args=["--delay", "8", "--log", str(log)])}})
    assert gw.http.get("/upstream/m/health").status_code == 200  # started: not what is timed
    line, _, rest = AFTER_A_BODY[case].partition(b"\r\n")
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(line + b"\r\nHost: 127.0.0.1\r\n" + rest)
        assert wait_until(lambda: log.exists() and "start" in log.read_text(), 10)
        time.sleep(0.5)
    assert wait_until(lambda: "cancelled" in log.read_text(), 5), log.read_text()
    assert wait_until(lambda: gw.model("m")["in_flight"] == 0, 5)


@pytest.mark.parametrize("query", ["?model=m", ""])
def test_a_multipart_hangup_mid_upload_counts_499(gateway, llama, query):
    gw = gateway({"auth": {"metrics": "open"}, "models": {"m": llama("m")}})
    assert gw.http.get("/upstream/m/health").status_code == 200
    head = (f"POST /audio/transcriptions{query} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            "Content-Type: multipart/form-data; boundary=XX\r\n"
            "Content-Length: 10000000\r\n\r\n").encode()  # fmt: skip
    part = b'--XX\r\nContent-Disposition: form-data; name="file"; filename="a.wav"\r\n\r\n'
    with socket.create_connection(("127.0.0.1", gw.port)) as sock:
        sock.sendall(head + part + b"a" * 65536)
        time.sleep(1)

    def counted() -> list[str]:
        text = gw.http.get("/metrics").text
        return [line for line in text.splitlines() if line.startswith("vramgate_requests_total")
                and "/audio/transcriptions" in line]  # fmt: skip

    assert wait_until(lambda: any('status="499"' in line for line in counted()), 10), counted()


def test_a_native_json_post_carries_the_clients_own_headers(gateway, llama):
    """llama-server's tools read x-tool-cwd and x-tool-runtime; the client's key for the
    gateway and its cookies stay with the gateway."""
    gw = gateway({"models": {"m": llama("m")}})
    sent = {"x-tool-cwd": "/srv/work", "Authorization": "Bearer gateway-key", "Cookie": "a=b",
            "Accept-Encoding": "gzip", "Expect": "100-continue"}  # fmt: skip
    answer = gw.http.post("/tools", json={"tool": "read_file"}, headers=sent)
    assert answer.status_code == 200, answer.text
    got = answer.json()["headers"]
    assert got["x-tool-cwd"] == "/srv/work"
    assert not {"cookie", "authorization", "expect"} & set(got), got
    assert got.get("accept-encoding") != "gzip"  # the relay reads the answer as it comes
    assert got["content-type"] == "application/json"
