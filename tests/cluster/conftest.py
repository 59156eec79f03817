"""A real Ray cluster on this machine, on loopback: a head and worker nodes started one after
another through `vramgate.testing.ray_node` (Ray's CLI with its loopback rewrite off), each node
with simulated GPUs from its environment and its `vramgate-node` label. One cluster per module.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import fake_cmd
from vramgate.testing.ray_cluster import LocalRay


def _have_ray() -> bool:
    # Found, not imported: a test that joins the cluster from this process must import it
    # itself, after Cluster.connect has kept it on loopback (Ray reads that at its import).
    return importlib.util.find_spec("ray") is not None


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if _have_ray():
        return
    if os.environ.get("VRAMGATE_REQUIRE_RAY"):
        raise pytest.UsageError("VRAMGATE_REQUIRE_RAY is set but ray is not installed")
    skip = pytest.mark.skip(reason='needs ray (pip install "vramgate[ray]")')
    for item in items:
        if "tests/cluster" in str(item.fspath):
            item.add_marker(skip)


@pytest.fixture(scope="module")
def make_cluster() -> Iterator:
    """Starts a head (no GPUs) and the given nodes: {name: "MiB,MiB"}."""
    started: list[LocalRay] = []

    def start(nodes: dict[str, str | None]) -> LocalRay:
        root = Path(tempfile.mkdtemp(prefix="vgray-", dir="/tmp"))
        cluster = LocalRay(root)
        started.append(cluster)
        cluster.head()
        for name, mib in nodes.items():  # one after another: two at once race for a socket
            cluster.add(name, mib)
        return cluster

    yield start
    for cluster in started:
        cluster.stop()
        shutil.rmtree(cluster.root, ignore_errors=True)


def ray_config(cluster: LocalRay, models: dict, **extra) -> dict:
    return {
        "cluster": {"ray": {"address": cluster.address, "poll_s": 0.5}},
        "gpus": {"reserve_mib": 0},
        "models": models,
        **extra,
    }


def engine(mib: int, *knobs: str, **extra) -> dict:
    return {"engine": "command", "cmd": fake_cmd("--vram-mib", str(mib), *knobs),
            "vram_mib": mib, **extra}  # fmt: skip


def ask(gw, model: str, tokens: int = 2) -> str:
    reply = gw.client.completions.create(model=model, prompt="x", max_tokens=tokens)
    return reply.choices[0].text
