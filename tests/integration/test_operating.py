"""Operating a running gateway: metrics, management routes, log and event streams, reload, drain."""

from __future__ import annotations

import json
import signal
import threading
import time

import httpx
import openai
import pytest
import yaml

from tests.conftest import FAKE_RAM, fake_cmd, pid_alive, wait_until
from tests.integration.test_gpu_memory import ask, engine, gpus


def sse(gw, path: str, until, timeout_s: float = 20) -> list[dict]:
    """Reads SSE `data:` events from `path` until `until(events)` is true."""
    events: list[dict] = []
    with httpx.stream("GET", gw.url + path, timeout=timeout_s) as resp:
        assert resp.status_code == 200
        assert resp.headers["content-type"].startswith("text/event-stream")
        for line in resp.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if until(events):
                    return events
    raise AssertionError(f"stream ended before the condition: {events}")


def metric(text: str, name: str, **labels: str) -> float:
    """The value of one sample of the Prometheus text format."""
    for line in text.splitlines():
        if line.startswith(name + "{") or line.startswith(name + " "):
            sample, value = line.rsplit(" ", 1)
            if all(f'{k}="{v}"' in sample for k, v in labels.items()):
                return float(value)
    raise AssertionError(f"no sample {name} {labels} in:\n{text}")


def test_metrics_count_requests_starts_evictions_and_memory(gateway):
    models = {"a": engine(3000, vram_mib=3000), "b": engine(6000, vram_mib=6000)}
    gw = gateway({"gpus": gpus(8000), "auth": {"metrics": "open"}, "models": models})
    ask(gw, "a")
    raw = gw.http.post("/v1/completions", json={"model": "a", "prompt": "x", "max_tokens": 1})
    overhead_ms = float(raw.headers["x-vramgate-overhead-ms"])
    assert 0 < overhead_ms < 1000
    ask(gw, "b")  # a makes way (lru)
    stream = gw.client.completions.create(model="b", prompt="x", max_tokens=3, stream=True)
    assert len(list(stream)) >= 3
    gw.http.post("/v1/models/unload", json={"model": "b"})
    gw.http.post("/v1/completions", json={"model": "nope", "prompt": "x"})
    text = httpx.get(f"{gw.url}/metrics").text
    ok = {"route": "/v1/completions", "status": "200"}
    assert metric(text, "vramgate_requests_total", model="a", **ok) == 2
    assert metric(text, "vramgate_requests_total", model="b", **ok) == 2
    assert metric(text, "vramgate_requests_total", model="", status="404") == 1
    assert metric(text, "vramgate_engine_starts_total", model="a", result="ready") == 1
    assert metric(text, "vramgate_evictions_total", model="a", reason="lru") == 1
    assert metric(text, "vramgate_evictions_total", model="b", reason="admin") == 1
    assert metric(text, "vramgate_time_to_first_token_seconds_count", model="b") == 1
    assert metric(text, "vramgate_overhead_seconds_count", model="a") == 2
    assert metric(text, "vramgate_gpu_memory_total_bytes", gpu="0") == 8000 * 2**20
    assert metric(text, "vramgate_gpu_memory_used_bytes", gpu="0") == 0
    assert metric(text, "vramgate_footprint_bytes", model="b", source="measured") == 6000 * 2**20
    assert metric(text, "vramgate_in_flight_requests", model="a") == 0
    assert metric(text, "vramgate_model_state", model="b", state="stopped") == 1


def test_loaded_stats_unload_and_unload_all(gateway):
    fake = {"engine": "command", "cmd": fake_cmd(), **FAKE_RAM}
    gw = gateway({"models": {"a": fake | {"ttl": 60}, "b": fake, "c": fake}})
    for name in ("a", "a", "b"):
        gw.client.completions.create(model=name, prompt="x", max_tokens=1)
    loaded = gw.http.get("/v1/models/loaded").json()["data"]
    assert sorted(m["id"] for m in loaded) == ["a", "b"]
    a = next(m for m in loaded if m["id"] == "a")
    assert a["state"] == "ready" and a["ttl_s"] == 60
    assert a["expires_at"] == pytest.approx(a["last_used"] + 60)
    stats = {m["id"]: m for m in gw.http.get("/v1/models/stats").json()["data"]}
    assert (stats["a"]["served_warm"], stats["a"]["needed_start"], stats["a"]["loads"]) == (1, 1, 1)
    assert stats["a"]["hit_rate"] == 0.5 and stats["c"]["hit_rate"] is None
    resp = gw.http.post("/v1/models/unload", json={"model": "a"})
    assert resp.json() == {"model": "a", "was": "ready", "state": "stopped"}
    assert gw.http.post("/v1/models/unload", json={"model": "zz"}).status_code == 404
    assert gw.http.post("/v1/models/unload", json={}).status_code == 400
    assert gw.http.post("/v1/models/unload-all").json() == {"unloaded": ["b"]}
    assert gw.http.get("/v1/models/loaded").json()["data"] == []


