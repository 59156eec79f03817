"""The Ray head lost for longer than Ray's own 60 s: the gateway, a Ray driver, stays up, its
engines keep answering, and the log says what is lost; a gateway started while its head is down
comes up and joins the cluster once the head answers (issue 24, 4; not covered: a head that
comes back after the gateway had joined it)."""

from __future__ import annotations

import shutil
import tempfile
import time
from pathlib import Path

from tests.cluster.conftest import ask, engine, ray_config
from tests.conftest import wait_until
from vramgate.testing.ray_cluster import LocalRay

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


def test_a_gateway_started_while_its_head_is_down_comes_up_and_joins_it_later(gateway):
    """Its cluster models answer 503 with Retry-After until the head answers; then they run."""
    root = Path(tempfile.mkdtemp(prefix="vgray-", dir="/tmp"))
    cluster = LocalRay(root)  # its address chosen, nothing started there yet
    try:
        config = ray_config(cluster, {"h": engine(3000)})
        config["cluster"]["ray"]["connect_timeout"] = 5
        gw = gateway(config)
        body = {"model": "h", "prompt": "x", "max_tokens": 2}
        early = gw.http.post("/v1/completions", json=body)
        assert early.status_code == 503 and early.headers.get("retry-after"), early.text
        assert "has not been joined yet" in early.text
        cluster.head()
        cluster.add("gpu-h", "10000")
        assert wait_until(lambda: "gpu-h" in {n["name"] for n in gw.status()["nodes"]}, 90)
        assert wait_until(lambda: gw.http.post("/v1/completions", json=body).status_code == 200, 30)
    finally:
        cluster.stop()
        shutil.rmtree(root, ignore_errors=True)
