"""A stop that reaches a node's agent while the same engine's spawn is still under way (the
gateway gave the spawn up after its call's timeout, on a slow or stalled node, and sent `stop`)
must end that engine: it found no process yet and returned, and the spawn then started one that
ran on the node unaccounted (found by the cluster walk, seeds 2 and 4: "c_under's engine N runs
on c0, unaccounted")."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import shlex

import pytest

from tests.conftest import fake_cmd
from vramgate.runtimes.local import free_port

if importlib.util.find_spec("ray") is None:
    pytest.skip('needs ray (pip install "vramgate[ray]")', allow_module_level=True)

from vramgate.testing.sim_cluster import SimAgent, SimWorld


def test_a_stop_during_the_spawn_leaves_no_engine(tmp_path):
    """The stop arrives between the spawn's start and its process: no engine is left running."""

    async def run() -> list[int]:
        world = SimWorld(tmp_path)
        node = world.add_node("n", [], 2000)
        agent = SimAgent("gw", node, tmp_path)
        await agent.hello()
        port = free_port()
        argv = shlex.split(fake_cmd("--port", str(port), "--name", "spawn-stop-race"))
        spawning = asyncio.ensure_future(agent.spawn("e", argv, {}, "/health", (), port, "s"))
        await asyncio.sleep(0)  # the spawn runs up to its process's creation
        assert "e" in agent.engines
        proc = agent.engines["e"].proc
        await agent.stop("e", 0)
        with contextlib.suppress(Exception):
            await spawning
        running = [proc.pid] if proc.pid and proc.returncode is None else []
        await agent.shutdown(1)
        return running

    running = asyncio.run(run())
    assert not running, f"engine {running} runs on the node after its stop"
