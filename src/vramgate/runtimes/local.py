"""The local runtime: engines as child processes on a free loopback port, with their output kept.

Each engine runs in its own process group so that a stop reaches its workers too, and it dies with
the gateway: PR_SET_PDEATHSIG for the engine itself, the watchdog process for its whole group.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import os
import signal
import socket
import sys
import time
from collections import deque
from pathlib import Path

import aiohttp

from vramgate.containers import Container
from vramgate.engine_keys import redacted
from vramgate.engines.base import LaunchSpec
from vramgate.errors import EngineStartFailed
from vramgate.events import Fanout
from vramgate.gpu.proctree import tree_rss_mib
from vramgate.hostram import tree_pss_mib
from vramgate.runtimes import readiness
from vramgate.runtimes.base import IsReady, SpecForPort
from vramgate.runtimes.output import EngineOutput

logger = logging.getLogger("vramgate.runtime")
# After SIGKILL the kernel reaps at once; a process stuck in the kernel (a GPU driver that hangs
# in uninterruptible sleep) may never exit: the stop gives up waiting rather than hang with it.
KILL_WAIT_S = 5.0
_PR_SET_PDEATHSIG = 1


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _die_with_parent() -> None:
    """Runs in the child between fork and exec: SIGKILL it when the gateway's thread exits."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)


class Watchdog:
    """The gateway's end of the watchdog process (see vramgate.watchdog)."""

    def __init__(self) -> None:
        self._proc: asyncio.subprocess.Process | None = None

    async def start(self) -> None:
        self._proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "vramgate.watchdog",
            stdin=asyncio.subprocess.PIPE,
            start_new_session=True,
        )

    def _send(self, line: str) -> None:
        if self._proc and self._proc.stdin and not self._proc.stdin.is_closing():
            self._proc.stdin.write(line.encode() + b"\n")

    def watch(self, pgid: int) -> None:
        self._send(f"+{pgid}")

    def forget(self, pgid: int) -> None:
        self._send(f"-{pgid}")

    def containers(self, instance: str) -> None:
        """At the end, also remove every container labelled with this gateway's instance id."""
        self._send(f"i{instance}")

    def watch_container(self, container_id: str) -> None:
        self._send(f"c{container_id}")

    def forget_container(self, container_id: str) -> None:
        self._send(f"x{container_id}")

    async def close(self) -> None:
        if self._proc and self._proc.stdin:
            self._proc.stdin.close()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._proc.wait(), 10)


class LocalRuntime:
    """Engines as local process groups, watched so that none outlives the gateway."""

    kind = "local"

    def __init__(self) -> None:
        self.watchdog = Watchdog()

    async def start(self) -> None:
        await self.watchdog.start()

    async def close(self) -> None:
        await self.watchdog.close()

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
    ) -> EngineProcess:
        if container is not None:
            raise EngineStartFailed(f"model '{name}': the local runtime runs no containers")
        port = free_port()
        proc = EngineProcess(name, spec_for_port(port), port, log_path, output, self.watchdog)
        await proc.spawn(env)
        return proc


