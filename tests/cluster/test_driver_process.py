"""The gateway's Ray driver runs in a child process (runtimes/ray_driver.py). Killed (as Ray's
abort on a head that came back as a new cluster ends it), the gateway lives on: the driver's
agents died with it, so their nodes read dead and their engines are gone; a new driver joins,
the nodes join again with new agents, and the models answer. The serving process itself never
runs Ray's core worker."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess

import pytest

from tests.cluster.conftest import ask, engine, ray_config
from tests.conftest import pid_alive, wait_until
from vramgate.testing.ray_cluster import cmdline, process_tree


@pytest.fixture(scope="module")
def cluster(make_cluster):
    return make_cluster({"gpu-a": "10000"})


def drivers(gw) -> list[int]:
    return [p for p in process_tree(gw.proc.pid)
            if "vramgate.runtimes.ray_driver" in cmdline(p)]  # fmt: skip


def alive(gw) -> set[str]:
    return {n["name"] for n in gw.status()["nodes"] if n["alive"]}


def test_a_driver_that_dies_is_started_again_and_the_gateway_lives(gateway, cluster):
    gw = gateway(ray_config(cluster, {"d": engine(3000)}))
    assert wait_until(lambda: "gpu-a" in alive(gw), 30)
    assert ask(gw, "d") == "tok0 tok1 "
    old_engine = gw.model("d")["pid"]
    (driver,) = drivers(gw)
    os.kill(driver, signal.SIGKILL)
    assert wait_until(lambda: gw.model("d")["state"] != "ready", 20), gw.model("d")
    assert wait_until(lambda: not pid_alive(old_engine), 30), "an engine outlived its driver"
    assert wait_until(lambda: "gpu-a" in alive(gw), 60), gw.status()["nodes"]
    assert gw.proc.poll() is None
    assert ask(gw, "d") == "tok0 tok1 "
    (new_driver,) = drivers(gw)
    assert new_driver != driver


def test_the_serving_process_holds_no_connection_to_the_head(gateway, cluster):
    """Ray's driver is the child's: the gateway's own process has no connection to the head's
    GCS (what Ray aborts on a changed head is not the gateway)."""
    gw = gateway(ray_config(cluster, {"d": engine(3000)}))
    assert wait_until(lambda: "gpu-a" in alive(gw), 30)
    (driver,) = drivers(gw)
    gcs = f":{cluster.port}"
    sockets = subprocess.run(["ss", "-tnpH"], capture_output=True, text=True, timeout=10).stdout
    mine = [line for line in sockets.splitlines() if f"pid={gw.proc.pid}," in line]
    theirs = [line for line in sockets.splitlines() if f"pid={driver}," in line]
    assert not [line for line in mine if gcs in line.split()[4]], mine
    assert [line for line in theirs if gcs in line.split()[4]], theirs


def engines_marked(marker: str) -> list[int]:
    return [int(p) for p in os.listdir("/proc") if p.isdigit() and "fake_engine" in cmdline(int(p))
            and marker in cmdline(int(p)) and pid_alive(int(p))]  # fmt: skip


def test_a_hung_driver_is_ended_and_replaced(gateway, cluster):
    """Review: the driver stopped (SIGSTOP: a hung core worker), head and node up: it read as a
    lost head for ever, the node was taken for dead and its engine, never fenced (the kill
    went through the stopped driver), ran on unaccounted. Now a driver that answers no ping
    (which asks nothing of the head) is ended, its agents and engines with it, and replaced."""
    gw = gateway(ray_config(cluster, {"p": engine(3000, "--log-line", "MARK-HUNG")}))
    assert wait_until(lambda: "gpu-a" in alive(gw), 30)
    assert ask(gw, "p") == "tok0 tok1 "
    (driver,) = drivers(gw)
    os.kill(driver, signal.SIGSTOP)
    try:
        assert wait_until(lambda: not pid_alive(driver), 90, 1), "a hung driver was left hung"
        assert wait_until(lambda: not engines_marked("MARK-HUNG"), 30), "its engine outlived it"
        assert wait_until(lambda: gw.model("p")["state"] != "ready", 20), gw.model("p")
        assert wait_until(lambda: "gpu-a" in alive(gw), 60, 1), gw.status()["nodes"]
        assert ask(gw, "p") == "tok0 tok1 "
        assert "has not answered for" in gw.log()
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(driver, signal.SIGCONT)
