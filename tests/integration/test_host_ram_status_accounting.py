"""GET /gateway/status `host_ram` (and /metrics vramgate_host_ram_used_bytes) counts a start
that is still waiting for room (STARTING, not admitted: no engine, no room granted) as holding
its footprint: status.host_ram uses Instance.is_running (STARTING included), where placement
(ModelSnap.is_running) counts only admitted starts. With b waiting behind a busy a, the page
shows 620 MiB used of a 400 MiB budget, and b "holding" 310 MiB with no process."""

from __future__ import annotations

import threading

from tests.conftest import fake_cmd, wait_until


def cpu_model(mib: int, *knobs: str) -> dict:
    return {"engine": "command", "cmd": fake_cmd("--ram-mib", str(mib), *knobs),
            "device": "cpu", "ram_mib": mib + 60}  # fmt: skip


def test_a_start_waiting_for_room_holds_no_host_ram(gateway):
    models = {"a": cpu_model(250, "--tokens-per-s", "4"), "b": cpu_model(250)}
    gw = gateway({"host_ram_mib": 400, "models": models})
    gw.client.completions.create(model="a", prompt="x", max_tokens=1)
    long = threading.Thread(target=lambda: list(gw.client.completions.create(
        model="a", prompt="x", max_tokens=20, stream=True)))  # fmt: skip
    long.start()
    assert wait_until(lambda: gw.model("a")["in_flight"] == 1, 10)
    other = threading.Thread(target=lambda: gw.client.completions.create(
        model="b", prompt="x", max_tokens=1))  # fmt: skip
    other.start()
    assert wait_until(lambda: gw.model("b")["state"] == "starting", 10)
    seen = []
    for _ in range(10):
        b, ram = gw.model("b"), gw.status()["host_ram"]
        if b["pid"] is None and b["state"] == "starting":
            seen.append((ram["used_mib"], ram["budget_mib"], ram["models"]))
    long.join(30)
    other.join(30)
    assert seen, "b never seen waiting"
    assert all("b" not in models and used <= budget for used, budget, models in seen), seen
