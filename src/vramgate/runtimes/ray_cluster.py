"""The gateway's view of a Ray cluster: it joins as a driver, runs one agent on every live node
(never detached: they die with the gateway), reads each node's GPUs every `poll_s`, sees nodes
join and die, and gives every node's GPUs cluster-wide indices (never reused: a GPU of a dead
node is never mistaken for a new one).

Every wait on Ray is bounded (`connect_timeout`). A node is dead when Ray says so, when its agent
has died, or when its agent has not answered for three polls running.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import os
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from vramgate.config import RayCluster
from vramgate.errors import EngineStartFailed, NodeLost

if TYPE_CHECKING:
    from vramgate.runtimes.ray_driver import Driver

log = logging.getLogger("vramgate.cluster")
MISSED_POLLS = 3  # an agent that answers none of this many reads in a row is taken for dead
CALL_TIMEOUT_S = 10.0
GCS_WAIT_S = 86_400 * 365  # how long the driver waits for a lost head before Ray ends it
DRIVER_HANG_S = 15.0  # a driver that answers no ping this long is ended and started anew
REJOIN_S = 5.0  # a node Ray reports alive whose agent was lost: a new agent tried this often


class HeadUnreachable(Exception):
    """The head's GCS did not answer; the message says since when and what it means."""


@dataclass
class Node:
    node_id: str
    name: str
    address: str
    agent: Any  # the agent's Ray actor handle
    totals_mib: list[int]  # its GPUs, by local index
    first_index: int  # its GPU k is the cluster's GPU first_index + k
    kind: str  # nvml, simulated, none
    number: int = 0  # in order of joining: its RAM's device index in placement is -2 - number
    host_budget_mib: int = 0  # what it had available at its first reading: its default RAM budget
    alive: bool = True
    joined_at: float = field(default_factory=time.time)
    died_at: float | None = None
    why_dead: str = ""
    reading: dict[str, Any] = field(default_factory=dict)  # the agent's last memory()
    missed: int = 0
    engines: set[str] = field(default_factory=set)  # models whose engines run there

    def indices(self) -> list[int]:
        return [self.first_index + k for k in range(len(self.totals_mib))]

    def ram_budget_mib(self, configured_mib: int | None) -> int:
        """Its RAM budget: host_ram_mib where set, else what it had available when it joined."""
        return configured_mib if configured_mib is not None else self.host_budget_mib


def _kept(future: asyncio.Future[Any]) -> asyncio.Future[Any]:
    """A call kept for whoever asks next (ray.init, ray.nodes()): its failure is read here too,
    for a call that fails after the last waiter left (a driver replaced meanwhile) is asked by
    no one, and asyncio would log "exception was never retrieved"."""
    future.add_done_callback(lambda f: f.cancelled() or f.exception())
    return future


async def call(ref: Any, timeout_s: float = CALL_TIMEOUT_S) -> Any:
    """Awaits a Ray call, bounded: TimeoutError after `timeout_s`."""
    return await asyncio.wait_for(asyncio.wrap_future(ref.future()), timeout_s)


