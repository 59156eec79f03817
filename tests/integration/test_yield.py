"""Making way for other programs on a simulated GPU (gpus.simulate_others_file rewritten by the
test as a game or ComfyUI would take memory): idle engines sleep or stop, cheapest to bring back
first, busy ones never; no start past the share while others use it (wait, then 503 with
Retry-After, or another GPU); all back once they leave."""

from __future__ import annotations

import threading

from tests.conftest import fake_cmd, wait_until


def engine(*knobs: str, **extra) -> dict:
    cmd = fake_cmd("--vram-mib", "4000", "--sleep-vram-mib", "100", *knobs)
    return {"engine": "command", "cmd": cmd, "vram_mib": 4000, **extra}


def config(tmp_path, gpus: list[int], **models) -> dict:
    return {
        "gpus": {
            "simulate_mib": gpus,
            "reserve_mib": 0,
            "yield_above": 0.9,
            "poll_s": 0.2,
            "simulate_others_file": str(tmp_path / "others"),
        },
        "defaults": {"evict_wait": 2},
        "models": models,
    }


def ask(gw, model: str, tokens: int = 1):
    return gw.http.post("/v1/completions", json={"model": model, "prompt": "x",
                                                 "max_tokens": tokens})  # fmt: skip


def test_idle_engines_make_way_cheapest_first_and_starts_wait_while_others_use_the_gpu(
    gateway, tmp_path
):
    others = tmp_path / "others"
    gw = gateway(config(tmp_path, [10_000], quick=engine(sleep=1),
                        slow=engine("--load-delay", "1.5"), third=engine()))  # fmt: skip
    assert ask(gw, "quick").status_code == 200 and ask(gw, "slow").status_code == 200
    others.write_text("2000\n")  # 8000 ours + 2000 theirs: past 90%, not by our doing
    assert wait_until(lambda: gw.model("quick")["state"] == "sleeping", 5)
    assert gw.model("slow")["state"] == "ready"  # slower to bring back: it stays
    gpu = gw.status()["gpus"][0]
    assert gpu["others_mib"] == 2000 and gpu["ceiling_mib"] == 9000
    others.write_text("6000\n")  # more: the slow one goes too (it cannot sleep: it stops)
    assert wait_until(lambda: gw.model("slow")["state"] == "stopped", 5)
    refused = ask(gw, "third")  # 4000 more would pass 90% with theirs: it waits, then 503
    assert refused.status_code == 503 and refused.headers["retry-after"]
    others.write_text("0\n")  # they are gone: everything may come back
    assert ask(gw, "third").status_code == 200
    assert ask(gw, "quick").status_code == 200 and gw.model("quick")["wakes"] == 1


def test_a_busy_engine_never_yields_and_a_start_goes_to_the_other_gpu(gateway, tmp_path):
    others = tmp_path / "others"
    gw = gateway(config(tmp_path, [10_000, 10_000], busy=engine("--tokens-per-s", "10"),
                        other=engine()))  # fmt: skip
    ask(gw, "busy")
    worker = threading.Thread(target=lambda: ask(gw, "busy", tokens=20))
    worker.start()
    assert wait_until(lambda: gw.model("busy")["in_flight"] == 1, 5)
    on = gw.model("busy")["gpus"][0]
    others.write_text("6000\n" if on == 0 else "0\n6000\n")
    assert ask(gw, "other").status_code == 200
    assert gw.model("other")["gpus"] == [1 - on]  # placed where the others are not
    worker.join(20)
    assert gw.model("busy")["state"] == "ready"  # it was busy when they came: it stayed
    assert wait_until(lambda: gw.model("busy")["state"] in ("stopped", "sleeping"), 5)


def test_without_yield_others_memory_is_still_subtracted_before_placing(gateway, tmp_path):
    """No yield_above: nothing makes way on its own when others come, but a start counts what
    they hold: it evicts an idle engine that would have fit beside it on an empty GPU, and a
    model that cannot fit beside them waits (they may leave), then 503, stopping no one."""
    others = tmp_path / "others"
    cfg = config(tmp_path, [10_000], a=engine(), b=engine(),
                 big=engine(vram_mib=8000))  # fmt: skip
    del cfg["gpus"]["yield_above"]
    gw = gateway(cfg)
    assert ask(gw, "a").status_code == 200
    others.write_text("3000\n")
    assert wait_until(lambda: gw.status()["gpus"][0]["others_mib"] == 3000, 5)
    assert gw.model("a")["state"] == "ready"  # no yield_above: it stays
    assert ask(gw, "b").status_code == 200  # 4000 + 4000 + 3000 > 10000: a makes way
    assert gw.model("a")["state"] == "stopped" and "stop a" in gw.log()
    refused = ask(gw, "big")  # 8000 beside their 3000 never fits
    assert refused.status_code == 503 and refused.headers["retry-after"]  # they may leave
    assert "other programs hold 3000 MiB on GPU 0" in refused.json()["error"]["message"]
    assert gw.model("b")["state"] == "ready"
    others.write_text("0\n")
    assert ask(gw, "a").status_code == 200  # they left: a and b fit side by side again
    assert gw.model("b")["state"] == "ready"
