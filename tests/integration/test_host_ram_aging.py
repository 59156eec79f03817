"""Issue 24, defect 13 ("evictions never age GreedyDual"), left for host RAM: an idle CPU engine
stopped to make host room for another start (reason "host_ram", decide._host_room) does not
raise GreedyDual's floor (Stopping: only "lru", "discovery", "oom" stops call _evicted), so on
the CPU `gpus.eviction: frequency` is lifetime LFU: a, asked for five times long ago, stays
for ever while b and c take each other's room. The same walk as test_sleep's
test_sleeping_to_make_room_ages_frequency_eviction, with CPU engines in host RAM."""

from __future__ import annotations

from tests.conftest import fake_cmd


def cpu_model(mib: int) -> dict:
    return {"engine": "command", "cmd": fake_cmd("--ram-mib", str(mib)), "device": "cpu",
            "ram_mib": mib + 60}  # fmt: skip


def test_host_ram_evictions_age_frequency_eviction(gateway):
    models = {"a": cpu_model(200), "b": cpu_model(200), "c": cpu_model(200)}
    gw = gateway({"gpus": {"eviction": "frequency"}, "host_ram_mib": 600, "models": models})
    ask = lambda n: gw.client.completions.create(model=n, prompt="x", max_tokens=1)  # noqa: E731
    for name in ("a",) * 5 + ("b", "c", "b", "c", "b"):
        ask(name)
    assert gw.model("a")["state"] == "ready"  # 5 against b's and c's aged counts: still first
    ask("c")
    states = {n: gw.model(n)["state"] for n in ("a", "b", "c")}
    assert states == {"a": "stopped", "b": "ready", "c": "ready"}, (states, gw.log()[-2500:])