class Cluster:
    def __init__(self, config: RayCluster, gateway: str) -> None:
        self.config = config
        self.gateway = gateway  # this gateway's id: its agents' names and node folders
        self.nodes: dict[str, Node] = {}  # by Ray node id
        self._next_index = 0
        self._poller: asyncio.Task[None] | None = None
        self._starting: set[str] = set()
        self._rejoin_at: dict[str, float] = {}  # node id -> when a new agent may be tried
        self._agents = 0  # agents started: each one's name is its own (the old may linger)
        self._rejoins: set[asyncio.Task[None]] = set()
        self._listing: asyncio.Future[list[dict[str, Any]]] | None = None  # ray.nodes() running
        self._listing_since = 0.0
        self.connected = False  # joined: the head answered once
        self.driver: Driver | None = None  # the driver process (ray_driver.py)
        self._init: asyncio.Future[Any] | None = None  # its ray.init, running
        self._ping: tuple[concurrent.futures.Future[Any], float] | None = None  # in flight, sent
        self.where: dict[str, str] = {}  # the driver's address and the GCS it reached
        # Told when a node dies (runtimes end its engines) and when anything changes.
        self.on_dead: list[Callable[[Node], Awaitable[None]]] = []
        self.on_change: list[Callable[[], None]] = []

    async def connect(self) -> None:
        await self._init_driver()
        await self.refresh()
        self._poller = asyncio.create_task(self._poll())
        self.connected = True
        self._changed()

    async def _init_driver(self) -> None:
        """Joins the cluster through a driver process of its own (ray_driver.py: what Ray does
        to a driver never ends the gateway), bounded; RuntimeError if it cannot."""
        host = self.config.address.rpartition(":")[0]
        on_loopback = host.startswith("127.") or host == "localhost"
        env = {
            # Ray ends a driver whose GCS has not answered for 60 s: told to wait for its head
            # instead (what is lost meanwhile is the node table: HeadUnreachable in the log).
            "RAY_gcs_rpc_server_reconnect_timeout_s": str(GCS_WAIT_S),
            "RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED", "0"),
        }
        if on_loopback:
            # Ray would advertise this machine's network address for a cluster it reaches on
            # loopback; such a cluster (one box, the tests) must stay there. Never for a real
            # cluster, whose nodes must reach the driver.
            env["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
        from vramgate.runtimes.ray_driver import Driver

        init = self._init
        failed = init is not None and init.done() and (init.cancelled() or init.exception())
        if self.driver is None or self.driver.ended is not None or init is None or failed:
            if self.driver is not None:  # ended, or its ray.init failed: a fresh process
                await asyncio.to_thread(self.driver.close, 1)
            self.driver = Driver(env)
            address, namespace = self.config.address, self.config.namespace
            self._init = _kept(
                asyncio.wrap_future(self.driver.request("init", address, namespace, on_loopback))
            )
        assert self._init is not None
        timeout = self.config.connect_timeout
        try:
            self.where = await asyncio.wait_for(asyncio.shield(self._init), timeout)
        except TimeoutError as exc:
            raise RuntimeError(
                f"cluster.ray.address {self.config.address}: no Ray cluster answered within "
                f"{timeout:g} s"
            ) from exc
        except Exception as exc:
            raise RuntimeError(f"cluster.ray.address {self.config.address}: {exc}") from exc

    def _driver_ended(self) -> str | None:
        """Why the driver process ended, if it has (its agents died with it)."""
        return None if self.driver is None else self.driver.ended

    def _driver_hung(self) -> bool:
        """The driver has not answered a ping (which asks nothing of the head) for
        DRIVER_HANG_S: a hung core worker, not a lost head. Without this it read as a lost head
        for ever, and its nodes, taken for dead, could not be fenced through it."""
        assert self.driver is not None
        now = time.monotonic()
        ping, sent = self._ping or (None, 0.0)
        if ping is None or ping.done():
            self._ping = (self.driver.request("ping"), now)
            return False
        if now - sent < DRIVER_HANG_S:
            return False
        log.warning("the Ray driver has not answered for %.0f s: it is ended, and its agents "
                    "with it (their engines stop); a new one joins", now - sent)  # fmt: skip
        self._ping = None
        return True

    def _joined(self) -> bool:
        """The driver runs and its ray.init succeeded."""
        init = self._init
        return (
            self.driver is not None and self.driver.ended is None and init is not None
            and init.done() and not init.cancelled() and init.exception() is None
        )  # fmt: skip

    async def _new_driver(self, why: str) -> None:
        """The driver ended (a head back as a new cluster makes Ray abort it): its agents died
        with it, so its nodes are dead; a new driver joins the head that answers now, and Ray
        then lists the nodes again (new ones, or the same ones, each given a new agent)."""
        for node in self.live():
            await self.dead(node, why)
        try:
            await self._init_driver()
        except RuntimeError as exc:
            log.warning("%s; joining again: %s", why, exc)
            return
        log.info("%s; the cluster at %s joined again", why, self.config.address)

    async def connect_until_up(self, retry_s: float) -> None:
        """`connect`, tried every `retry_s` until the head answers (a gateway started while
        its head was down serves what does not need it meanwhile)."""
        while True:
            await asyncio.sleep(retry_s)
            try:
                await self.connect()
            except (RuntimeError, HeadUnreachable) as exc:
                log.warning("%s: trying again in %g s", exc, retry_s)
                continue
            log.info("cluster at %s joined", self.config.address)
            return

    async def close(self, stop_timeout_s: float) -> None:
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
        for task in list(self._rejoins):
            task.cancel()
        live = [n for n in self.nodes.values() if n.alive]
        with contextlib.suppress(Exception):
            await asyncio.gather(
                *(call(n.agent.shutdown.remote(stop_timeout_s), stop_timeout_s + 10) for n in live),
                return_exceptions=True,
            )
        for node in live:
            with contextlib.suppress(Exception):
                self._kill_agent(node.agent)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(asyncio.to_thread(self._disconnect), 10)

    # -- nodes -----------------------------------------------------------------------------

    async def refresh(self) -> None:
        """Ray's node table: new live nodes get an agent, nodes Ray calls dead are dead."""

        infos = await self._node_table()
        starts = []
        for info in infos:
            node_id = info["NodeID"]
            known = self.nodes.get(node_id)
            if not info.get("Alive"):
                if known is not None and known.alive:
                    await self.dead(known, "Ray reports the node dead")
                continue
            if node_id in self._starting:
                continue
            if known is None:
                starts.append(self._join(node_id))
            elif not known.alive and time.monotonic() >= self._rejoin_at.get(node_id, 0.0):
                # Alive for Ray, lost to us (its agent died, or stalled and was fenced): a new
                # agent, in the background (a node still hung costs its connect_timeout there,
                # not every node's reads); its hello removes what the old one left running.
                self._rejoin_at[node_id] = time.monotonic() + REJOIN_S
                task = asyncio.create_task(self._join(node_id))
                self._rejoins.add(task)
                task.add_done_callback(self._rejoins.discard)
        if starts:
            await asyncio.gather(*starts)

    async def _node_table(self) -> list[dict[str, Any]]:
        """Ray's node table from the head (its GCS), bounded. One listing at a time: a head
        that is down holds the listing, and a new one every poll would pile up."""
        if self._listing is None or self._listing.done():
            assert self.driver is not None
            self._listing = _kept(asyncio.wrap_future(self.driver.request("nodes")))
            self._listing_since = time.monotonic()
        try:
            infos = await asyncio.wait_for(asyncio.shield(self._listing), CALL_TIMEOUT_S)
        except TimeoutError:
            silent_s = time.monotonic() - self._listing_since
            raise HeadUnreachable(
                f"the Ray head at {self.config.address} has not answered for {silent_s:.0f} s "
                "(its GCS down or out of reach): no node is joined or read meanwhile; engines "
                "already running keep serving"
            ) from None
        return infos

    def _new_agent(self, node_id: str) -> Any:
        """An agent actor on that node (its handle; `hello` tells when it runs)."""
        assert self.driver is not None
        name = f"vramgate-{self.gateway}-{node_id[:16]}-{self._agents}"
        return self.driver.agent(node_id, name, self.gateway)

    def _kill_agent(self, agent: Any) -> None:
        """Ends the agent actor (its watchdog then ends its engines); blocking, bounded."""
        agent.driver.request("kill", agent.key).result(CALL_TIMEOUT_S)

    def _disconnect(self) -> None:
        """Leaves the cluster as a driver (its process ends); blocking."""
        if self.driver is not None:
            self.driver.close()

    async def _join(self, node_id: str) -> None:
        self._starting.add(node_id)
        self._agents += 1
        agent: Any = None
        try:
            agent = self._new_agent(node_id)
            hello = await call(agent.hello.remote(), self.config.connect_timeout)
        except Exception as exc:
            log.warning("node %s: its agent did not start: %r", node_id[:12], exc)
            if agent is not None:
                with contextlib.suppress(Exception):
                    self._kill_agent(agent)
            return
        finally:
            self._starting.discard(node_id)
        node = Node(
            node_id, hello["name"], hello["address"], agent, hello["gpus"], self._next_index,
            hello["kind"],
        )  # fmt: skip
        self._next_index += len(node.totals_mib)
        node.number = len(self.nodes)
        former = self.nodes.get(node_id)
        if former is not None:  # joined again: the dead entry stays, under a key of its own
            self.nodes[f"{node_id}#{former.number}"] = former
        self.nodes[node_id] = node
        removed = len(hello["removed"])
        left = f"; removed {removed} engines an earlier run left" if removed else ""
        log.info(
            "node %s joined (%s, %s: %d GPUs, %s MiB%s)", node.name, node.address, node.kind,
            len(node.totals_mib), node.totals_mib, left,
        )  # fmt: skip
        await self._read(node)
        self._changed()

    async def dead(self, node: Node, why: str) -> None:
        if not node.alive:
            return
        node.alive, node.died_at, node.why_dead = False, time.time(), why
        log.warning("node %s is dead (%s): its engines are gone", node.name, why)
        # Fenced: a stalled agent (a hung NVML call) that answers again later would keep its
        # engines, and their GPU memory, until the gateway exits. Killed, its watchdog ends
        # them; the next agent there removes any left (ray_agent._remove_leftovers).
        await self._fence(node)
        for hook in self.on_dead:
            # Each told whatever another does: the node is dead already, and no later read
            # would tell a hook that a failure before it skipped.
            try:
                await hook(node)
            except Exception as exc:
                log.warning("node %s: a hook told of its death failed: %r", node.name, exc)
        self._changed()

    async def _fence(self, node: Node) -> None:
        if self._driver_ended() is not None:  # its agents died with the driver
            return
        try:
            kill = asyncio.to_thread(self._kill_agent, node.agent)
            await asyncio.wait_for(kill, CALL_TIMEOUT_S)
        except Exception as exc:  # the GCS away too: the next agent there removes them
            log.warning("node %s: its agent could not be killed: %r", node.name, exc)

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(self.config.poll_s)
            if (why := self._driver_ended()) is not None:
                await self._new_driver(why)
                continue
            if self.driver is not None and self._joined() and self._driver_hung():
                self.driver.kill()  # ended at the next poll: a new driver, its nodes dead
                continue
            if self.driver is not None and not self._joined():  # its ray.init failed, or runs
                try:
                    await self._init_driver()
                except RuntimeError as exc:
                    log.warning("%s: trying again in %g s", exc, self.config.poll_s)
                    continue
            try:
                await self.refresh()
            except asyncio.CancelledError:
                raise
            except HeadUnreachable as exc:  # tried again at the next poll
                log.warning("reading the cluster failed: %s", exc)
            except Exception as exc:  # the GCS busy: try again at the next poll
                log.warning("reading the cluster failed: %r", exc)
            # The agents are read whatever the head does: their calls do not go through it,
            # and an agent (or node) that died while the head was away was found only once it
            # was back, its requests waiting meanwhile (the walk's seed 20994310).
            live = [n for n in self.nodes.values() if n.alive]
            try:
                await asyncio.gather(*(self._read(n) for n in live))
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # a hook told of a death failed: the poll goes on
                log.warning("reading the nodes failed: %r", exc)

    async def _read(self, node: Node) -> None:
        from ray.exceptions import RayActorError

        try:
            reading = await call(node.agent.memory.remote(), CALL_TIMEOUT_S)
            if not node.reading:  # its first: what it has now is its budget
                node.host_budget_mib = int(reading.get("host_available_mib", 0))
            node.reading, node.missed = reading, 0
        except RayActorError as exc:
            ended = self._driver_ended()
            why = (
                f"{ended}: its agents died with it"
                if ended
                else f"its agent died: {type(exc).__name__}"
            )
            await self.dead(node, why)
        except Exception as exc:
            node.missed += 1
            if node.missed >= MISSED_POLLS:
                await self.dead(node, f"its agent did not answer {node.missed} reads ({exc!r})")

    async def read_now(self, names: set[str]) -> None:
        """A fresh reading of the nodes running these engines (after a load, to measure it)."""
        nodes = [n for n in self.nodes.values() if n.alive and n.engines & names]
        await asyncio.gather(*(self._read(n) for n in nodes))

    def _changed(self) -> None:
        for hook in self.on_change:
            hook()

    # -- lookups ---------------------------------------------------------------------------

    def live(self) -> list[Node]:
        return [n for n in self.nodes.values() if n.alive]

    def read(self) -> list[Node]:
        """The live nodes read at least once: a node just joined, or whose first reading did
        not come (its agent stalled), has no RAM budget yet, and read as one of 0 MiB it made
        placement refuse CPU engines for host RAM (NoHostRoom, 'the largest node's RAM budget
        is 0') while another node was dead."""
        return [n for n in self.live() if n.reading]

    def node_of_gpu(self, index: int) -> tuple[Node, int]:
        for node in self.live():
            if node.first_index <= index < node.first_index + len(node.totals_mib):
                return node, index - node.first_index
        raise NodeLost(f"GPU {index} is not in the cluster any more (its node died)")

    def node_for(
        self, gpus: tuple[int, ...], allowed: tuple[str, ...]
    ) -> tuple[Node, tuple[int, ...]]:
        """Where an engine on these (cluster) GPUs runs; without GPUs, on the first live node it
        may run on, the one with the most host RAM available."""
        if gpus:
            placed = [self.node_of_gpu(i) for i in gpus]
            nodes = {n.node_id for n, _ in placed}
            if len(nodes) != 1:
                raise EngineStartFailed(f"GPUs {gpus} are not on one node")
            return placed[0][0], tuple(k for _, k in placed)
        candidates = [n for n in self.live() if not allowed or n.name in allowed]
        if not candidates:
            where = f" among {', '.join(allowed)}" if allowed else ""
            raise EngineStartFailed(f"no live node in the cluster{where}")
        best = max(candidates, key=lambda n: n.reading.get("host_available_mib", 0))
        return best, ()
