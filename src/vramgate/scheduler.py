"""The one place that decides start, join, wait, evict and stop.

`decide()`, `choose_eviction()` and `expired()` are pure functions of a snapshot, tested case by
case; `Scheduler` is the thin driver that carries their decisions out with real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections import deque
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp

from vramgate.config import Settings
from vramgate.engines import EngineAdapter, adapters
from vramgate.errors import GatewayBusy, GatewayError, QueueFull
from vramgate.instances import Instance, State
from vramgate.proxy import new_upstream_session
from vramgate.runtime import EngineProcess, Watchdog, free_port

log = logging.getLogger("vramgate.scheduler")
TTL_CHECK_S = 0.25


class Action(enum.Enum):
    SERVE = "serve"  # ready and a slot is free: relay now
    QUEUE = "queue"  # ready but at max_concurrency: wait for a slot
    REJECT = "reject"  # at max_concurrency and the wait queue is full: 429
    JOIN = "join"  # a start is under way: wait for it (single flight)
    WAIT_STOP = "wait_stop"  # being stopped: wait for that, then start anew
    START = "start"  # not running: start it


@dataclass(frozen=True)
class ModelView:
    """What `decide` needs to know about one model."""

    state: State
    in_flight: int
    queued: int
    max_concurrency: int | None
    max_queue: int


def decide(view: ModelView) -> Action:
    """The decision for one request to a model, as a list of cases."""
    # 1. A start is under way: join it, never start a second engine.
    if view.state is State.STARTING:
        return Action.JOIN
    # 2. Being stopped (TTL, eviction, unload): wait for the stop, then start it again.
    if view.state is State.STOPPING:
        return Action.WAIT_STOP
    # 3. Not running (never started, stopped, failed): start it.
    if view.state is not State.READY:
        return Action.START
    # 4. Ready with a free slot and nobody queued ahead: serve.
    limit = view.max_concurrency
    if limit is None or (view.in_flight < limit and view.queued == 0):
        return Action.SERVE
    # 5. Ready but full: queue while there is room, else refuse.
    return Action.QUEUE if view.queued < view.max_queue else Action.REJECT


@dataclass(frozen=True)
class Resident:
    """A running engine as placement and expiry see it."""

    name: str
    state: State
    is_idle: bool
    last_used: float


def choose_eviction(
    residents: Sequence[Resident], max_running: int | None, asking: str
) -> tuple[int, str | None]:
    """How many engines must make way for `asking` to start, and the one to stop first.

    Only idle, ready engines may go, least recently used first; a busy one is never evicted.
    Returns (0, None) when it fits, (n, None) when n must go but none can now.
    """
    running = [r for r in residents if r.state is not State.STOPPED and r.name != asking]
    excess = 0 if max_running is None else len(running) + 1 - max_running
    if excess <= 0:
        return 0, None
    candidates = [r for r in running if r.state is State.READY and r.is_idle]
    if not candidates:
        return excess, None
    return excess, min(candidates, key=lambda r: r.last_used).name


def expired(residents: Sequence[Resident], ttl_s: Mapping[str, float], now: float) -> list[str]:
    """Engines idle longer than their TTL (0 = never); the clock starts at their last request."""
    return [
        r.name
        for r in residents
        if r.state is State.READY
        and r.is_idle
        and ttl_s.get(r.name, 0) > 0
        and now - r.last_used >= ttl_s[r.name]
    ]


@dataclass
class Lease:
    """A request's hold on a ready engine; release it when the response is done."""

    instance: Instance
    port: int


