"""The cluster model-based walk (tests/integration/test_cluster_model_based.py) on the real local
Ray cluster, a few tens of steps: the same requests, unloads, sleeps and invariants, with real
node deaths (SIGKILL to a node's Ray), nodes started again, and agents stalled (SIGSTOP) and
resumed. The head is not lost here (test_head_loss does it; a walk cannot afford its minutes).
`VRAMGATE_CMBT_SEED` and `VRAMGATE_CMBT_RAY_STEPS` replay or lengthen it.
"""

from __future__ import annotations

import asyncio
import os
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.integration.test_cluster_model_based import engine_pids, walk
from vramgate.config import Settings
from vramgate.runtimes.docker import instance_id
from vramgate.runtimes.ray_cluster import Cluster
from vramgate.testing.ray_cluster import LocalRay

STEPS = int(os.environ.get("VRAMGATE_CMBT_RAY_STEPS", "40"))
SEED = int(os.environ.get("VRAMGATE_CMBT_SEED", "20261207"))


@dataclass
class RayNode:
    """A node of the local Ray cluster, as the walk sees one."""

    name: str
    gpus_mib: list[int]
    ram_mib: int
    alive: bool = True
    stalled: bool = False
    node_id: str = ""
    stopped: list[int] = field(default_factory=list)  # its agents, SIGSTOPped


class RayWorld:
    """The walk's faults on the real cluster; its agents are asked through /proc (engine_pids),
    not in this process."""

    def __init__(self, ray: LocalRay) -> None:
        self.ray = ray
        self.nodes: dict[str, RayNode] = {}
        self.head_down = False  # never set: see the module's docstring

    def add_node(self, name: str, gpus_mib: list[int], ram_mib: int) -> RayNode:
        if name not in self.ray.procs:
            self.ray.add(name, ",".join(map(str, gpus_mib)) or None)
        node = RayNode(name, gpus_mib, ram_mib, node_id=f"ray-{name}-{len(self.nodes)}")
        self.nodes[name] = node
        return node

    def cluster(self, settings: Settings) -> Cluster:
        assert settings.ray is not None
        return Cluster(settings.ray, instance_id(Path(settings.state_dir)))

    def stall(self, node: RayNode) -> None:
        node.stalled, node.stopped = True, self.ray.stall(node.name)

    def resume(self, node: RayNode) -> None:
        self.ray.resume(node.stopped)
        node.stalled, node.stopped = False, []

    def kill_agent(self, node: RayNode) -> None:
        for pid in self.ray.agent_pids(node.name):
            os.kill(pid, 9)

    def kill_node(self, node: RayNode) -> None:
        self.resume(node)
        self.ray.kill(node.name)
        node.alive = False

    def agent(self, node: RayNode) -> None:
        return None  # on another process: engine_pids is how the walk asks the nodes

    def every_node(self) -> list[RayNode]:
        return list(self.nodes.values())


@pytest.fixture(scope="module")
def cluster(make_cluster):
    return make_cluster({})


def test_the_walk_keeps_every_invariant_on_a_real_ray_cluster(cluster, tmp_path):
    """A few tens of steps of the cluster walk, its nodes real Ray nodes on loopback."""
    from tests.integration.test_cluster_model_based import NODES

    world = RayWorld(cluster)
    for name, (gpus, ram) in NODES.items():
        world.add_node(name, gpus, ram)
    w = asyncio.run(
        walk(
            tmp_path,
            SEED,
            STEPS,
            world,
            every=8,
            address=cluster.address,
            poll_s=0.5,
            connect_timeout=20,
        )
    )
    assert w.outcomes.get("ok", 0) > 0, w.outcomes
    assert not engine_pids(w.run), "engines outlived the gateway"
