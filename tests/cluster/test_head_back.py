"""Review 24: the Ray head lost after the gateway had joined it, then back (a fresh head at the
same address, as a restarted head machine): the gateway stays up, reads the cluster again and
joins the nodes of the head that came back (issue 24, 4: "rejoining").

The gateway died about 5 s after such a head answered: Ray aborts a driver whose head came back
as a new cluster (global_state_accessor.cc, WrongClusterID: a restarted head without GCS fault
tolerance is a new cluster). The driver now runs in a process of its own (ray_driver.py): it
ends, its nodes are taken for dead, and a new driver joins the head that answers."""

from __future__ import annotations

import time

from tests.cluster.conftest import ask, engine, ray_config
from tests.conftest import pid_alive, wait_until
from vramgate.testing.ray_cluster import LOOPBACK_SWITCH

NODE_WAIT = {"RAY_gcs_rpc_server_reconnect_timeout_s": "3600"}


def names(gw) -> set[str]:
    return {n["name"] for n in gw.status()["nodes"] if n["alive"]}


def test_a_head_that_comes_back_is_joined_again(gateway, make_cluster):
    cluster = make_cluster({})
    cluster.add("gpu-h", "10000", **NODE_WAIT)
    models = {"h": engine(3000), "n": engine(3000, nodes=["gpu-n"])}
    gw = gateway(ray_config(cluster, models))
    assert wait_until(lambda: "gpu-h" in names(gw), 30)
    assert ask(gw, "h") == "tok0 tok1 "
    old = gw.model("h")["pid"]
    cluster.kill("head")
    time.sleep(15)
    assert gw.proc.poll() is None, gw.log()[-3000:]
    # The head back at its address (a temp dir of its own: Ray's CLI refuses a head at an
    # address a live raylet of this machine still names, though nothing listens there).
    args = ["--head", "--port", str(cluster.port), "--include-dashboard", "false"]
    cluster._start(
        "head2", [*args, "--temp-dir", str(cluster.root / "ray2")], {LOOPBACK_SWITCH: "0"}
    )
    cluster.add("gpu-n", "10000")
    joined = wait_until(lambda: gw.proc.poll() is None and "gpu-n" in names(gw), 90)
    assert gw.proc.poll() is None, f"the gateway ended when its head came back:\n{gw.log()[-4000:]}"
    assert joined, (gw.status()["nodes"], gw.log()[-4000:])
    assert ask(gw, "n") == "tok0 tok1 "
    # The old cluster's engine, its agent the dead driver's: gone with them, or stopped by the
    # agent that its node's raylet gets next; never left running, unaccounted.
    assert wait_until(lambda: not pid_alive(old), 30), f"h's engine {old} outlived its driver"
    assert ask(gw, "h") == "tok0 tok1 "
