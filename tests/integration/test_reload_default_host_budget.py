"""Issue 24, defect 16's fix: a reload that removes host_ram_mib (back to the default) sets the
budget to what the gateway may take *now* (HostRam.set_budget(None) -> available_mib()), which
already has the running engines' RAM taken out of it. The engines then count twice: against a
budget that excludes them, and housekeeping stops idle ones that fit ("host RAM over N MiB").
The default is "what the gateway may take when it starts" (README): with nothing else changed,
the engines that ran before the reload fit after it.

Made real with a v1 memory cgroup (1000 MiB) holding the gateway and its engines; skipped
where none can be made."""

from __future__ import annotations

import contextlib
import os
import time
from pathlib import Path

import pytest
import yaml

from tests.conftest import fake_cmd, wait_until

MIB = 1 << 20
CG = Path("/sys/fs/cgroup/memory")


def cpu_model(mib: int) -> dict:
    return {"engine": "command", "cmd": fake_cmd("--ram-mib", str(mib)), "device": "cpu",
            "ram_mib": mib + 60}  # fmt: skip


def test_reload_back_to_the_default_budget_keeps_engines_that_fit(gateway):
    """A reload to the default host budget counts our engines' RAM once: they stay."""
    group = CG / f"rev24h-{os.getpid()}"
    try:
        group.mkdir()
        (group / "memory.limit_in_bytes").write_text(str(1000 * MIB))
    except OSError as exc:
        pytest.skip(f"no v1 memory cgroup here: {exc!r}")
    gw = None
    try:
        config = {"host_ram_mib": 1000, "models": {"a": cpu_model(250), "b": cpu_model(250)}}
        gw = gateway(config)
        (group / "cgroup.procs").write_text(str(gw.proc.pid))  # its engines follow it there
        for name in ("a", "b"):
            gw.client.completions.create(model=name, prompt="x", max_tokens=1)
        held = gw.status()["host_ram"]["used_mib"]
        assert {m["name"]: m["state"] for m in gw.status()["models"]} == {
            "a": "ready",
            "b": "ready",
        }
        del config["host_ram_mib"]  # back to the default
        gw.config_path.write_text(yaml.safe_dump(config, sort_keys=False))
        summary = gw.http.post("/admin/reload").json()
        assert summary["applied"] == ["host_ram_mib"], summary
        budget = gw.status()["host_ram"]["budget_mib"]
        time.sleep(3)  # a few housekeeping ticks
        states = {m["name"]: m["state"] for m in gw.status()["models"]}
        assert states == {"a": "ready", "b": "ready"}, (held, budget, states, gw.log()[-1500:])
        assert budget >= held, (budget, held)
    finally:
        if gw is not None:
            with contextlib.suppress(Exception):  # the cgroup is emptied and removed below
                gw.stop()
        wait_until(lambda: not (group / "tasks").read_text().strip(), 15)
        for pid in (group / "tasks").read_text().split():
            os.kill(int(pid), 9)
        wait_until(lambda: not (group / "tasks").read_text().strip(), 15)
        group.rmdir()
