"""Each node's RAM as a placement device on a cluster: only nodes read at least once."""

from __future__ import annotations

from vramgate.config import RayCluster
from vramgate.gpu.cluster import ClusterGpus
from vramgate.runtimes.ray_cluster import Cluster, Node


def test_a_node_not_read_yet_offers_no_host_ram():
    """A node joined (or rejoined) whose first reading has not come has no RAM budget yet: it
    is no host for placement, not one of 0 MiB (the walk's seed 20277045: c_under and c_none
    refused with NoHostRoom, 'the largest node's RAM budget is 0', while g1 was dead)."""
    cluster = Cluster(RayCluster(address="127.0.0.1:1"), "gw")
    cluster.nodes["a"] = Node("a", "c0", "127.0.0.1", None, [], 0, "none", number=0)
    read = Node("b", "c1", "127.0.0.1", None, [], 0, "none", number=1, host_budget_mib=1200)
    read.reading = {"gpus": [], "engines": {}, "host_available_mib": 1100}
    cluster.nodes["b"] = read
    hosts = ClusterGpus(cluster, 0).hosts(None, {})
    assert [(h.node, h.total_mib) for h in hosts] == [("c1", 1200)]
