"""The `ray` runtime: engines on the nodes of a Ray cluster, started by each node's agent, reached
through the agent's guard with a per-engine secret. Their output comes back to the gateway's
log and log route; a node that dies ends its engines here at once (their requests fail, the
models read stopped and start elsewhere at the next request).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import secrets
import time
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import aiohttp

from vramgate.config import Settings
from vramgate.containers import Container
from vramgate.errors import EngineStartFailed, GatewayBusy, GatewayError, NodeLost
from vramgate.events import Fanout
from vramgate.runtimes import readiness
from vramgate.runtimes.base import IsReady, SpecForPort
from vramgate.runtimes.docker import instance_id
from vramgate.runtimes.guard import KEY_HEADER
from vramgate.runtimes.local import KILL_WAIT_S
from vramgate.runtimes.output import EngineOutput
from vramgate.runtimes.ray_cluster import CALL_TIMEOUT_S, Cluster, Node, call

log = logging.getLogger("vramgate.runtime")
JOIN_RETRY_S = 10.0  # a cluster whose head did not answer at start: joined again this often
OUTPUT_WAIT_S = 1.0  # each fetch of an engine's output waits this long for new lines


class RayEngine:
    """One engine on a node, as the gateway sees it."""

    def __init__(
        self, name: str, node: Node, port: int, secret: str, pid: int, health_path: str,
        out: EngineOutput, agent_died: Callable[[Node, str], Awaitable[None]],
    ) -> None:  # fmt: skip
        self.name, self.node = name, node
        self._agent_died = agent_died
        self._health = health_path
        self.base_url = f"http://{node.address}:{port}"
        self.headers = {KEY_HEADER: secret}
        self.where = node.name
        self.started_at = time.time()
        self.lost_reason: str | None = None
        self._port, self._pid = port, pid
        self.out = out
        self._code: int | None = None
        self._exit: asyncio.Future[int | None] = asyncio.get_running_loop().create_future()
        self._pump = asyncio.create_task(self._fetch_output())

    @property
    def pid(self) -> int | None:
        return self._pid  # on its node

    @property
    def port(self) -> int:
        return self._port

    @property
    def returncode(self) -> int | None:
        return self._code

    @property
    def lines(self) -> Sequence[str]:
        return self.out.lines

    def tail(self, n: int = 20) -> list[str]:
        return self.out.tail(n)

    def pids(self) -> list[int]:
        return []  # processes of another host: its agent measures them

    def host_ram(self, kind: str) -> int:
        """Its process tree's host RAM on its node (called in a thread)."""
        try:  # the ref's future, as ray.get: the same wait, and any agent handle has it
            return int(self.node.agent.host_ram.remote(self.name, kind).future().result(10))
        except Exception:
            return 0

    async def _fetch_output(self) -> None:
        from ray.exceptions import ActorDiedError

        cursor, missed = 0, 0
        self.out.open(f"pid {self._pid} on node {self.node.name}")
        try:
            while not self._exit.done():
                try:
                    got = await call(
                        self.node.agent.output.remote(self.name, cursor, OUTPUT_WAIT_S),
                        OUTPUT_WAIT_S + CALL_TIMEOUT_S,
                    )
                except ActorDiedError as exc:
                    # Its agent died (not merely out of reach: ActorUnavailableError is Ray's
                    # word for a blip), and its engines with it: the cluster is told now, not
                    # at its next read, so that a request its guard reset is sent again at
                    # once (relaying.run waits 2 s for the exit) and none goes to the dead guard.
                    await self._agent_died(self.node, f"its agent died: {type(exc).__name__}")
                    await asyncio.sleep(OUTPUT_WAIT_S)
                    continue
                except Exception as exc:  # the node's death is the cluster's to tell
                    missed += 1
                    if missed == 1:
                        log.warning("model '%s': its output cannot be read: %r", self.name, exc)
                    await asyncio.sleep(OUTPUT_WAIT_S)
                    continue
                missed = 0
                for line in got["lines"]:
                    self.out.add(line)
                cursor = got["cursor"]
                if got["exited"]:
                    self._ended(got["code"])
        finally:
            self.out.close()

    def _ended(self, code: int | None) -> None:
        self._code = code
        if not self._exit.done():
            self._exit.set_result(code)

    def lost(self, why: str) -> None:
        """Its node died: it is gone with it."""
        self.lost_reason = why
        self.out.add(f"[vramgate: node {self.node.name} died ({why})]")
        self._ended(None)

    async def wait(self) -> int | None:
        return await asyncio.shield(self._exit)

    async def probe(self, http: aiohttp.ClientSession, timeout_s: float, is_ready: IsReady) -> bool:
        return await readiness.probe(
            http, self.base_url + self._health, is_ready, timeout_s, self.headers
        )

    async def wait_ready(
        self, http: aiohttp.ClientSession, timeout_s: float, is_ready: IsReady
    ) -> None:
        async def exited_error() -> Exception:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._pump), 2)
            return self._start_error(f"exited with code {self._code} while starting")

        await readiness.poll_until_ready(
            http, self.base_url + self._health, timeout_s, is_ready, self._exit, exited_error,
            lambda: self._start_error(f"was not ready after {timeout_s:g} s"), self.headers,
        )  # fmt: skip
        # Ready, and behind its guard only: an engine that binds beyond the node's loopback (a
        # `command` with its own --host 0.0.0.0) would answer anyone there without the key.
        try:
            found: list[str] = await call(self.node.agent.exposed.remote(self.name))
        except Exception as exc:  # its agent died after the engine was ready: so did the engine
            self.lost(f"its agent did not answer: {exc!r}")
            raise self._start_error(f"could not be checked: {exc!r}") from exc
        if found:
            raise self._start_error(
                f"listens on {', '.join(found)}, reachable without the guard's key; make it "
                "listen on 127.0.0.1 (the guard in front of it is what the gateway reaches)"
            )

    def _start_error(self, what: str) -> EngineStartFailed:
        where = f" on node {self.node.name}: engine {what}"
        return readiness.start_failed(self.name, where, self.tail(15))

    async def stop(self, timeout_s: float) -> int | None:
        """Its agent stops it (SIGTERM, SIGKILL after `timeout_s`); bounded, whatever the node."""
        if not self._exit.done() and self.node.alive:
            try:
                code = await call(
                    # Its own engine only (by its start's secret): a stale stop never ends a
                    # newer engine of the model there.
                    self.node.agent.stop.remote(self.name, timeout_s, self.headers[KEY_HEADER]),
                    timeout_s + KILL_WAIT_S + CALL_TIMEOUT_S,
                )
                self._ended(code)
            except Exception as exc:
                log.warning("model '%s': stopping it on node %s failed: %r", self.name,
                            self.node.name, exc)  # fmt: skip
        self._ended(self._code)
        with contextlib.suppress(TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(self._pump), OUTPUT_WAIT_S + 2)
        if not self._pump.done():
            self._pump.cancel()
        self.node.engines.discard(self.name)
        return self._code


