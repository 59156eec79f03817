"""Engine lifecycles: failed starts, crashes, TTL, eviction, stops, and no orphans ever."""

from __future__ import annotations

import asyncio
import re
import signal
import time

import openai
import pytest

from tests.conftest import FAKE_RAM, fake_cmd, pid_alive, stream_beside, wait_until


def model(*knobs: str, **extra) -> dict:
    return {"engine": "command", "cmd": fake_cmd(*knobs), **FAKE_RAM, **extra}


def test_failed_start_is_503_with_the_engine_output(gateway):
    """An engine that exits while starting fails the request at once with its last lines."""
    gw = gateway({"models": {"bad": model("--fail-start")}})
    began = time.monotonic()
    resp = gw.http.post("/v1/chat/completions", json={"model": "bad", "messages": []})
    assert resp.status_code == 503
    error = resp.json()["error"]
    assert error["code"] == "engine_start_failed"
    assert "exited with code 3" in error["message"]
    assert "failed to load model (--fail-start)" in error["message"]
    assert time.monotonic() - began < 5
    assert gw.model("bad")["state"] == "failed"


def test_waiting_requests_all_fail_when_the_start_fails(gateway):
    """Every request waiting on a start that fails gets the 503, not a hang."""
    gw = gateway({"models": {"bad": model("--load-delay", "0.5", "--fail-start")}})

    async def many():
        calls = [gw.aclient.chat.completions.create(model="bad", messages=[]) for _ in range(10)]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = asyncio.run(many())
    assert all(isinstance(r, openai.InternalServerError) and r.status_code == 503 for r in results)
    assert gw.model("bad")["starts"] == 1


def test_engine_refusing_connections_while_loading_becomes_ready(gateway):
    """Like vLLM, an engine may not listen at all until loaded; that is 'not ready yet'."""
    gw = gateway({"models": {"late": model("--listen-after-load", "--load-delay", "1")}})
    reply = gw.client.completions.create(model="late", prompt="x", max_tokens=1)
    assert reply.choices[0].text == "tok0 "
    assert gw.model("late")["starts"] == 1


def test_engine_never_ready_times_out_with_503(gateway):
    """An engine that never becomes ready is stopped after start_timeout and reported."""
    gw = gateway({"models": {"slow": model("--never-ready", start_timeout=1)}})
    resp = gw.http.post("/v1/chat/completions", json={"model": "slow", "messages": []})
    assert resp.status_code == 503
    assert "was not ready after 1 s" in resp.json()["error"]["message"]
    status = gw.model("slow")
    assert status["state"] == "failed" and status["pid"] is None


def test_next_request_after_a_failed_start_tries_again(gateway):
    """A failed model is started anew by the next request."""
    gw = gateway({"models": {"bad": model("--fail-start")}})
    for _ in range(2):
        assert gw.http.post("/v1/completions", json={"model": "bad"}).status_code == 503
    assert gw.model("bad")["starts"] == 2


def test_crash_mid_stream_ends_with_error_event_and_next_request_restarts(gateway):
    """An engine dying mid-stream ends it with an SSE error; the next request restarts it."""
    gw = gateway({"models": {"fake": model("--crash-after-tokens", "3", "--tokens-per-s", "50")}})
    stream = gw.client.chat.completions.create(
        model="fake", messages=[], max_tokens=10, stream=True
    )
    received = ""
    with pytest.raises(openai.APIError, match="failed mid-request"):
        for chunk in stream:
            if chunk.choices:
                received += chunk.choices[0].delta.content or ""
    assert received == "tok0 tok1 tok2 "
    assert wait_until(lambda: gw.model("fake")["state"] == "failed", 5)
    assert "exited with code 17" in gw.model("fake")["last_error"]
    reply = gw.client.chat.completions.create(model="fake", messages=[], max_tokens=2)
    assert reply.choices[0].message.content == "tok0 tok1 "
    assert gw.model("fake")["starts"] == 2


def test_crash_mid_request_is_502(gateway):
    """A non-streamed request whose engine dies gets 502 in OpenAI's shape."""
    gw = gateway({"models": {"fake": model("--crash-after-tokens", "1")}})
    resp = gw.http.post("/v1/chat/completions", json={"model": "fake", "max_tokens": 5})
    assert resp.status_code == 502
    assert resp.json()["error"]["code"] == "engine_unavailable"


def test_ttl_stops_an_idle_engine(gateway):
    """An engine idle for longer than its TTL is stopped and its process is gone."""
    gw = gateway({"models": {"fake": model(ttl=1)}})
    gw.client.completions.create(model="fake", prompt="x", max_tokens=1)
    pid = gw.model("fake")["pid"]
    assert wait_until(lambda: gw.model("fake")["state"] == "stopped", 5)
    assert wait_until(lambda: not pid_alive(pid), 5)
    assert any(e["message"].startswith("stop fake (ttl") for e in gw.status()["events"])


