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
from typing import TextIO

import aiohttp

from vramgate.engines.base import LaunchSpec
from vramgate.errors import EngineStartFailed
from vramgate.events import Fanout
from vramgate.runtimes.base import IsReady, SpecForPort

logger = logging.getLogger("vramgate.runtime")
READY_POLL_S = 0.025
LOG_LINES_KEPT = 400
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
    ) -> EngineProcess:
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
        self.output = output  # live readers of its output (the admin log stream)
        self.spec = spec
        self.port = port
        self.log_path = log_path
        self.lines: deque[str] = deque(maxlen=LOG_LINES_KEPT)
        self.proc: asyncio.subprocess.Process | None = None
        self.started_at = 0.0
        self._reader: asyncio.Task[None] | None = None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def pids(self) -> list[int]:
        return [self.proc.pid] if self.proc else []

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
        """Drains the engine's output into the ring buffer and the log file.

        It must keep draining whatever happens to the file: an engine whose pipe fills up
        blocks on its next write and stops serving. So a log that cannot be written (full
        disk, unwritable state_dir) is reported once and dropped; the ring buffer goes on.
        """
        assert self.proc and self.proc.stdout
        log = self._open_log()
        while True:
            try:
                raw = await self.proc.stdout.readline()
            except ValueError:  # a line longer than the limit: keep what fits
                raw = await self.proc.stdout.read(1 << 20)
            if not raw:
                break
            line = raw.decode("utf-8", errors="replace").rstrip("\n")
            self.lines.append(line)
            if self.output is not None:
                self.output.publish(line)
            if log is not None:
                log = self._write_log(log, line)
        if log is not None:
            with contextlib.suppress(OSError):
                log.close()

    def _open_log(self) -> TextIO | None:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        header = f"--- {stamp} vramgate started pid {self.pid}: {' '.join(self.spec.argv)}"
        try:
            self.log_path.parent.mkdir(parents=True, exist_ok=True)
            log = self.log_path.open("a", encoding="utf-8", errors="replace")
        except OSError as exc:
            self._log_failed(exc)
            return None
        return self._write_log(log, header)

    def _write_log(self, log: TextIO, line: str) -> TextIO | None:
        try:
            log.write(line + "\n")
            log.flush()
        except OSError as exc:
            self._log_failed(exc)
            with contextlib.suppress(OSError):
                log.close()
            return None
        return log

    def _log_failed(self, exc: OSError) -> None:
        logger.warning(
            "model '%s': cannot write its log %s (%s); keeping its output in memory only",
            self.name,
            self.log_path,
            exc.strerror or exc,
        )
        self.lines.append(f"[vramgate: log file unavailable: {exc.strerror or exc}]")

    def tail(self, n: int = 20) -> list[str]:
        return list(self.lines)[-n:]

    async def wait(self) -> int | None:
        assert self.proc
        return await self.proc.wait()

    async def probe(self, http: aiohttp.ClientSession, timeout_s: float, is_ready: IsReady) -> bool:
        return await self._probe(http, self.base_url + self.spec.health_path, is_ready, timeout_s)

    async def wait_ready(
        self, http: aiohttp.ClientSession, timeout_s: float, is_ready: IsReady
    ) -> None:
        """Polls the readiness path until it is ready; fails at once if the process exits."""
        assert self.proc
        url = self.base_url + self.spec.health_path
        deadline = time.monotonic() + timeout_s
        exited = asyncio.create_task(self.proc.wait())
        try:
            while True:
                if exited.done():
                    await self._drain_output()
                    raise self._start_error(
                        f"exited with code {self.proc.returncode} while starting"
                    )
                if await self._probe(http, url, is_ready):
                    return
                if time.monotonic() >= deadline:
                    raise self._start_error(f"was not ready after {timeout_s:g} s")
                await asyncio.wait({exited}, timeout=READY_POLL_S)
        finally:
            exited.cancel()

    async def _probe(
        self, http: aiohttp.ClientSession, url: str, is_ready: IsReady, timeout_s: float = 2.0
    ) -> bool:
        try:
            async with http.get(url, timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
                return bool(is_ready(resp.status))
        except (TimeoutError, aiohttp.ClientError):
            return False

    async def _drain_output(self) -> None:
        """Lets the reader catch the last lines a dying engine printed (they explain why)."""
        if self._reader:
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._reader), 1.0)

    def _start_error(self, what: str) -> EngineStartFailed:
        lines = "\n".join(self.tail(15)) or "(no output)"
        return EngineStartFailed(
            f"model '{self.name}' failed to start: engine {what}.", detail=f"Last output:\n{lines}"
        )

    async def stop(self, timeout_s: float) -> int | None:
        """SIGTERM to the group, SIGKILL after `timeout_s`, then SIGKILL for any straggler in it."""
        if not self.proc:
            return None
        pgid = self.proc.pid  # start_new_session made the engine its group's leader
        if self.proc.returncode is None:
            _killpg(pgid, signal.SIGTERM)
            try:
                await asyncio.wait_for(self.proc.wait(), timeout_s)
            except TimeoutError:
                _killpg(pgid, signal.SIGKILL)
                try:
                    await asyncio.wait_for(self.proc.wait(), KILL_WAIT_S)
                except TimeoutError:
                    logger.error(
                        "model '%s': pid %d did not exit %g s after SIGKILL; giving up on it",
                        self.name, pgid, KILL_WAIT_S,
                    )  # fmt: skip
        # Workers may outlive their leader, holding memory and our pipe; they go too.
        _killpg(pgid, signal.SIGKILL)
        if self.watchdog:
            self.watchdog.forget(pgid)
        await self._drain_output()
        if self._reader and not self._reader.done():
            # A grandchild that escaped the group still holds the pipe open: stop reading it.
            self._reader.cancel()
        return self.proc.returncode


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)