class RayRuntime:
    """Engines on the nodes of the Ray cluster `cluster.ray` names."""

    kind = "ray"

    def __init__(self, settings: Settings, cluster: Cluster | None = None) -> None:
        """`cluster`: the Ray cluster `cluster.ray` names, or another one (the simulated one of
        vramgate.testing.sim_cluster, standing in for Ray)."""
        assert settings.ray is not None
        self.settings = settings
        state_dir = Path(settings.state_dir)
        self.cluster = cluster or Cluster(settings.ray, instance_id(state_dir))
        self.cluster.on_dead.append(self._node_died)
        self.engines: dict[str, RayEngine] = {}
        # Spawns given up on whose engines are being stopped: (node, model, the start's secret).
        # Still the gateway's to account for (what the cluster walk checks).
        self.undoing: set[tuple[str, str, str]] = set()
        self._joining: asyncio.Task[None] | None = None  # a head that did not answer at start

    async def start(self) -> None:
        """Joins the cluster; a head that does not answer yet does not keep the gateway down:
        it is tried again in the background, and cluster models answer 503 meanwhile."""
        try:
            await self.cluster.connect()
        except RuntimeError as exc:
            log.warning("%s: serving without the cluster until its head answers (tried every "
                        "%g s)", exc, JOIN_RETRY_S)  # fmt: skip
            self._joining = asyncio.create_task(self.cluster.connect_until_up(JOIN_RETRY_S))

    def unavailable(self) -> GatewayError | None:
        if self.cluster.connected:
            return None
        return GatewayBusy(
            f"the Ray cluster at {self.settings.ray.address if self.settings.ray else '?'} has "
            "not been joined yet (its head does not answer); retry later",
            headers={"Retry-After": str(int(JOIN_RETRY_S))},
        )

    async def close(self) -> None:
        if self._joining is not None:
            self._joining.cancel()
        await self.cluster.close(self.settings.defaults.stop_timeout)

    def nodes(self) -> list[dict[str, Any]]:
        """Every node seen, live or dead, for status."""
        return [
            {
                "name": n.name,
                "node_id": n.node_id,
                "address": n.address,
                "alive": n.alive,
                "kind": n.kind,
                "gpus": n.indices(),
                "engines": sorted(n.engines),
                "joined_at": n.joined_at,
                "died_at": n.died_at,
                "why_dead": n.why_dead or None,
                "host_available_mib": n.reading.get("host_available_mib"),
                "host_budget_mib": n.ram_budget_mib(self.settings.host_ram_mib),
            }
            for n in self.cluster.nodes.values()
        ]

    async def _undo(
        self, node: Node, name: str, spawning: Any, timeout_s: float, secret: str
    ) -> None:
        """Stops what a spawn call that was given up on started on `node` (bounded): that
        engine only, by its start's secret. By name alone, the undo of a start given up on
        waits for its spawn's end, and a new start of the model on that node meanwhile was
        the engine it stopped."""
        if not node.alive:
            return  # its agent was killed with the node's death: its watchdog ended the engine
        undoing = (node.name, name, secret)
        self.undoing.add(undoing)
        try:
            with contextlib.suppress(Exception):  # its end first: a stop before it finds nothing
                await call(spawning, timeout_s)
            await call(node.agent.stop.remote(name, 0, secret), KILL_WAIT_S + CALL_TIMEOUT_S)
        except Exception as exc:
            log.warning("model '%s': its engine on node %s, started as its start was given up, "
                        "could not be stopped: %r", name, node.name, exc)  # fmt: skip
        finally:
            self.undoing.discard(undoing)

    async def _start_failed(self, name: str, node: Node, exc: BaseException) -> EngineStartFailed:
        """A failed call to the node's agent during a start: NodeLost (placed anew) where the
        agent died or the node did meanwhile, else the start fails. An agent that died is
        dead to the cluster at once: were it left for the next poll to find, the start placed
        anew went to the same node and failed alike, every retry within milliseconds, and the
        model failed with Ray's own error as its last_error."""
        from ray.exceptions import RayActorError

        if isinstance(exc, RayActorError):
            await self.cluster.dead(node, f"its agent died: {type(exc).__name__}")
        if not node.alive:
            return NodeLost(f"model '{name}': node {node.name} was lost during its start "
                            f"({node.why_dead})")  # fmt: skip
        why = "its agent did not answer in time" if isinstance(exc, TimeoutError) else repr(exc)
        return EngineStartFailed(
            f"model '{name}': could not start its engine on node {node.name}: {why}"
        )

    async def _node_died(self, node: Node) -> None:
        for name, engine in list(self.engines.items()):
            if engine.node is node and engine.returncode is None:
                engine.lost(node.why_dead)
                del self.engines[name]

    async def spawn(
        self,
        name: str,
        spec_for_port: SpecForPort,
        env: dict[str, str],
        gpus: tuple[int, ...],
        log_path: Path,
        output: Fanout[str],
        container: Container | None = None,
        nodes: tuple[str, ...] = (),
    ) -> RayEngine:
        if container is not None:
            raise EngineStartFailed(f"model '{name}': a Ray cluster runs no containers")
        node, local = self.cluster.node_for(gpus, nodes)
        timeout = self.settings.ray.connect_timeout if self.settings.ray else CALL_TIMEOUT_S
        secret = secrets.token_urlsafe(32)
        try:
            port = await call(node.agent.port.remote(), timeout)
        except Exception as exc:
            raise await self._start_failed(name, node, exc) from exc
        spec = spec_for_port(port)
        ref = node.agent.spawn.remote(
            name, spec.argv, {**env, **spec.env}, spec.health_path, local, port, secret
        )
        try:
            started: dict[str, Any] = await call(ref, timeout)
        except BaseException as exc:
            # Cancelled (an unload a few ms after the request that started it) or timed out:
            # the agent goes on spawning all the same, and its engine would run there with
            # nobody's account of it (its memory read as ours). Stopped there, whatever ends
            # this, before the start ends, as the Docker runtime removes its container.
            await asyncio.shield(self._undo(node, name, ref, timeout, secret))
            if isinstance(exc, EngineStartFailed | asyncio.CancelledError):
                raise
            raise await self._start_failed(name, node, exc) from exc
        engine = RayEngine(
            name, node, started["guard_port"], secret, started["pid"], spec.health_path,
            EngineOutput(name, log_path, output), self.cluster.dead,
        )  # fmt: skip
        node.engines.add(name)
        self.engines[name] = engine
        return engine
