"""The gateway's Ray driver runs in a child process (runtimes/ray_driver.py). Killed (as Ray's
abort on a head that came back as a new cluster ends it), the gateway lives on: the driver's
agents died with it, so their nodes read dead and their engines are gone; a new driver joins,
the nodes join again with new agents, and the models answer. The serving process itself never
runs Ray's core worker."""

from __future__ import annotations

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
