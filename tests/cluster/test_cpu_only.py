"""A Ray cluster whose nodes carry no GPU: `device: auto` runs on a node's CPU, in its RAM."""

from __future__ import annotations

import pytest

from tests.cluster.conftest import ask, ray_config
from tests.conftest import fake_cmd, wait_until


@pytest.fixture(scope="module")
def cluster(make_cluster):
    return make_cluster({"cpu-a": None})  # a node without GPUs


def test_auto_on_a_cpu_only_cluster_is_counted_in_the_nodes_ram(gateway, cluster):
    """Reproduced (review 26): counted as on a GPU (ram_source "gpu", 0 MiB) while it ran on
    the node's CPU, so host_ram_mib was never held against it."""
    models = {"m": {"engine": "command", "cmd": fake_cmd("--ram-mib", "300")}}
    gw = gateway(ray_config(cluster, models, host_ram_mib=2000))
    assert wait_until(lambda: any(n["name"] == "cpu-a" for n in gw.status()["nodes"]), 60)
    assert ask(gw, "m") == "tok0 tok1 "
    m = gw.model("m")
    assert m["gpus"] == [] and m["node"], m
    seen = {k: m[k] for k in ("device", "ram_mib", "ram_source", "node")}
    assert m["device"] == "cpu", seen
    assert m["ram_source"] in ("measured", "estimate") and (m["ram_mib"] or 0) >= 300, seen
    assert gw.status()["host_ram"]["used_mib"] >= 300, gw.status()["host_ram"]