def test_engine_logs_tail_and_live_stream(gateway):
    gw = gateway(
        {"models": {"m": {"engine": "command", "cmd": fake_cmd("--log-line", "hello from m")}}}
    )
    gw.client.completions.create(model="m", prompt="x", max_tokens=1)
    lines = gw.http.get("/admin/models/m/logs", params={"tail": 5}).json()["lines"]
    assert any("hello from m" in line for line in lines) and len(lines) <= 5
    assert gw.http.get("/admin/models/m/logs", params={"tail": 0}).status_code == 400

    def restart_later() -> None:
        time.sleep(0.5)
        gw.http.post("/admin/models/m/unload")
        gw.http.post("/admin/models/m/load")

    threading.Thread(target=restart_later).start()
    # The stream follows the model across restarts: the new engine's lines arrive live.
    seen = sse(
        gw,
        "/admin/models/m/logs/stream?tail=0",
        lambda ev: any("ready on port" in e["line"] for e in ev),
    )
    assert any("hello from m" in e["line"] for e in seen)


def test_events_stream_state_changes_and_decisions(gateway):
    gw = gateway({"models": {"m": {"engine": "command", "cmd": fake_cmd("--load-delay", "0.3")}}})
    threading.Thread(
        target=lambda: (
            time.sleep(0.5),
            gw.client.completions.create(model="m", prompt="x", max_tokens=1),
        )
    ).start()
    events = sse(
        gw, "/admin/events?recent=0", lambda ev: any(e.get("state") == "ready" for e in ev)
    )
    states = [e["state"] for e in events if e["kind"] == "state"]
    assert states == ["starting", "ready"]
    assert any(e["kind"] == "start" and "starting m" in e["message"] for e in events)


def write_config(gw, config: dict) -> None:
    gw.config_path.write_text(yaml.safe_dump(config, sort_keys=False))


def test_reload_keeps_unchanged_restarts_changed_once_idle_and_drains_removed(gateway):
    slow = fake_cmd("--tokens-per-s", "20")
    config: dict = {
        "models": {
            "keep": {"engine": "command", "cmd": fake_cmd()},
            "change": {"engine": "command", "cmd": slow},
            "drop": {"engine": "command", "cmd": slow},
        }
    }
    gw = gateway(config)
    for name in ("keep", "change", "drop"):
        gw.client.completions.create(model=name, prompt="x", max_tokens=1)
    pids = {m["name"]: m["pid"] for m in gw.status()["models"]}
    # A bad file is refused and the running configuration stays.
    gw.config_path.write_text("models: {keep: {engine: nope}}")
    bad = gw.http.post("/admin/reload")
    assert bad.status_code == 400 and "the running one stays" in bad.json()["error"]["message"]
    assert "models.keep.engine" in bad.json()["error"]["message"]

    results: dict[str, str] = {}

    def stream(name: str) -> None:
        chunks = gw.client.completions.create(model=name, prompt="x", max_tokens=20, stream=True)
        results[name] = "".join(c.choices[0].text for c in chunks)

    busy = [threading.Thread(target=stream, args=(n,)) for n in ("change", "drop")]
    for t in busy:
        t.start()
    assert wait_until(lambda: all(gw.model(n)["in_flight"] for n in ("change", "drop")), 10)
    config["models"]["change"]["args"] = ["--max-tokens", "5"]
    del config["models"]["drop"]
    config["models"]["new"] = {"engine": "command", "cmd": fake_cmd()}
    write_config(gw, config)
    summary = gw.http.post("/admin/reload").json()
    assert (summary["kept"], summary["changed"], summary["removed"], summary["added"]) == (
        ["keep"],
        ["change"],
        ["drop"],
        ["new"],
    )
    # The removed model takes no new requests, but its stream in flight goes on.
    with pytest.raises(openai.NotFoundError):
        gw.client.completions.create(model="drop", prompt="x", max_tokens=1)
    assert gw.client.completions.create(model="new", prompt="x", max_tokens=1).choices[0].text
    for t in busy:
        t.join(20)
    assert results["change"].count("tok") == 20 and results["drop"].count("tok") == 20
    # Once idle: the changed model restarts with its new arguments, the removed one is gone.
    assert wait_until(lambda: "drop" not in {m["name"] for m in gw.status()["models"]}, 10)
    assert wait_until(lambda: gw.model("change")["state"] == "stopped", 10), str(gw.model("change"))
    reply = gw.client.completions.create(model="change", prompt="x")  # engine's default length
    assert reply.choices[0].text.count("tok") == 5
    assert gw.model("keep")["pid"] == pids["keep"]  # untouched
    assert gw.model("change")["pid"] != pids["change"]


