"""The agent the gateway runs on each node of a Ray cluster (an async actor, never detached: it dies
with the gateway that owns it). It starts engines there as the local runtime does (own process
group, PR_SET_PDEATHSIG from its event loop's long-lived thread, a watchdog process that kills
every engine group once the agent is gone, however it dies), puts a guard in front of each, reads
the node's GPUs (NVML, or simulated from `VRAMGATE_SIMULATE_MIB`) and its engines' memory, and
keeps their output for the gateway to fetch.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

from vramgate.engines.base import LaunchSpec
from vramgate.filenames import file_stem
from vramgate.gpu.base import GpuBackend
from vramgate.gpu.nvml import NvmlGpus, nvml_available
from vramgate.gpu.proctree import tree_rss_mib
from vramgate.gpu.share import share_mib
from vramgate.gpu.simulated import SimulatedGpus
from vramgate.hostram import available_mib, tree_pss_mib
from vramgate.runtimes.guard import Guard, exposed_here
from vramgate.runtimes.local import EngineProcess, Watchdog, free_port

NODE_LABEL = "vramgate-node"
OUTPUT_POLL_S = 0.05


def node_gpus(state_dir: Path) -> GpuBackend | None:
    """This node's GPUs: simulated from its environment (tests, CPU boxes), else NVML, else
    none (a node for engines on the CPU)."""
    simulated = os.environ.get("VRAMGATE_SIMULATE_MIB", "").strip()
    if simulated:
        totals = [int(part) for part in simulated.split(",") if part.strip()]
        others = os.environ.get("VRAMGATE_SIMULATE_OTHERS_FILE")
        return SimulatedGpus(totals, 0, state_dir, Path(others) if others else None)
    if nvml_available():
        return NvmlGpus(0)
    return None


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat): with the pid, its identity."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return stat.rsplit(")", 1)[1].split()[19]


class Engine:
    """One engine on this node: its process and its guard."""

    def __init__(self, proc: EngineProcess, guard: Guard) -> None:
        self.proc = proc
        self.guard = guard
        self.spawned = asyncio.Event()  # its process exists (or its spawn failed)


class NodeAgent:
    def __init__(self, gateway: str) -> None:
        import ray

        context = ray.get_runtime_context()
        self.node_id = context.get_node_id()
        labels = context.get_node_labels()
        self.name = str(labels.get(NODE_LABEL) or self.node_id)
        self.address = ray.util.get_node_ip_address()
        root = Path(os.environ.get("VRAMGATE_AGENT_DIR", tempfile.gettempdir()))
        self.dir = root / "vramgate-agent" / file_stem(gateway) / file_stem(self.name)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.gpus = node_gpus(self.dir)
        self.watchdog = Watchdog()
        self.engines: dict[str, Engine] = {}
        self.on_gpus: dict[str, tuple[int, ...]] = {}  # each engine's GPUs, this node's indices

    async def hello(self) -> dict[str, Any]:
        """Starts the watchdog, removes what an earlier run left, and says what this node is."""
        removed = await asyncio.to_thread(self._remove_leftovers)
        await self.watchdog.start()
        return {
            "node_id": self.node_id,
            "name": self.name,
            "address": self.address,
            "pid": os.getpid(),
            "kind": self.gpus.kind if self.gpus else "none",
            "gpus": [g.total_mib for g in self.gpus.memory()] if self.gpus else [],
            "removed": removed,
        }

    def _remove_leftovers(self) -> list[int]:
        """Engine groups an earlier agent of this gateway recorded and did not stop (a watchdog
        that could not run): killed, if the process is still the one recorded."""
        removed = []
        for record in self.dir.glob("*.engine"):
            with contextlib.suppress(OSError, ValueError):
                pid_text, started = record.read_text().split()
                pid = int(pid_text)
                if _start_time(pid) == started:
                    with contextlib.suppress(ProcessLookupError, PermissionError):
                        os.killpg(pid, signal.SIGKILL)
                    removed.append(pid)
            record.unlink(missing_ok=True)
        return removed

    def port(self) -> int:
        return free_port()

    async def spawn(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        health_path: str,
        gpus: tuple[int, ...],
        port: int,
        secret: str,
    ) -> dict[str, Any]:
        """Starts the engine on `port` (loopback) with its guard on the node's address."""
        if name in self.engines:  # a stop the gateway could not see through: end it now
            await self.stop(name, 0)
        if self.gpus is not None and gpus:
            env = {**env, **self.gpus.attach(name, gpus)}
            self.on_gpus[name] = gpus
        elif self.gpus is not None:
            env = {**env, "CUDA_VISIBLE_DEVICES": ""}
        log_path = self.dir / f"{file_stem(name)}.log"
        spec = LaunchSpec(argv, health_path)
        proc = EngineProcess(name, spec, port, log_path, None, self.watchdog)
        guard = Guard(secret, port)
        engine = Engine(proc, guard)
        self.engines[name] = engine
        try:
            await proc.spawn(env)
        except Exception:
            self.engines.pop(name, None)
            raise
        finally:
            engine.spawned.set()
        if self.engines.get(name) is not engine:  # stopped while it spawned: stop() ends it
            raise RuntimeError(f"engine {name!r} was stopped while it started")
        if self.gpus is not None:
            self.gpus.track(name, proc.pids())
        assert proc.pid is not None
        record = self.dir / f"{file_stem(name)}.engine"
        with contextlib.suppress(OSError):
            record.write_text(f"{proc.pid} {_start_time(proc.pid)}\n")
        guard_port = await guard.start(self.address)
        return {"pid": proc.pid, "guard_port": guard_port, "started_at": proc.started_at}

    def exposed(self, name: str) -> list[str]:
        """Where the engine listens beyond this node's loopback (it should not: see guard)."""
        engine = self.engines.get(name)
        return exposed_here(engine.proc.port) if engine is not None else []

    async def output(self, name: str, cursor: int, wait_s: float) -> dict[str, Any]:
        """Lines after `cursor` (waiting up to `wait_s` for some), and the exit status once the
        engine has exited and all its output was read."""
        engine = self.engines.get(name)
        if engine is None:
            return {"lines": [], "cursor": cursor, "exited": True, "code": None}
        deadline = time.monotonic() + wait_s
        while engine.proc.out.count <= cursor and time.monotonic() < deadline:
            if engine.proc.returncode is not None:
                await engine.proc.drain_output()  # the last lines explain why
                break
            await asyncio.sleep(OUTPUT_POLL_S)
        code = engine.proc.returncode
        return {
            "lines": engine.proc.out.since(cursor),
            "cursor": engine.proc.out.count,
            "exited": code is not None and engine.proc.output_done,
            "code": code,
        }

    async def stop(self, name: str, timeout_s: float, secret: str | None = None) -> int | None:
        """Stops the model's engine here; with `secret`, only the engine of the start that
        made it (another start's engine of the same model is left alone)."""
        engine = self.engines.get(name)
        if engine is None or (secret is not None and engine.guard.secret != secret):
            return None
        self.engines.pop(name, None)
        # A stop sent while its spawn is under way (the gateway gave the spawn up after its
        # call's timeout) found no process yet, and the spawn then started one nobody knew of.
        await engine.spawned.wait()
        try:
            return await engine.proc.stop(timeout_s)
        finally:
            await engine.guard.close()
            if self.gpus is not None:  # the next load must find its memory free
                await self.gpus.wait_released(name, 10)
                self.gpus.detach(name)
            self.on_gpus.pop(name, None)
            (self.dir / f"{file_stem(name)}.engine").unlink(missing_ok=True)

    async def memory(self) -> dict[str, Any]:
        """The node's GPUs and what each engine holds; read in a thread (NVML, /proc)."""
        return await asyncio.to_thread(self._memory)

    def _memory(self) -> dict[str, Any]:
        engines: dict[str, int | None] = {}
        gpus: list[dict[str, int]] = []
        if self.gpus is not None:
            engines = {name: self.gpus.used_by(name) for name in self.engines}
            mine = [0] * len(self.gpus.memory())
            for name, on in self.on_gpus.items():
                for k in on:
                    mine[k] += share_mib(engines.get(name) or 0, len(on))
            for k, g in enumerate(self.gpus.memory()):
                gpus.append({"total": g.total_mib, "used": g.used_mib, "others": g.others_mib,
                             "engines": mine[k]})  # fmt: skip
        return {"gpus": gpus, "engines": engines, "host_available_mib": available_mib()}

    def host_ram(self, name: str, kind: str) -> int:
        """Host RAM of the engine's process tree: PSS (running), or RSS (what it keeps asleep)."""
        engine = self.engines.get(name)
        if engine is None:
            return 0
        pids = engine.proc.pids()
        return tree_pss_mib(pids) if kind == "pss" else tree_rss_mib(pids)

    async def shutdown(self, timeout_s: float) -> None:
        """The gateway is closing: every engine stops (in parallel), then the watchdog."""
        await asyncio.gather(*(self.stop(n, timeout_s) for n in list(self.engines)))
        await self.watchdog.close()
