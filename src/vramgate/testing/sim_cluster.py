"""A simulated Ray cluster in the gateway's own process, standing in for Ray where a real one is
far too slow (a model-based walk of thousands of steps): nodes with simulated GPUs and RAM that
join, die, stall and come back, and a head that can be lost. Everything above Ray is the real
code: `Cluster`'s node bookkeeping (joins, polls, missed reads, fencing, rejoins), the real
`NodeAgent` starting real engine processes behind real guards, `RayRuntime`, `ClusterGpus` and the
scheduler. Only Ray's part is simulated: the node table, actor handles and their calls.

    world = SimWorld(root)
    node = world.add_node("n0", gpus_mib=[10_000], ram_mib=4096)
    parts = Collaborators.for_settings(settings, world.cluster(settings))
    world.stall(node); world.resume(node); world.kill_agent(node); world.kill_node(node)
    world.head_down = True
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import itertools
import os
import signal
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Ray reads this at its import, which this module may be the first to do: a real cluster on
# loopback in the same process (tests/cluster) must stay there, as Cluster.connect ensures.
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

from ray.exceptions import RayActorError

from vramgate.config import Settings
from vramgate.filenames import file_stem
from vramgate.gpu.simulated import SimulatedGpus
from vramgate.runtimes.docker import instance_id
from vramgate.runtimes.local import Watchdog
from vramgate.runtimes.ray_agent import NodeAgent
from vramgate.runtimes.ray_cluster import Cluster, HeadUnreachable
from vramgate.runtimes.ray_driver import Ref

HEAD_SILENT_S = 0.2  # a lost head's node table does not answer within this (Ray's: 10 s)


@dataclass
class SimNode:
    """A machine of the simulated cluster, as Ray's node table lists it."""

    node_id: str
    name: str
    gpus_mib: list[int]
    ram_mib: int  # its RAM: what it has available, less what its engines hold
    alive: bool = True  # what Ray's node table says
    stalled: bool = False  # its agent answers nothing (a hung NVML call) until resumed
    die_on: set[str] = field(default_factory=set)  # its agent dies as one of these is called
    stall_on: set[str] = field(default_factory=set)  # its agent stalls as one of these is called
    agents: list[SimHandle] = field(default_factory=list)  # every agent it ran, the last live