def test_sighup_reloads(gateway):
    config = {"models": {"a": {"engine": "command", "cmd": fake_cmd()}}}
    gw = gateway(config)
    config["models"]["b"] = {"engine": "command", "cmd": fake_cmd()}
    write_config(gw, config)
    gw.proc.send_signal(signal.SIGHUP)
    assert wait_until(lambda: "b" in {m["name"] for m in gw.status()["models"]}, 10)
    assert gw.client.completions.create(model="b", prompt="x", max_tokens=1).choices[0].text


def test_sigterm_drains_in_flight_streams_then_stops_engines(gateway):
    gw = gateway(
        {
            "drain_timeout": 20,
            "models": {"m": {"engine": "command", "cmd": fake_cmd("--tokens-per-s", "20")}},
        }
    )
    gw.client.completions.create(model="m", prompt="x", max_tokens=1)
    pid = gw.model("m")["pid"]
    got: list[str] = []

    def stream() -> None:
        chunks = gw.client.completions.create(model="m", prompt="x", max_tokens=20, stream=True)
        got.extend(c.choices[0].text for c in chunks)

    reader = threading.Thread(target=stream)
    reader.start()
    assert wait_until(lambda: gw.model("m")["in_flight"] == 1, 10)
    gw.proc.send_signal(signal.SIGTERM)
    reader.join(30)
    assert (
        "".join(got).count("tok") == 20
    )  # the stream finished although the gateway was asked to stop
    # uvicorn ends by re-raising the SIGTERM it handled: -15 is a clean exit here.
    assert gw.proc.wait(30) in (0, -signal.SIGTERM)
    assert not pid_alive(pid)  # the engine was stopped before the gateway exited
    assert "stop m (shutdown" in gw.log()


def test_drain_timeout_bounds_the_wait_for_streams(gateway):
    gw = gateway(
        {
            "drain_timeout": 1,
            "models": {"m": {"engine": "command", "cmd": fake_cmd("--tokens-per-s", "5")}},
        }
    )
    got: list[str] = []

    def stream() -> None:
        try:
            for c in gw.client.completions.create(
                model="m", prompt="x", max_tokens=100, stream=True
            ):
                got.append(c.choices[0].text)
        except openai.APIError:
            pass  # cut off: expected

    reader = threading.Thread(target=stream)
    reader.start()
    assert wait_until(lambda: len(got) >= 1, 10)
    began = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    gw.proc.wait(30)
    reader.join(10)
    assert time.monotonic() - began < 8  # 1 s of drain, then the engine's stop
    assert len(got) < 100


def test_open_event_streams_do_not_hold_the_shutdown(gateway):
    """An open status page (its SSE streams) ends with the gateway, not after drain_timeout."""
    gw = gateway({"drain_timeout": 30, "models": {"m": {"engine": "command", "cmd": fake_cmd()}}})
    ended = threading.Event()

    def listen() -> None:
        with httpx.stream("GET", gw.url + "/admin/events", timeout=60) as resp:
            for _ in resp.iter_lines():
                pass
        ended.set()

    threading.Thread(target=listen, daemon=True).start()
    time.sleep(0.5)  # the stream is open
    began = time.monotonic()
    gw.proc.send_signal(signal.SIGTERM)
    gw.proc.wait(30)
    assert time.monotonic() - began < 10  # not the 30 s of drain_timeout
    assert ended.wait(5)


def test_reload_restarts_a_changed_pinned_model_by_itself(gateway):
    """A pinned model is up at all times: changed by a reload, it comes back in its new form."""
    config: dict = {"models": {"p": {"engine": "command", "cmd": fake_cmd(), "pinned": True}}}
    gw = gateway(config)
    assert wait_until(lambda: gw.model("p")["state"] == "ready", 10)
    pid = gw.model("p")["pid"]
    config["models"]["p"]["args"] = ["--max-tokens", "3"]
    write_config(gw, config)
    assert gw.http.post("/admin/reload").json()["changed"] == ["p"]
    assert wait_until(lambda: gw.model("p")["state"] == "ready" and gw.model("p")["pid"] != pid, 10)
    assert gw.client.completions.create(model="p", prompt="x").choices[0].text.count("tok") == 3
