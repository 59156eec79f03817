"""A request that reached an engine is never sent again; one that provably did not (refused, or
a kept-alive connection the engine had closed) is. Against real servers on loopback."""

from __future__ import annotations

import httpx

from tests.conftest import fake_cmd


def model(*knobs: str, **extra) -> dict:
    return {"engine": "command", "cmd": fake_cmd(*knobs), **extra}


def test_engine_that_dies_mid_request_gets_the_prompt_once_and_starts_once(gateway):
    """Reproduced: the engine died mid-answer; the retry met a refused connection, took a new
    lease, started the engine again and sent the prompt a third time; the client read
    'refused the connection'."""
    gw = gateway({"models": {"c": model("--crash-after-tokens", "2")}})
    resp = gw.http.post("/v1/completions", json={"model": "c", "prompt": "x", "max_tokens": 5})
    assert resp.status_code == 502, resp.text
    message = resp.json()["error"]["message"]
    assert "failed mid-request" in message and "refused" not in message, message
    assert gw.model("c")["starts"] == 1
    assert gw.engine_log("c").count("crashing after") == 1


def test_a_stalled_engine_gets_the_request_once_and_a_502_after_read_timeout(gateway):
    """A read timeout is never retried: the engine would run the prompt twice and the client
    would wait twice as long."""
    gw = gateway(
        {"defaults": {"read_timeout": 1}, "models": {"s": model("--stall-after-tokens", "1")}}
    )
    resp = gw.http.post("/v1/completions", json={"model": "s", "prompt": "x", "max_tokens": 5})
    assert resp.status_code == 502 and "sent nothing for 1 s" in resp.json()["error"]["message"]
    stats = httpx.get(gw.model("s")["url"] + "/stats", timeout=5).json()
    assert stats["requests"] == 1 and gw.model("s")["starts"] == 1
