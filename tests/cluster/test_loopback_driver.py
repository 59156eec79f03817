"""A gateway that joins a cluster on loopback stays on loopback however Ray was imported: the CI
run collected a module that imported Ray before Cluster.connect could set Ray's switch, and
ray.init then rewrote 127.0.0.1:P to the machine's eth0 address and never reached the head
(two cluster tests failed, and the driver's traffic left loopback). The driver now runs in a
process of its own (ray_driver.py), which sets the switch before it imports Ray; this holds it
whatever the gateway's process imported first."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap

import pytest

SCRIPT = textwrap.dedent(
    """
    import asyncio, sys
    import ray  # first, with no switch in the environment: Ray's constants are read now
    from vramgate.config import RayCluster
    from vramgate.runtimes.ray_cluster import Cluster

    async def main():
        cluster = Cluster(RayCluster(address=sys.argv[1], connect_timeout=20), "loopback-test")
        await cluster.connect()
        try:
            print("node-ip", cluster.where["node_ip"])
            print("gcs", cluster.where["gcs"])
            print("names", sorted(n.name for n in cluster.live()))
        finally:
            await cluster.close(5)

    asyncio.run(main())
    """
)


@pytest.fixture(scope="module")
def cluster(make_cluster):
    return make_cluster({"lo-a": None})


def test_a_driver_that_imported_ray_first_joins_on_loopback(cluster):
    env = {k: v for k, v in os.environ.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"}
    env["RAY_USAGE_STATS_ENABLED"] = "0"
    run = subprocess.run(
        [sys.executable, "-c", SCRIPT, cluster.address],
        capture_output=True, text=True, timeout=120, env=env,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr[-3000:]
    lines = dict(line.split(" ", 1) for line in run.stdout.splitlines() if " " in line)
    assert lines["node-ip"] == "127.0.0.1", run.stdout
    assert lines["gcs"].startswith("127.0.0.1:"), run.stdout
    assert "lo-a" in lines["names"], run.stdout
