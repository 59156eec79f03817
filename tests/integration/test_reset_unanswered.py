"""Requests an engine reset unanswered (upstream.ResetUnanswered: a reset with no FIN before it
and no byte of an answer). Killed with them unread in its sockets (stopped, then SIGKILL: what an
OOM kill of a busy engine does), the engine is gone and so is any copy of them: they are sent
again to its restart and answered. Before, each was a 502 ("the engine closed the connection
mid-answer (Connection reset by peer)"; CI: a request that met a Ray node's guard as its agent
died). An engine that resets a request it read whole and lives on may have run it: a 502, and
it is never sent a second time; nor is one that an engine reads whole and then crashes on, or
that the gateway's own stop ends (the review's repros)."""

from __future__ import annotations

import os
import signal
import sys
import threading
import time
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from tests.conftest import fake_cmd, gateway, pid_alive, wait_until  # noqa: F401  (the fixture)
from tests.integration.scripted import LOOPS, Peer, Scripted, framed, run
from vramgate.upstream import Broken, ResetUnanswered, UpstreamPool

RAW = Path(__file__).with_name("raw_reset_engine.py")


def test_requests_unread_by_a_killed_engine_are_answered_by_its_restart(gateway):  # noqa: F811
    """Its process stopped (nothing reads), three requests sent (one on the kept-alive
    connection, two queued at its listener, one of them streamed), then SIGKILL: all three are
    answered by the restarted engine."""
    gw = gateway({"models": {"m": {"engine": "command", "cmd": fake_cmd(), "ttl": 60}}})
    client = gw.client.with_options(max_retries=0, timeout=60)
    assert client.completions.create(model="m", prompt="x", max_tokens=2).choices[0].text
    pid = gw.model("m")["pid"]
    results: list[object] = []

    def plain() -> None:
        try:
            results.append(client.completions.create(model="m", prompt="x", max_tokens=2)
                           .choices[0].text)  # fmt: skip
        except openai.APIError as exc:
            results.append(exc)

    def streamed() -> None:
        try:
            pieces = client.completions.create(model="m", prompt="x", max_tokens=2, stream=True)
            results.append("".join(c.choices[0].text for c in pieces if c.choices))
        except openai.APIError as exc:
            results.append(exc)

    os.kill(pid, signal.SIGSTOP)
    threads = [threading.Thread(target=f, daemon=True) for f in (plain, plain, streamed)]
    try:
        for thread in threads:
            thread.start()
        assert wait_until(lambda: gw.model("m")["in_flight"] == 3, 10), gw.model("m")
        time.sleep(0.3)  # written, unread
    finally:
        os.kill(pid, signal.SIGKILL)
    for thread in threads:
        thread.join(60)
    assert results == ["tok0 tok1 "] * 3, results
    assert gw.model("m")["pid"] not in (None, pid)
    assert not pid_alive(pid)


def reset_config(seen: Path, *knobs: str, **model: Any) -> dict[str, Any]:
    cmd = " ".join([sys.executable, str(RAW), "--port", "${PORT}", "--count", str(seen), *knobs])
    return {"models": {"p": {"engine": "command", "cmd": cmd, "ttl": 60, **model}}}


def poison(gw) -> httpx.Response:
    return gw.http.post("/v1/completions", json={"model": "p", "prompt": "POISON"}, timeout=30)


def test_a_live_engine_that_resets_a_request_it_read_gets_it_once(gateway, tmp_path):  # noqa: F811
    """It read the request whole, then closed abortively (a reset, no FIN) and lives on: it may
    have run it, so the client gets a 502 and the engine never sees it a second time."""
    seen = tmp_path / "posts"
    gw = gateway(reset_config(seen))
    answer = poison(gw)
    assert answer.status_code == 502, answer.text
    assert "reset" in answer.json()["error"]["message"]
    time.sleep(2.5)  # the relay's wait for an exit (2 s), and any second try after it
    assert seen.read_text().count("POISON") == 1, seen.read_text()
    assert gw.model("p")["state"] == "ready"  # it lives: nothing restarted it