def test_ttl_never_stops_an_engine_with_requests_in_flight(gateway):
    """The TTL clock starts when the last request finishes, not while one streams."""
    gw = gateway({"defaults": {"ttl": 0.5}, "models": {"fake": model("--tokens-per-s", "10")}})
    stream = gw.client.completions.create(model="fake", prompt="x", max_tokens=15, stream=True)
    text, seen = "", set()
    for i, chunk in enumerate(stream):
        text += chunk.choices[0].text
        if i < 10:  # well before the end: the client may lag behind a stream the gateway ended
            seen.add(gw.model("fake")["state"])
    assert seen == {"ready"}  # 1.5 s of streaming, three TTLs: never stopped under it
    assert text.endswith("tok14 ")
    assert gw.model("fake")["starts"] == 1
    assert wait_until(lambda: gw.model("fake")["state"] == "stopped", 5)


def test_ttl_zero_means_never(gateway):
    """ttl: 0 keeps an idle engine running."""
    gw = gateway({"defaults": {"ttl": 0.3}, "models": {"fake": model(ttl=0)}})
    gw.client.completions.create(model="fake", prompt="x", max_tokens=1)
    time.sleep(1.2)
    assert gw.model("fake")["state"] == "ready"


def test_max_running_evicts_the_least_recently_used_idle_engine(gateway):
    """With max_running reached, starting another model stops the least recently used one."""
    gw = gateway({"max_running": 2, "models": {"a": model(), "b": model(), "c": model()}})
    for name in ("a", "b", "a"):
        gw.client.completions.create(model=name, prompt="x", max_tokens=1)
    gw.client.completions.create(model="c", prompt="x", max_tokens=1)
    states = {m["name"]: m["state"] for m in gw.status()["models"]}
    assert states == {"a": "ready", "b": "stopped", "c": "ready"}
    assert any("stop b (lru" in e["message"] for e in gw.status()["events"])


def test_busy_engine_is_not_evicted(gateway):
    """An engine streaming a request is never evicted; the new model waits for it to finish."""
    gw = gateway({"max_running": 1, "models": {"a": model("--tokens-per-s", "10"), "b": model()}})
    began = time.monotonic()
    text, done_a, other_text, other_at, seen = stream_beside(gw, "a", "b")
    assert seen == {"ready"}  # never stopped under the stream (the engine dies at SIGTERM)
    assert text.endswith("tok7 ")
    assert other_text == "tok0 "
    assert other_at >= done_a
    assert time.monotonic() - began < 15


def test_unload_kills_an_engine_that_ignores_sigterm(gateway):
    """SIGTERM, then SIGKILL after stop_timeout, for an engine that ignores the first."""
    gw = gateway({"models": {"stubborn": model("--ignore-sigterm", stop_timeout=0.5)}})
    gw.http.post("/admin/models/stubborn/load")
    pid = gw.model("stubborn")["pid"]
    began = time.monotonic()
    resp = gw.http.post("/admin/models/stubborn/unload")
    assert resp.status_code == 200 and resp.json()["state"] == "stopped"
    assert 0.4 < time.monotonic() - began < 5
    assert not pid_alive(pid)
    assert "ignoring SIGTERM" in gw.engine_log("stubborn")


def _worker_pid(gw, name: str) -> int:
    match = re.search(r"worker pid (\d+)", gw.engine_log(name))
    assert match, gw.engine_log(name)
    return int(match.group(1))


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT, signal.SIGKILL])
def test_gateway_exit_leaves_no_engine(gateway, sig):
    """However the gateway ends, SIGKILL included, its engines and their workers end too."""
    gw = gateway(
        {"models": {"a": model("--spawn-child"), "b": model("--ignore-sigterm", stop_timeout=1)}}
    )
    for name in ("a", "b"):
        gw.http.post(f"/admin/models/{name}/load")
    pids = [*gw.engine_pids(), _worker_pid(gw, "a")]
    assert all(pid_alive(p) for p in pids)
    gw.proc.send_signal(sig)
    gw.proc.wait(30)
    for pid in pids:
        assert wait_until(lambda pid=pid: not pid_alive(pid), 15), f"pid {pid} survived {sig!r}"


def test_missing_engine_binary_is_503_naming_it(gateway):
    """An engine binary that does not exist fails the start with a message naming it."""
    gw = gateway({"models": {"g": {"engine": "command", "cmd": "/nonexistent/srv -p ${PORT}"}}})
    resp = gw.http.post("/v1/completions", json={"model": "g", "prompt": "x"})
    assert resp.status_code == 503
    message = resp.json()["error"]["message"]
    assert "cannot run '/nonexistent/srv': No such file or directory" in message


def test_full_disk_for_the_engine_log_loses_nothing(gateway, tmp_path):
    """A log that cannot be written (ENOSPC) is dropped; the engine keeps serving."""
    gw = gateway({"models": {"fake": model()}})
    logs = gw.state_dir / "logs"
    logs.mkdir(parents=True)
    (logs / "fake.log").symlink_to("/dev/full")  # every write fails with ENOSPC
    reply = gw.client.chat.completions.create(model="fake", messages=[], max_tokens=2)
    assert reply.choices[0].message.content == "tok0 tok1 "
    assert "cannot write its log" in gw.log()
    assert "No space left on device" in gw.log()


def test_unwritable_state_dir_still_serves(gateway, tmp_path):
    """A state_dir that cannot be created does not stop engines from starting."""
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    gw = gateway({"state_dir": str(blocker / "state"), "models": {"fake": model()}})
    reply = gw.client.completions.create(model="fake", prompt="x", max_tokens=1)
    assert reply.choices[0].text == "tok0 "
