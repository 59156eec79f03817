"""A streamed request that waits for a cold start keeps its connection alive (SSE comment lines
for OpenAI's streams), and a start that then fails ends the stream with an error event."""

from __future__ import annotations

import json

import httpx

from tests.conftest import fake_cmd


def test_a_long_cold_start_keeps_an_openai_stream_alive_and_a_failed_one_ends_it(gateway):
    slow = {"engine": "command", "cmd": fake_cmd("--load-delay", "2.5")}
    broken = {"engine": "command", "cmd": fake_cmd("--load-delay", "2.5", "--fail-start")}
    gw = gateway({"stream_keepalive_s": 1, "models": {"slow": slow, "broken": broken}})
    body = {"model": "slow", "prompt": "x", "max_tokens": 2, "stream": True}
    with httpx.stream("POST", f"{gw.url}/v1/completions", json=body, timeout=30) as resp:
        assert resp.status_code == 200
        lines = [line for line in resp.iter_lines() if line]
    # One every second of a 2.5 s start: at least two, more on a loaded machine.
    pings = next(i for i, line in enumerate(lines) if line != ": keep-alive")
    assert pings >= 2, lines
    assert lines[-1] == "data: [DONE]" and "tok0" in lines[pings]
    with httpx.stream("POST", f"{gw.url}/v1/completions", json={**body, "model": "broken"},
                      timeout=30) as resp:  # fmt: skip
        lines = [line for line in resp.iter_lines() if line]
    assert lines[0] == ": keep-alive"
    error = json.loads(lines[-1][6:])["error"]
    assert error["code"] == "engine_start_failed" and "failed to start" in error["message"]
    # A quick start sends none, and a non-streamed request never does.
    fast = httpx.post(f"{gw.url}/v1/completions", json={**body, "stream": False}, timeout=30)
    assert fast.status_code == 200 and fast.json()["choices"][0]["text"] == "tok0 tok1 "
