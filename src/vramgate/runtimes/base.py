"""The seam between the scheduler and wherever engines run: a Runtime spawns, a handle controls.

Nothing outside a runtime knows where an engine lives: the scheduler and the proxy see a base URL,
the processes to account GPU memory to, readiness, output, stop and exit status.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Protocol

import aiohttp

from vramgate.containers import Container
from vramgate.engines.base import LaunchSpec
from vramgate.errors import GatewayError
from vramgate.events import Fanout

# Builds the engine's launch spec once the runtime has chosen the port it will listen on.
SpecForPort = Callable[[int], LaunchSpec]
IsReady = Callable[[int], bool]


class EngineHandle(Protocol):
    """One running engine."""

    base_url: str  # e.g. http://127.0.0.1:41234, what requests are relayed to
    started_at: float  # time.time() of the spawn
    headers: dict[str, str]  # sent with every request to it (an engine's key on another node)
    where: str  # "" on this machine, else the cluster node it runs on
    lost_reason: str | None  # set when it went with its node rather than by exiting

    def host_ram(self, kind: str) -> int:
        """MiB of host RAM its process tree holds: "pss" (running) or "rss" (asleep); read
        wherever it runs (called in a thread: it may read /proc or ask another node)."""
        ...

    @property
    def pid(self) -> int | None:
        """Its main process as the host sees it, for status (None where there is none)."""
        ...

    @property
    def port(self) -> int: ...

    @property
    def returncode(self) -> int | None: ...

    @property
    def lines(self) -> Sequence[str]:
        """Its most recent output lines."""
        ...

    def tail(self, n: int = 20) -> list[str]: ...

    def pids(self) -> list[int]:
        """Host process ids whose GPU memory is the engine's (their trees are followed)."""
        ...

    async def wait_ready(
        self, http: aiohttp.ClientSession, timeout_s: float, is_ready: IsReady
    ) -> None:
        """Returns once ready; raises EngineStartFailed if it exits or times out first."""
        ...

    async def probe(self, http: aiohttp.ClientSession, timeout_s: float, is_ready: IsReady) -> bool:
        """One readiness probe of a running engine: does it still answer?"""
        ...

    async def wait(self) -> int | None:
        """Its exit status, once it has exited."""
        ...

    async def stop(self, timeout_s: float) -> int | None:
        """Graceful stop, then forced after `timeout_s`; bounded; returns the exit status."""
        ...


class Runtime(Protocol):
    kind: str

    async def start(self) -> None:
        """Before the first spawn (the local runtime starts its watchdog)."""
        ...

    async def close(self) -> None:
        """After the last stop."""
        ...

    def unavailable(self) -> GatewayError | None:
        """Why no engine can be started now, where that passes (a cluster whose head has not
        answered yet): its starts wait for a retry rather than fail. None: available."""
        ...

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
    ) -> EngineHandle:
        """Starts an engine (in a container with these settings, where given; on a cluster, on
        the node of its GPUs, or without any on one of `nodes`); raises EngineStartFailed if it
        cannot even be started."""
        ...
