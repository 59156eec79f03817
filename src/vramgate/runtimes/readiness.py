"""Readiness, the same wherever an engine runs: poll its health path until it answers ready, and
fail at once if it exits first."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import aiohttp

from vramgate.errors import EngineStartFailed
from vramgate.runtimes.base import IsReady

READY_POLL_S = 0.025


async def probe(
    http: aiohttp.ClientSession,
    url: str,
    is_ready: IsReady,
    timeout_s: float = 2.0,
    headers: Mapping[str, str] | None = None,
) -> bool:
    try:
        timeout = aiohttp.ClientTimeout(total=timeout_s)
        async with http.get(url, timeout=timeout, headers=headers) as resp:
            return bool(is_ready(resp.status))
    except (TimeoutError, aiohttp.ClientError):
        return False


async def poll_until_ready(
    http: aiohttp.ClientSession,
    url: str,
    timeout_s: float,
    is_ready: IsReady,
    exited: asyncio.Future[Any],
    on_exit: Callable[[], Awaitable[Exception]],
    on_timeout: Callable[[], Exception],
    headers: Mapping[str, str] | None = None,
) -> None:
    """Returns once `url` answers ready; raises what `on_exit` gives if `exited` completes first,
    and what `on_timeout` gives after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while True:
        if exited.done():
            raise await on_exit()
        if await probe(http, url, is_ready, headers=headers):
            return
        if time.monotonic() >= deadline:
            raise on_timeout()
        await asyncio.wait({exited}, timeout=READY_POLL_S)


def start_failed(name: str, what: str, tail: list[str]) -> EngineStartFailed:
    """A start that failed: `what` happened (where), and the engine's last output."""
    lines = "\n".join(tail) or "(no output)"
    return EngineStartFailed(
        f"model '{name}' failed to start{what}.", detail=f"Last output:\n{lines}"
    )
