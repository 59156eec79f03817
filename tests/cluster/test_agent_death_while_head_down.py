"""A node whose agent dies while the Ray head is down is taken for dead within its missed reads
(the reads go to the agents, not through the head), and its model is placed on the other node:
nothing read the nodes while the head's listing timed out, and the model answered 502 for as
long as the head was away (issue 24: "a node's death costs seconds")."""

from __future__ import annotations

import os
import signal
import time

import httpx

from tests.cluster.conftest import ask, engine, ray_config
from tests.conftest import wait_until

NODE_WAIT = {"RAY_gcs_rpc_server_reconnect_timeout_s": "3600"}


def alive(gw) -> set[str]:
    return {n["name"] for n in gw.status()["nodes"] if n["alive"]}


def test_an_agent_that_dies_while_the_head_is_down_is_taken_for_dead(gateway, make_cluster):
    cluster = make_cluster({})
    cluster.add("gpu-a", "10000", **NODE_WAIT)
    cluster.add("gpu-b", "10000", **NODE_WAIT)
    gw = gateway(ray_config(cluster, {"m": {**engine(6000), "max_wait": 60}}))
    assert wait_until(lambda: {"gpu-a", "gpu-b"} <= alive(gw), 40)
    assert ask(gw, "m") == "tok0 tok1 "
    node = gw.model("m")["node"]
    cluster.kill("head")
    time.sleep(12)  # its loss seen: one listing timed out
    for agent in cluster.agent_pids(node):
        os.kill(agent, signal.SIGKILL)
    # Three polls' worth of reads (and their 10 s timeouts) and more: the node is dead by then.
    dead = wait_until(lambda: node not in alive(gw), 60)
    body = {"model": "m", "prompt": "x", "max_tokens": 2}
    reply = gw.http.post("/v1/completions", json=body, timeout=httpx.Timeout(90))
    assert gw.proc.poll() is None
    nodes = {n["name"]: (n["alive"], n["why_dead"]) for n in gw.status()["nodes"]}
    assert dead, (node, nodes, reply.status_code, reply.text[:300])
    assert reply.status_code == 200, (reply.status_code, reply.text, gw.model("m"))