class SimAgent(NodeAgent):
    """The real agent, told who it is by its simulated node instead of Ray's runtime context;
    its RAM is the node's, less what its engines really hold (their PSS)."""

    def __init__(self, gateway: str, node: SimNode, root: Path) -> None:
        self.node_id, self.name, self.address = node.node_id, node.name, "127.0.0.1"
        self.dir = root / "vramgate-agent" / file_stem(gateway) / file_stem(node.name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.gpus = SimulatedGpus(node.gpus_mib, 0, self.dir) if node.gpus_mib else None
        self.watchdog = Watchdog()
        self.engines = {}
        self.on_gpus = {}
        self.sim = node

    def _memory(self) -> dict[str, Any]:
        found = super()._memory()
        found["host_available_mib"] = max(0, self.sim.ram_mib - self.held_mib())
        return found

    def held_mib(self) -> int:
        """Host RAM its engines hold now (their process trees' PSS)."""
        return sum(self.host_ram(name, "pss") for name in list(self.engines))

    def end(self) -> None:
        """Its process is gone: so are its engines (its watchdog's work, done here at once)."""
        for engine in self.engines.values():
            if engine.proc.pid is not None:
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(engine.proc.pid, signal.SIGKILL)


class SimHandle:
    """An actor handle: `handle.method.remote(*args)` runs the agent's method on the loop and
    returns a ref whose `future()` is a concurrent future, as Ray's refs are; a dead agent fails
    every call, running or not, with RayActorError; a stalled one answers once resumed."""

    def __init__(self, agent: SimAgent, loop: asyncio.AbstractEventLoop) -> None:
        self.agent = agent
        self.loop = loop
        self.dead = False
        self.died = loop.create_future()
        self.calls = 0  # calls made
        self._started = 0  # calls started
        self._ending: asyncio.Future[Any] | None = None  # its guards and watchdog closing

    def __getattr__(self, method: str) -> _Method:
        if method.startswith("_"):
            raise AttributeError(method)
        return _Method(self, method)

    def kill(self) -> None:
        """Ends the agent (thread-safe, as ray.kill is)."""
        if self.dead:
            return
        self.dead = True
        self.agent.end()

        def ended() -> None:
            if not self.died.done():
                self.died.set_result(None)
            closing = [engine.guard.close() for engine in self.agent.engines.values()]
            self._ending = asyncio.ensure_future(
                asyncio.gather(*closing, self.agent.watchdog.close(), return_exceptions=True)
            )

        self.loop.call_soon_threadsafe(ended)

    async def run(self, method: str, args: tuple[Any, ...]) -> Any:
        # Started in the order they were made, as Ray starts an actor's tasks, a stall or not.
        # Polled, not an Event: a stall is set by the walk, a death from ray.kill's thread.
        turn, self.calls = self.calls, self.calls + 1
        sim = self.agent.sim
        while True:
            while (sim.stalled or self._started < turn) and not self.dead:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
            if self.dead or method not in sim.stall_on:
                break
            sim.stall_on.discard(method)  # a stall at a chosen point (tests): this call waits
            sim.stalled = True
        self._started += 1
        if method in sim.die_on:  # a death at a chosen point (tests)
            sim.die_on.discard(method)
            self.kill()
        if self.dead:
            raise RayActorError()
        result = getattr(self.agent, method)(*args)
        if not asyncio.iscoroutine(result):
            return result
        task = asyncio.ensure_future(result)
        await asyncio.wait({task, self.died}, return_when=asyncio.FIRST_COMPLETED)
        if not task.done():
            task.cancel()
            raise RayActorError()
        return task.result()


@dataclass
class _Method:
    handle: SimHandle
    method: str

    def remote(self, *args: Any) -> Ref:
        # As on Ray, a caller that stops waiting (a timeout, a cancel) does not cancel the
        # call: the agent runs it all the same. So the answer is not the task's own, and each
        # waiter has a future of its own (Ref, as the driver's): one that gives up cancels
        # only its own, never the answer another awaits (a spawn's undo awaits its end).
        answer: concurrent.futures.Future[Any] = concurrent.futures.Future()
        running = asyncio.run_coroutine_threadsafe(
            self.handle.run(self.method, args), self.handle.loop
        )

        def done(task: concurrent.futures.Future[Any]) -> None:
            if task.cancelled():  # the loop closing
                answer.set_exception(RayActorError())
            elif (error := task.exception()) is not None:
                answer.set_exception(error)
            else:
                answer.set_result(task.result())

        running.add_done_callback(done)
        return Ref(answer)


class SimWorld:
    """The simulated cluster: its nodes, its head, and the faults a test injects."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.nodes: dict[str, SimNode] = {}  # by name: the node now called so
        self.head_down = False
        self._ids = itertools.count()

    def add_node(self, name: str, gpus_mib: list[int], ram_mib: int) -> SimNode:
        """A node joins (or a dead one comes back: as on Ray, with a new node id)."""
        node = SimNode(f"{next(self._ids):04d}{name}".ljust(28, "0"), name, gpus_mib, ram_mib)
        self.nodes[name] = node
        return node

    def cluster(self, settings: Settings) -> SimCluster:
        assert settings.ray is not None
        return SimCluster(settings.ray, instance_id(Path(settings.state_dir)), self)

    def stall(self, node: SimNode) -> None:
        node.stalled = True

    def resume(self, node: SimNode) -> None:
        node.stalled = False

    def kill_agent(self, node: SimNode) -> None:
        """Its agent dies (the node lives on: Ray lists it alive)."""
        for handle in node.agents:
            handle.kill()

    def kill_node(self, node: SimNode) -> None:
        """The machine is gone: its agent and engines with it, and Ray lists it dead."""
        self.kill_agent(node)
        node.alive = False

    def agent(self, node: SimNode) -> SimAgent | None:
        """Its live agent, if any."""
        live = [h for h in node.agents if not h.dead]
        return live[-1].agent if live else None

    def every_node(self) -> list[SimNode]:
        return list(self.nodes.values())


class SimCluster(Cluster):
    """`Cluster` over the simulated world: Ray's calls are the world's; the rest is Cluster's."""

    def __init__(self, config: Any, gateway: str, world: SimWorld) -> None:
        super().__init__(config, gateway)
        self.world = world
        self._by_id: dict[str, SimNode] = {}

    async def _init_driver(self) -> None:
        if self.world.head_down:
            raise RuntimeError(f"cluster.ray.address {self.config.address}: the head is down")

    async def _node_table(self) -> list[dict[str, Any]]:
        if self.world.head_down:
            await asyncio.sleep(HEAD_SILENT_S)
            raise HeadUnreachable(f"the simulated head at {self.config.address} is down")
        for node in self.world.every_node():
            self._by_id[node.node_id] = node
        return [{"NodeID": n.node_id, "Alive": n.alive} for n in self._by_id.values()]

    def _new_agent(self, node_id: str) -> Any:
        node = self._by_id[node_id]
        if not node.alive:
            raise RuntimeError(f"node {node.name} is dead")
        agent = SimAgent(self.gateway, node, self.world.root)
        handle = SimHandle(agent, asyncio.get_running_loop())
        node.agents.append(handle)
        return handle

    def _kill_agent(self, agent: Any) -> None:
        agent.kill()

    def _disconnect(self) -> None:
        """No driver to leave."""
