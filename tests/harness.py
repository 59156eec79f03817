"""The real driver in this process: a Scheduler with the local runtime, a simulated GPU and fake
engines, for tests that must reach inside it (counters, tasks) or step it by hand."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from tests.conftest import fake_cmd
from vramgate.app import Collaborators
from vramgate.config import Settings, validate
from vramgate.events import Events
from vramgate.memory import Memory
from vramgate.scheduling.driver import Scheduler


def fake(*knobs: str, **extra: Any) -> dict[str, Any]:
    """A `command` model running the fake engine with these knobs."""
    return {"engine": "command", "cmd": fake_cmd(*knobs), **extra}


def settings_for(tmp: Path, models: dict[str, Any], **rest: Any) -> Settings:
    return validate({"state_dir": str(tmp / "state"), "models": models, **rest}, "test")


@contextlib.asynccontextmanager
async def driver(tmp: Path, models: dict[str, Any], **rest: Any) -> AsyncIterator[Scheduler]:
    """A started Scheduler over `models`; every engine is stopped at the end."""
    settings = settings_for(tmp, models, **rest)
    parts = Collaborators.for_settings(settings)
    memory = Memory(settings, parts.gpus, parts.footprints)
    scheduler = Scheduler(settings, parts.runtime, memory, Events())
    await scheduler.start()
    try:
        yield scheduler
    finally:
        await scheduler.close()


async def ask(scheduler: Scheduler, name: str, tokens: int = 1) -> str:
    """One completion through a lease, as the relay takes one; the engine's text."""
    async with scheduler.lease(name) as lease:
        assert scheduler.http is not None
        body = {"model": name, "prompt": "x", "max_tokens": tokens}
        async with scheduler.http.post(lease.url + "/v1/completions", json=body) as resp:
            return (await resp.json())["choices"][0]["text"]


async def until(predicate: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        await asyncio.sleep(0.02)
    return predicate()


def kill(scheduler: Scheduler, name: str) -> None:
    handle = scheduler.instances[name].handle
    assert handle is not None and handle.pid is not None
    os.kill(handle.pid, signal.SIGKILL)
