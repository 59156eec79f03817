"""The Ray head lost for longer than Ray's own 60 s: the gateway, a Ray driver, stays up, its
engines keep answering, and the log says what is lost (issue 24, 4; not covered here: a gateway
started while the head is down, and a head that comes back)."""

from __future__ import annotations

import time

from tests.cluster.conftest import ask, engine, ray_config
from tests.conftest import wait_until

# The nodes' own raylets end at 60 s without their GCS too (and their agents' engines with
# them): a cluster meant to outlive its head is started with a longer wait (Ray's setting).
NODE_WAIT = {"RAY_gcs_rpc_server_reconnect_timeout_s": "3600"}


def test_the_gateway_outlives_its_lost_head(gateway, make_cluster):
    cluster = make_cluster({})
    cluster.add("gpu-h", "10000", **NODE_WAIT)
    gw = gateway(ray_config(cluster, {"h": engine(3000)}))
    assert wait_until(lambda: "gpu-h" in {n["name"] for n in gw.status()["nodes"]}, 30)
    assert ask(gw, "h") == "tok0 tok1 "
    cluster.kill("head")
    lost_at = time.monotonic()
    while time.monotonic() - lost_at < 75:  # past Ray's 60 s, after which it ended the driver
        time.sleep(5)
        assert gw.proc.poll() is None, f"the gateway ended with its head:\n{gw.log()[-3000:]}"
        assert ask(gw, "h") == "tok0 tok1 "
    assert "the Ray head at" in gw.log() and "has not answered for" in gw.log()
