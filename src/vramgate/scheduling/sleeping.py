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
    handle: EngineHandle,
    calls: tuple[tuple[str, dict], ...],
    timeout_s: float,
) -> None:
    """POSTs `calls` in turn; ends as soon as the engine does (its node taken for dead while a
    call hung on it: a wake there waited out start_timeout, 600 s, instead of seconds)."""
    posting = asyncio.ensure_future(_posts(http, handle.base_url, calls, timeout_s, handle.headers))
    exited = asyncio.ensure_future(handle.wait())
    try:
        await asyncio.wait((posting, exited), return_when=asyncio.FIRST_COMPLETED)
    finally:
        exited.cancel()
        if not posting.done():
            posting.cancel()
    if not posting.done():
        lost = f": {handle.lost_reason}" if handle.lost_reason else ""
        raise SleepFailed(f"its engine ended during the call{lost}")
    posting.result()


async def _posts(
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


def _calls(adapter: EngineAdapter, inst: Instance, handle: EngineHandle | None) -> SleepCalls:
    calls = adapter.sleep_calls(inst.model)
    if calls is None or handle is None:
        raise SleepFailed(f"model '{inst.name}' has no engine that can sleep")
    return calls


async def put_to_sleep(
    http: aiohttp.ClientSession,
    settings: Settings,
    adapter: EngineAdapter,
    inst: Instance,
    handle: EngineHandle | None,
) -> int:
    """Sleeps `handle`, `inst`'s engine when the sleep was decided; returns the host RAM (MiB)
    its processes hold now. It changes nothing of `inst`: the caller does, if the model still
    has this engine when the sleep ends."""
    calls = _calls(adapter, inst, handle)
    assert handle is not None
    # Level 1 copies the weights to host RAM: as long as a load, at worst.
    timeout_s = settings.setting_of(inst.model, "start_timeout")
    await _post_all(http, handle, calls.sleep, timeout_s)
    return await asyncio.to_thread(handle.host_ram, "rss")


async def wake(
    http: aiohttp.ClientSession, settings: Settings, adapter: EngineAdapter, inst: Instance
) -> float:
    """Wakes `inst`'s engine and waits until it answers ready; returns the seconds it took."""
    handle = inst.handle
    calls = _calls(adapter, inst, handle)
    assert handle is not None
    began = time.monotonic()
    timeout_s = settings.setting_of(inst.model, "start_timeout")
    await _post_all(http, handle, calls.wake, timeout_s)
    try:
        await handle.wait_ready(http, timeout_s, adapter.is_ready)
    except EngineStartFailed as exc:
        log.warning("%s", exc.detail or exc.message)
        raise SleepFailed("not ready after its wake") from exc
    inst.asleep = False
    inst.wakes += 1
    inst.wake_s = time.monotonic() - began
    return inst.wake_s
