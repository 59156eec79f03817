"""Engines going away: stops (TTL, eviction, admin, reload, shutdown) and sleeps, one at a time
per engine, each ending in a state nothing can hang in; part of the Scheduler (driver.py)."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable, Coroutine
from typing import Any

from vramgate.config import Settings
from vramgate.engines.base import EngineAdapter
from vramgate.errors import Conflict
from vramgate.events import Events
from vramgate.instances import Instance
from vramgate.memory import Memory
from vramgate.scheduling import sleeping
from vramgate.scheduling.lifecycle import Lifecycle
from vramgate.scheduling.snapshot import Pending, State

KEEP_ALIVE_MIN_S = 1e-3  # keep_alive 0: stopped at the first tick it is idle (ttl 0 is "never")
UNLOAD = "unload"  # draining_for of a model whose unload waits for its running requests


class Stopping:
    """The Scheduler's stops and sleeps (its other parts give the attributes below)."""

    settings: Settings
    adapters: dict[str, EngineAdapter]
    events: Events
    life: Lifecycle
    instances: dict[str, Instance]
    inflation: float

    # Given by the Scheduler and by Definitions. Declared, not defined: a stub method here
    # would shadow Definitions' own (Stopping comes first in the Scheduler's bases).
    _spawn: Callable[[Coroutine[Any, Any, None]], asyncio.Task[None]]
    _replace: Callable[[Instance], None]
    _changed: asyncio.Event
    memory: Memory

    def stop(self, name: str, reason: str, why: str = "", for_: str = "") -> asyncio.Task[None]:
        """Stops a model's engine (shared by TTL, eviction, admin, reload and shutdown);
        `for_`: the start it makes room for. A stop asked during a sleep is done by the sleep
        as soon as it ends: an unload ends with the engine gone, not asleep."""
        inst = self.instances[name]
        under_way = inst.stop_task is not None and not inst.stop_task.done()
        if inst.state is State.STOPPING and inst.leaving == "sleep" and under_way:
            inst.then_stop = (reason, why)
        return self._leave(inst, for_, reason, lambda: self._stop(inst, reason, why, for_))

    def sleep(self, name: str, reason: str, why: str = "", for_: str = "") -> asyncio.Task[None]:
        """Puts an idle engine to sleep (it stops instead if that fails); `for_` as for stop."""
        inst = self.instances[name]
        return self._leave(inst, for_, "sleep", lambda: self._sleep(inst, reason, why))

    def _leave(
        self,
        inst: Instance,
        for_: str,
        kind: str,  # "sleep", or the stop's reason
        going: Callable[[], Coroutine[Any, Any, None]],
    ) -> asyncio.Task[None]:
        """One stop or sleep at a time per engine: `stopping` (requests wait, then start or
        wake it) until `going` has run."""
        if for_:
            inst.made_way_for = for_
        under_way = inst.stop_task is not None and not inst.stop_task.done()
        if inst.state is State.STOPPING and under_way:
            assert inst.stop_task is not None
            return inst.stop_task
        inst.leaving = kind  # first: whoever hears of the state change may read why
        inst.state = State.STOPPING
        inst.stop_task = self._spawn(going())
        return inst.stop_task

    async def _sleep(self, inst: Instance, reason: str, why: str) -> None:
        adapter = self.adapters[inst.model.engine]
        assert self.life.http is not None
        handle = inst.handle  # the engine this sleep was decided for: it acts on no other
        try:
            host_mib = await sleeping.put_to_sleep(
                self.life.http, self.settings, adapter, inst, handle
            )
        except Exception as exc:  # it goes, then, as a stop would have it
            if not self._still_owns(inst, "sleep"):
                return
            message = f"{inst.name} did not go to sleep ({exc}); stopping it"
            self.events.record("sleep_failed", inst.name, message, level="warning")
            await self._stop(inst, reason, why)
            return
        if not self._still_owns(inst, "sleep"):
            return
        inst.asleep, inst.host_mib = True, host_mib
        inst.sleeps += 1
        if inst.then_stop is not None:  # an unload came during the sleep: it goes on to a stop
            (reason, why), inst.then_stop = inst.then_stop, None
            inst.leaving = reason
            await self._stop(inst, reason, why)
            return
        # What it still holds asleep, read now: a cluster node's last reading is older.
        await self.memory.read_again(inst)
        inst.draining_for = None
        inst.state = State.SLEEPING
        if reason == "lru":  # made way, as a stop for room does: GreedyDual ages on it too
            self._evicted(inst)
        detail = f" {why}" if why else ""
        message = f"sleep {inst.name} ({reason}{detail}), holding {inst.host_mib} MiB of host RAM"
        self.events.record("sleep", inst.name, message, reason=reason)

    def _still_owns(self, inst: Instance, what: str) -> bool:
        """Whether the running stop or sleep still has the model. Its engine's node taken for
        dead hands the model to that engine's watcher (lifecycle.lost), and the next request
        starts a new engine; the old task's end then touches nothing (a stale sleep's timeout
        once stopped the new engine mid-answer, cutting 300 tokens at 112)."""
        if inst.stop_task is asyncio.current_task():
            return True
        message = f"a stale {what} of {inst.name}'s former engine ended: nothing done"
        self.events.record("stale", inst.name, message)
        return False

    async def _stop(self, inst: Instance, reason: str, why: str, for_: str = "") -> None:
        idle_s = time.monotonic() - inst.last_used if inst.last_used else 0.0
        handle = inst.handle  # the engine this stop was decided for: it acts on no other
        code = None
        try:
            if inst.start_task and not inst.start_task.done():
                inst.start_task.cancel()
                with contextlib.suppress(BaseException):
                    await inst.start_task
            elif not inst.asleep:
                await self.life.save_kv(inst, handle)  # it was serving: its caches outlive it
            if not self._still_owns(inst, "stop"):
                return
            timeout_s = self.settings.setting_of(inst.model, "stop_timeout")
            code = await self.life.discard(inst, timeout_s)
        finally:  # whatever failed above, the model ends `stopped`: never stuck in `stopping`
            if inst.stop_task is asyncio.current_task():
                self._stopped(inst, reason, why, idle_s, code, for_)

    def _stopped(
        self, inst: Instance, reason: str, why: str, idle_s: float, code: int | None, for_: str
    ) -> None:
        inst.then_stop = inst.keep_alive_s = None
        if inst.pending is Pending.CHANGED:
            self._replace(inst)
        inst.draining_for = None
        inst.state = State.STOPPED
        # Host RAM made for another start is an eviction too; housekeeping's stops over a
        # (lowered) budget make way for nobody (`for_` empty) and leave the floor alone.
        if reason in ("lru", "discovery", "oom") or (reason == "host_ram" and for_):
            self._evicted(inst)
        detail = f" {why}" if why else ""
        message = f"stop {inst.name} ({reason}, idle {idle_s:.0f}s{detail}), exit {code}"
        self.events.record("stop", inst.name, message, reason=reason)

    def _evicted(self, inst: Instance) -> None:
        """`inst` made way for another model: GreedyDual's L rises to its priority, the floor
        that later requests count from (gpus.eviction: frequency, cost), else past popularity
        would never fade."""
        inst.evictions += 1
        self.inflation = max(self.inflation, inst.priority)

    def keep_alive(self, name: str, seconds: float) -> None:
        """A client's idle time for the model until its next stop (Ollama's keep_alive):
        negative keeps it loaded, 0 stops it as soon as its requests are done."""
        inst = self.instances[name]
        inst.keep_alive_s = 0.0 if seconds < 0 else max(seconds, KEEP_ALIVE_MIN_S)

    async def unload(self, name: str) -> None:
        """The one unload of every API (who may ask is the route's: api/common.unload): a
        pinned model stays (409); a ready one takes no new requests, lets its running ones
        finish (within drain_timeout, as at shutdown), then stops. Ollama's unload waits the
        same way; this one killed other users' streams mid-answer."""
        inst = self.instances[name]
        if inst.model.pinned:
            raise Conflict(
                f"model '{name}' is pinned: it stays loaded (set pinned: false to unload it)"
            )
        if inst.state is State.READY and inst.in_flight:
            inst.draining_for = UNLOAD
            try:
                deadline = time.monotonic() + self.settings.drain_timeout
                while inst.in_flight and (left := deadline - time.monotonic()) > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(self._changed.wait(), min(left, 1.0))
            finally:
                if inst.draining_for == UNLOAD and inst.state is State.READY:
                    inst.draining_for = None  # not stopped after all (its caller went)
        await self.stop(name, "admin")