class Scheduler:
    """Drives instances through their states; every side effect of a decision happens here."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.adapters: dict[str, EngineAdapter] = adapters(settings)
        self.instances = {name: Instance(name, model) for name, model in settings.models.items()}
        self.events: deque[dict[str, Any]] = deque(maxlen=200)
        self.watchdog = Watchdog()
        self.http: aiohttp.ClientSession | None = None
        self._placement = asyncio.Lock()  # capacity decisions happen one at a time
        self._changed = asyncio.Event()  # set when an engine goes idle or stops
        self._ttl_task: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Task[None]] = set()

    # -- lifecycle of the scheduler itself -------------------------------------------------

    async def start(self) -> None:
        await self.watchdog.start()
        self.http = new_upstream_session()
        self._ttl_task = asyncio.create_task(self._ttl_loop())

    async def close(self) -> None:
        if self._ttl_task:
            self._ttl_task.cancel()
        await asyncio.gather(
            *(self.stop(i.name, "shutdown") for i in self.instances.values() if i.process),
            return_exceptions=True,
        )
        if self.http:
            await self.http.close()
        await self.watchdog.close()

    # -- requests --------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def lease(self, name: str) -> AsyncIterator[Lease]:
        self.instances[name].requests += 1
        lease = await self.acquire(name)
        try:
            yield lease
        finally:
            self.release(lease.instance)

    async def acquire(self, name: str) -> Lease:
        inst = self.instances[name]
        while True:
            view = ModelView(
                state=inst.state,
                in_flight=inst.in_flight,
                queued=len(inst.slot_waiters),
                max_concurrency=inst.model.max_concurrency,
                max_queue=int(self.settings.model_setting(name, "max_queue")),
            )
            action = decide(view)
            if action is Action.SERVE:
                inst.in_flight += 1
                return self._lease(inst)
            if action is Action.QUEUE:
                await self._wait_for_slot(inst)
                return self._lease(inst)
            if action is Action.REJECT:
                raise QueueFull(
                    f"model '{name}' is at max_concurrency={view.max_concurrency} with "
                    f"{view.queued} requests queued; retry later",
                    headers={"Retry-After": "1"},
                )
            if action is Action.START:
                self._begin_start(inst)
            elif action is Action.JOIN:
                assert inst.start_task is not None
                await _join(inst.start_task)
            elif action is Action.WAIT_STOP:
                assert inst.stop_task is not None
                await _join(inst.stop_task)

    def _lease(self, inst: Instance) -> Lease:
        assert inst.process is not None
        return Lease(inst, inst.process.port)

    async def _wait_for_slot(self, inst: Instance) -> None:
        slot: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        inst.slot_waiters.append(slot)
        try:
            await slot
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():
                self.release(inst)  # the slot was handed to us just as we left: pass it on
            else:
                inst.slot_waiters.remove(slot)
            raise

    def release(self, inst: Instance) -> None:
        inst.touch()
        while inst.slot_waiters:
            slot = inst.slot_waiters.popleft()
            if not slot.done():
                slot.set_result(None)  # the slot goes straight to the oldest waiter
                return
        inst.in_flight -= 1
        if inst.in_flight == 0:
            self._changed.set()

    async def ensure_ready(self, name: str) -> None:
        """Starts a model if needed and waits for it, without holding a request slot."""
        lease = await self.acquire(name)
        self.release(lease.instance)

    # -- starting --------------------------------------------------------------------------

    def _begin_start(self, inst: Instance) -> None:
        inst.state = State.STARTING
        inst.last_error = None
        task = asyncio.create_task(self._start(inst))
        # Waiters see the exception through their own await; this keeps asyncio from warning.
        task.add_done_callback(lambda t: t.cancelled() or t.exception())
        inst.start_task = task

    async def _start(self, inst: Instance) -> None:
        name = inst.name
        began = time.monotonic()
        try:
            await self._make_room(inst)
            port = free_port()
            spec = self.adapters[inst.model.engine].launch(name, inst.model, port)
            log_path = Path(self.settings.state_dir) / "logs" / f"{name}.log"
            proc = EngineProcess(name, spec, port, log_path)
            inst.process = proc
            inst.starts += 1
            await proc.spawn(dict(inst.model.env))
            assert proc.pid is not None
            self.watchdog.watch(proc.pid)
            self._record("start", name, f"starting {name} (pid {proc.pid}, port {port})")
            adapter = self.adapters[inst.model.engine]
            assert self.http is not None
            start_timeout_s = self.settings.model_setting(name, "start_timeout")
            await proc.wait_ready(self.http, start_timeout_s, adapter.is_ready)
        except BaseException as exc:
            await self._fail_start(inst, exc)
            raise
        inst.state = State.READY
        inst.ready_at = time.time()
        inst.touch()
        self._record("ready", name, f"{name} ready in {time.monotonic() - began:.2f} s")
        watcher = asyncio.create_task(self._watch_exit(inst, proc))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _fail_start(self, inst: Instance, exc: BaseException) -> None:
        inst.failures += 1
        inst.last_error = exc.message if isinstance(exc, GatewayError) else repr(exc)
        proc, inst.process = inst.process, None
        if proc and proc.pid:
            await proc.stop(0)
            self.watchdog.forget(proc.pid)
        inst.state = State.FAILED
        self._changed.set()
        self._record("start_failed", inst.name, f"{inst.name} failed to start: {inst.last_error}")

    async def _make_room(self, inst: Instance) -> None:
        """Stops least recently used idle engines until `inst` may run; waits for busy ones."""
        deadline = time.monotonic() + self.settings.defaults.evict_wait
        async with self._placement:
            while True:
                residents = [_resident(i) for i in self.instances.values()]
                excess, victim = choose_eviction(residents, self.settings.max_running, inst.name)
                if excess <= 0:
                    return
                if victim is not None:
                    await self.stop(victim, "lru", f"to start {inst.name}")
                    continue
                busy = ", ".join(r.name for r in residents if r.state is not State.STOPPED)
                self._changed.clear()
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GatewayBusy(
                        f"cannot start '{inst.name}': max_running={self.settings.max_running} "
                        f"and every running engine is busy ({busy}); retry later"
                    )
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)

    async def _watch_exit(self, inst: Instance, proc: EngineProcess) -> None:
        assert proc.proc is not None
        code = await proc.proc.wait()
        if inst.process is proc and inst.state is State.READY:
            # Died while serving: in-flight requests fail on their broken connections.
            inst.state = State.FAILED
            inst.failures += 1
            inst.last_error = f"engine exited with code {code} while serving"
            inst.process = None
            await proc.stop(0)
            self.watchdog.forget(proc.proc.pid)
            self._changed.set()
            self._record("died", inst.name, f"{inst.name} died (exit code {code})")

    # -- stopping --------------------------------------------------------------------------

    def stop(self, name: str, reason: str, why: str = "") -> asyncio.Task[None]:
        """Stops a model's engine (shared by TTL, eviction, admin and shutdown)."""
        inst = self.instances[name]
        if inst.state is State.STOPPING and inst.stop_task:
            return inst.stop_task
        inst.state = State.STOPPING
        inst.stop_task = asyncio.create_task(self._stop(inst, reason, why))
        return inst.stop_task

    async def _stop(self, inst: Instance, reason: str, why: str) -> None:
        if inst.start_task and not inst.start_task.done():
            inst.start_task.cancel()
            with contextlib.suppress(BaseException):
                await inst.start_task
        proc, inst.process = inst.process, None
        idle_s = time.monotonic() - inst.last_used if inst.last_used else 0.0
        code = None
        if proc and proc.pid:
            code = await proc.stop(self.settings.model_setting(inst.name, "stop_timeout"))
            self.watchdog.forget(proc.pid)
        inst.state = State.STOPPED
        self._changed.set()
        detail = f" {why}" if why else ""
        self._record(
            "stop",
            inst.name,
            f"stop {inst.name} ({reason}, idle {idle_s:.0f}s{detail}), exit {code}",
        )

    async def unload(self, name: str) -> None:
        await self.stop(name, "admin")

    async def _ttl_loop(self) -> None:
        ttl = {name: self.settings.ttl_s(name) for name in self.instances}
        while True:
            await asyncio.sleep(TTL_CHECK_S)
            residents = [_resident(i) for i in self.instances.values()]
            for name in expired(residents, ttl, time.monotonic()):
                self.stop(name, "ttl")

    # -- reporting -------------------------------------------------------------------------

    def _record(self, kind: str, model: str, message: str) -> None:
        log.info(message)
        self.events.append({"time": time.time(), "kind": kind, "model": model, "message": message})

    def status(self) -> dict[str, Any]:
        return {
            "models": [i.status(self.settings.ttl_s(n)) for n, i in self.instances.items()],
            "max_running": self.settings.max_running,
            "events": list(self.events)[-50:],
        }


async def _join(task: asyncio.Task[None]) -> None:
    """Waits for a start or stop shared with other requests; its failure is ours too.

    A start that was cancelled (its model was unloaded meanwhile) is not our failure: the caller
    decides again. Only our own cancellation (the client left) ends the wait.
    """
    try:
        await asyncio.shield(task)
    except asyncio.CancelledError:
        current = asyncio.current_task()
        if not task.cancelled() or (current is not None and current.cancelling()):
            raise


def _resident(inst: Instance) -> Resident:
    return Resident(inst.name, inst.state, inst.is_idle, inst.last_used)
