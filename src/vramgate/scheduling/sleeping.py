"""Putting an engine to sleep and waking it: the engine's own calls (its adapter's SleepCalls),
what it then holds in host RAM, and the readiness check after a wake. The driver decides when;
a sleep or wake that fails is the driver's to turn into a stop or a restart."""

from __future__ import annotations

import asyncio
import logging
import time

import aiohttp

from vramgate.config import Settings
from vramgate.engines.base import EngineAdapter, SleepCalls
from vramgate.errors import EngineStartFailed
from vramgate.instances import Instance
from vramgate.runtimes.base import EngineHandle

log = logging.getLogger("vramgate.scheduler")


class SleepFailed(Exception):
    """The engine did not take a sleep or wake call; the message says which and how (a status,
    a timeout), never what the engine answered: that is engine output, logged for admins."""


async def _post_all(
    http: aiohttp.ClientSession,
    base_url: str,
    calls: tuple[tuple[str, dict], ...],
    timeout_s: float,
    headers: dict[str, str],
) -> None:
    timeout = aiohttp.ClientTimeout(total=timeout_s)
    for path, body in calls:
        try:
            url = base_url + path
            async with http.post(url, json=body, timeout=timeout, headers=headers) as resp:
                if resp.status >= 300:
                    text = (await resp.text())[:300]
                    log.warning("POST %s%s answered %d: %s", base_url, path, resp.status, text)
                    raise SleepFailed(f"POST {path} answered {resp.status}")
        except TimeoutError as exc:
            raise SleepFailed(f"POST {path} took over {timeout_s:g} s") from exc
        except aiohttp.ClientError as exc:
            raise SleepFailed(f"POST {path} failed: {type(exc).__name__}") from exc


def _engine(adapter: EngineAdapter, inst: Instance) -> tuple[SleepCalls, EngineHandle]:
    calls, handle = adapter.sleep_calls(inst.model), inst.handle
    if calls is None or handle is None:
        raise SleepFailed(f"model '{inst.name}' has no engine that can sleep")
    return calls, handle


async def put_to_sleep(
    http: aiohttp.ClientSession, settings: Settings, adapter: EngineAdapter, inst: Instance
) -> None:
    """Sleeps `inst`'s engine and measures the host RAM its processes hold now."""
    calls, handle = _engine(adapter, inst)
    # Level 1 copies the weights to host RAM: as long as a load, at worst.
    timeout_s = settings.setting_of(inst.model, "start_timeout")
    await _post_all(http, handle.base_url, calls.sleep, timeout_s, handle.headers)
    inst.asleep = True
    inst.sleeps += 1
    inst.host_mib = await asyncio.to_thread(handle.host_ram, "rss")


async def wake(
    http: aiohttp.ClientSession, settings: Settings, adapter: EngineAdapter, inst: Instance
) -> float:
    """Wakes `inst`'s engine and waits until it answers ready; returns the seconds it took."""
    calls, handle = _engine(adapter, inst)
    began = time.monotonic()
    timeout_s = settings.setting_of(inst.model, "start_timeout")
    await _post_all(http, handle.base_url, calls.wake, timeout_s, handle.headers)
    try:
        await handle.wait_ready(http, timeout_s, adapter.is_ready)
    except EngineStartFailed as exc:
        log.warning("%s", exc.detail or exc.message)
        raise SleepFailed("not ready after its wake") from exc
    inst.asleep = False
    inst.wakes += 1
    inst.wake_s = time.monotonic() - began
    return inst.wake_s