def test_an_engine_that_read_a_request_then_crashed_never_gets_it_again(gateway, tmp_path):  # noqa: F811
    """Review: it read the request whole, reset it and exited of itself (a poison prompt that
    crashes it): the request was sent again to the restart, which crashed too, and another
    user's stream on that restart died with it. Only an outright kill of the engine by nothing
    of the gateway's (SIGKILL, its node lost) sends a request again."""
    seen = tmp_path / "posts"
    gw = gateway(reset_config(seen, "--exit-after", "0.3", "--chunks", "25", "--start-delay", "1"))
    with gw.http.stream("POST", "/v1/completions",
                        json={"model": "p", "prompt": "x", "stream": True}) as warm:  # fmt: skip
        assert warm.status_code == 200, warm.read()
        warm.read()
    out: dict[str, Any] = {}

    def other() -> None:  # a user whose stream lands on the restarted engine
        with (
            httpx.Client(base_url=gw.url, timeout=30) as client,
            client.stream(
                "POST", "/v1/completions", json={"model": "p", "prompt": "x", "stream": True}
            ) as answer,
        ):
            out["other"] = (answer.status_code, answer.read().decode())

    def poisoned() -> None:
        out["poison"] = poison(gw).status_code

    threads = [threading.Thread(target=poisoned, daemon=True)]
    threads[0].start()
    assert wait_until(lambda: seen.read_text().count("POISON") == 1, 10)
    time.sleep(0.5)  # it exits; the model starts again (1 s), and the other user asks
    threads.append(threading.Thread(target=other, daemon=True))
    threads[1].start()
    for thread in threads:
        thread.join(30)
    time.sleep(2.5)  # any second try
    assert out["poison"] == 502
    assert seen.read_text().count("POISON") == 1, seen.read_text()
    status, body = out["other"]
    assert status == 200 and "[DONE]" in body, out["other"]


def test_an_unload_while_the_relay_waits_never_sends_it_again(gateway, tmp_path):  # noqa: F811
    """Review: the engine reset a request it read and lived on; an unload (a short drain) then
    stopped it within the relay's 2 s wait, whose exit was taken for the reset's cause: the
    request was sent again and the unloaded model started for it. The gateway's own stops
    prove nothing of what the engine had read."""
    seen = tmp_path / "posts"
    gw = gateway({"drain_timeout": 0.2, **reset_config(seen)})
    out: list[httpx.Response] = []
    asking = threading.Thread(target=lambda: out.append(poison(gw)), daemon=True)
    asking.start()
    assert wait_until(lambda: seen.exists() and "POISON" in seen.read_text(), 15)
    assert gw.http.post("/admin/models/p/unload", timeout=30).status_code == 200
    asking.join(30)
    time.sleep(1)
    assert out and out[0].status_code == 502, out
    assert seen.read_text().count("POISON") == 1, seen.read_text()
    assert gw.model("p")["state"] != "ready", gw.model("p")


@pytest.mark.parametrize("loop", LOOPS)
def test_the_client_tells_a_reset_unanswered_from_one_mid_answer(loop):
    """A reset with nothing answered is ResetUnanswered; after part of an answer (its head), a
    plain Broken, which nothing sends again."""

    def script(peer: Peer) -> None:
        peer.read_request()
        if peer.index == 2:
            peer.send([framed(b"0123456789", "length")[:-5]])
            time.sleep(0.05)
        peer.reset()

    errors: list[BaseException] = []

    async def main() -> None:
        pool = UpstreamPool(read_timeout_s=5)
        try:
            try:
                await pool.post("127.0.0.1", engine.port, "/x", b"{}")
            except Broken as exc:
                errors.append(exc)
            try:
                answer = await pool.post("127.0.0.1", engine.port, "/x", b"{}")
                await answer.read()
            except Broken as exc:
                errors.append(exc)
        finally:
            pool.close()

    with Scripted(script) as engine:
        run(loop, main)
    assert [type(e) for e in errors] == [ResetUnanswered, Broken], errors
    assert engine.requests == 2