class EngineProcess:
    """One engine child: its process, port, recent output and log file."""

    def __init__(
        self,
        name: str,
        spec: LaunchSpec,
        port: int,
        log_path: Path,
        output: Fanout[str] | None = None,
        watchdog: Watchdog | None = None,
    ) -> None:
        self.name = name
        self.watchdog = watchdog
        self.base_url = f"http://127.0.0.1:{port}"
        self.headers: dict[str, str] = {}
        self.where = ""
        self.lost_reason: str | None = None
        self.out = EngineOutput(name, log_path, output)
        self.spec = spec
        self.port = port
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

    def host_ram(self, kind: str) -> int:
        return tree_pss_mib(self.pids()) if kind == "pss" else tree_rss_mib(self.pids())

    @property
    def returncode(self) -> int | None:
        return self.proc.returncode if self.proc else None

    async def spawn(self, extra_env: dict[str, str]) -> None:
        env = {**os.environ, **extra_env, **self.spec.env}
        self.started_at = time.time()
        try:
            self.proc = await asyncio.create_subprocess_exec(
                *self.spec.argv,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,
                preexec_fn=_die_with_parent,
                limit=1 << 20,
            )
        except OSError as exc:
            raise EngineStartFailed(
                f"model '{self.name}': cannot run {self.spec.argv[0]!r}: {exc.strerror}"
            ) from exc
        if self.watchdog:
            self.watchdog.watch(self.proc.pid)
        self._reader = asyncio.create_task(self._keep_output())

    async def _keep_output(self) -> None:
        """Drains the engine's output (EngineOutput keeps it), whatever happens to the log."""
        assert self.proc and self.proc.stdout
        self.out.open(f"pid {self.pid}: {' '.join(redacted(self.spec.argv))}")
        while True:
            try:
                raw = await self.proc.stdout.readline()
            except ValueError:  # a line longer than the limit: keep what fits
                raw = await self.proc.stdout.read(1 << 20)
            if not raw:
                break
            self.out.add(raw.decode("utf-8", errors="replace").rstrip("\n"))
        self.out.close()

    @property
    def lines(self) -> deque[str]:
        return self.out.lines

    def tail(self, n: int = 20) -> list[str]:
        return self.out.tail(n)

    async def wait(self) -> int | None:
        assert self.proc
        return await self.proc.wait()

    async def probe(self, http: aiohttp.ClientSession, timeout_s: float, is_ready: IsReady) -> bool:
        return await readiness.probe(
            http, self.base_url + self.spec.health_path, is_ready, timeout_s
        )

    async def wait_ready(
        self, http: aiohttp.ClientSession, timeout_s: float, is_ready: IsReady
    ) -> None:
        """Polls the readiness path until it is ready; fails at once if the process exits."""
        assert self.proc
        proc = self.proc

        async def exited_error() -> Exception:
            await self.drain_output()
            return self._start_error(f"exited with code {proc.returncode} while starting")

        exited = asyncio.ensure_future(proc.wait())
        try:
            await readiness.poll_until_ready(
                http, self.base_url + self.spec.health_path, timeout_s, is_ready, exited,
                exited_error, lambda: self._start_error(f"was not ready after {timeout_s:g} s"),
            )  # fmt: skip
        finally:
            exited.cancel()

    @property
    def output_done(self) -> bool:
        """Every line it printed has been read (its pipe is closed)."""
        return self._reader is None or self._reader.done()

    async def drain_output(self) -> None:
        """Lets the reader catch the last lines a dying engine printed (they explain why)."""
        if self._reader:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 1.0)

    def _start_error(self, what: str) -> EngineStartFailed:
        return readiness.start_failed(self.name, f": engine {what}", self.tail(15))

    async def stop(self, timeout_s: float) -> int | None:
        """SIGTERM to the group, then after `timeout_s` (or at once, if the engine has gone)
        SIGKILL to whatever is left of it; bounded."""
        if not self.proc:
            return None
        pgid = self.proc.pid  # start_new_session made the engine its group's leader
        if self.proc.returncode is None:
            _killpg(pgid, signal.SIGTERM)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.proc.wait(), timeout_s)
        # Whatever is left of the group goes now: the engine, if it ignored SIGTERM, and workers
        # that outlive their leader, holding memory and our pipe.
        _killpg(pgid, signal.SIGKILL)
        if self.proc.returncode is None:
            try:
                await asyncio.wait_for(self.proc.wait(), KILL_WAIT_S)
            except TimeoutError:
                logger.error(
                    "model '%s': pid %d did not exit %g s after SIGKILL; giving up on it",
                    self.name, pgid, KILL_WAIT_S,
                )  # fmt: skip
        if self.watchdog:
            self.watchdog.forget(pgid)
        await self.drain_output()
        if self._reader and not self._reader.done():
            # A grandchild that escaped the group still holds the pipe open: stop reading it.
            self._reader.cancel()
        return self.proc.returncode


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
