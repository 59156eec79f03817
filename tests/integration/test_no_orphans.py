"""No engine outlives the gateway, each of its two guards tested alone: PR_SET_PDEATHSIG with the
watchdog dead first, and the watchdog's last SIGKILL for a worker that ignores SIGTERM; and the
stop's escalation seen in its exit status, not in a timing."""

from __future__ import annotations

import os
import re
import signal
from pathlib import Path

from tests.conftest import fake_cmd, pid_alive, wait_until


def model(*knobs: str, **extra) -> dict:
    return {"engine": "command", "cmd": fake_cmd(*knobs), **extra}


def watchdog_of(gateway_pid: int) -> int:
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            cmdline = (entry / "cmdline").read_bytes()
        except OSError:
            continue
        if int(stat[1]) == gateway_pid and b"vramgate.watchdog" in cmdline:
            return int(entry.name)
    raise AssertionError("no watchdog process")


def test_engine_dies_with_the_gateway_even_when_the_watchdog_died_first(gateway):
    """PR_SET_PDEATHSIG alone: the watchdog is gone, the gateway is SIGKILLed."""
    gw = gateway({"models": {"a": model()}})
    gw.http.post("/admin/models/a/load")
    [engine] = gw.engine_pids()
    os.kill(watchdog_of(gw.proc.pid), signal.SIGKILL)
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    assert wait_until(lambda: not pid_alive(engine), 10), "the engine outlived the gateway"


def test_worker_that_ignores_sigterm_dies_when_the_gateway_is_killed(gateway):
    """The watchdog's SIGTERM is ignored by the engine's worker: its SIGKILL after the grace
    period ends it (PDEATHSIG reaches only the engine itself)."""
    gw = gateway({"models": {"a": model("--spawn-child", "--child-ignores-sigterm")}})
    gw.http.post("/admin/models/a/load")
    [engine] = gw.engine_pids()
    match = re.search(r"worker pid (\d+)", gw.engine_log("a"))
    assert match, gw.engine_log("a")
    worker = int(match[1])
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    assert wait_until(lambda: not pid_alive(engine), 10)
    assert wait_until(lambda: not pid_alive(worker), 15), "the worker outlived the gateway"


def test_stop_escalates_to_sigkill_for_an_engine_that_ignores_sigterm(gateway):
    gw = gateway({"models": {"stubborn": model("--ignore-sigterm", stop_timeout=0.5)}})
    gw.http.post("/admin/models/stubborn/load")
    [pid] = gw.engine_pids()
    assert gw.http.post("/admin/models/stubborn/unload").json()["state"] == "stopped"
    assert not pid_alive(pid)  # gone when the unload answers, not some time later
    assert "stop stubborn (admin, idle 0s), exit -9" in gw.log()
