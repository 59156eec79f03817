"""The one place that starts, joins, waits, evicts and stops engines.

The decisions are pure functions of a snapshot, tested case by case: `decisions.py` (requests,
count limit, TTL) and `placement.py` (GPU memory). `Scheduler` is the thin driver that carries
them out with real processes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import Any

import aiohttp

from vramgate import reconfigure
from vramgate.config import ModelConfig, Settings
from vramgate.decisions import Action, ModelView, Running, choose_eviction, decide, expired
from vramgate.engines import EngineAdapter, adapters
from vramgate.errors import (
    EngineOutOfMemory,
    EngineStartFailed,
    GatewayBusy,
    GatewayError,
    NoRoom,
    QueueFull,
)
from vramgate.events import Fanout
from vramgate.instances import Instance, State
from vramgate.memory import Memory
from vramgate.metrics import Metrics
from vramgate.proxy import new_upstream_session
from vramgate.runtime import EngineProcess, Watchdog, free_port

log = logging.getLogger("vramgate.scheduler")
TTL_CHECK_S = 0.25
# What CUDA and HIP allocators print when a load does not fit (llama.cpp, PyTorch, vLLM).
OOM_OUTPUT = re.compile(r"out of memory|cudaMalloc failed|hipMalloc failed|OutOfMemoryError", re.I)


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
        self.events: Fanout[dict[str, Any]] = Fanout(keep=200)
        self.metrics = Metrics()
        self.metrics.attach(self)
        self.instances: dict[str, Instance] = {}
        self.adhoc_names: set[str] = set()  # models a request named from models_dir
        self.inflation = 0.0  # GreedyDual's L: the priority of the last engine evicted
        for name, model in settings.models.items():
            self.add_instance(name, model)
        self.watchdog = Watchdog()
        self.memory = Memory(settings)
        self.http: aiohttp.ClientSession | None = None
        self._placement = asyncio.Lock()  # capacity decisions happen one at a time
        self._loading: dict[int, asyncio.Lock] = {}  # one load at a time per GPU
        self._changed = asyncio.Event()  # set when an engine goes idle or stops
        self._ttl_task: asyncio.Task[None] | None = None
        self._watchers: set[asyncio.Task[None]] = set()

    def add_instance(self, name: str, model: ModelConfig) -> Instance:
        inst = Instance(name, model)
        inst.on_state = self._state_changed
        self.instances[name] = inst
        return inst

    # -- lifecycle of the scheduler itself -------------------------------------------------

    async def start(self) -> None:
        await self.watchdog.start()
        self.http = new_upstream_session()
        self._ttl_task = asyncio.create_task(self._ttl_loop())
        for inst in self.instances.values():
            if inst.model.pinned:  # pinned models are up from the start, and stay
                self.begin_start(inst)

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
        inst = self.instances[name]
        inst.requests += 1
        # GreedyDual-Size-Frequency with a load cost proportional to size: frequency plus the
        # priority of the last engine evicted (aging), so that past popularity fades.
        inst.priority = self.inflation + inst.requests
        if inst.state is State.READY:
            inst.served_warm += 1
        else:
            inst.needed_start += 1
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
                max_queue=int(self.settings.setting_of(inst.model, "max_queue")),
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
                self.begin_start(inst)
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
        self.memory.after_request(inst)
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

    def begin_start(self, inst: Instance) -> None:
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
            try:
                proc = await self._launch(inst, isolate=False)
            except EngineOutOfMemory as exc:
                # What it used is learned now (or, for a real OOM, unknown): make more room, once.
                self.record("oom", name, f"{name} out of memory at start; retrying: {exc.message}")
                await self._discard_process(inst)
                proc = await self._launch(inst, isolate=True)
        except BaseException as exc:
            await self._fail_start(inst, exc)
            raise
        inst.state = State.READY
        inst.ready_at = time.time()
        inst.touch()
        took = time.monotonic() - began
        self.record("ready", name, f"{name} ready in {took:.2f} s", seconds=took)
        watcher = asyncio.create_task(self._watch_exit(inst, proc))
        self._watchers.add(watcher)
        watcher.add_done_callback(self._watchers.discard)

    async def _launch(self, inst: Instance, *, isolate: bool) -> EngineProcess:
        """Makes room, spawns the engine, waits until ready, measures what it uses."""
        gpus = await self._make_room(inst, isolate=isolate)
        env = dict(inst.model.env)
        if not gpus:
            return await self._spawn_until_ready(inst, env, gpus)
        env.update(self.memory.attach(inst, gpus))  # resident from now on: its room is taken
        # Loads on one GPU go one at a time (vLLM's profiling breaks if memory moves under it);
        # loads on different GPUs run in parallel. Locks are taken in GPU order: no deadlock
        # between two models split over overlapping GPUs.
        async with contextlib.AsyncExitStack() as held:
            for gpu in gpus:
                await held.enter_async_context(self._loading.setdefault(gpu, asyncio.Lock()))
            return await self._spawn_until_ready(inst, env, gpus)

    async def _spawn_until_ready(
        self, inst: Instance, env: dict[str, str], gpus: tuple[int, ...]
    ) -> EngineProcess:
        name = inst.name
        port = free_port()
        adapter = self.adapters[inst.model.engine]
        spec = adapter.launch(name, inst.model, port)
        budget = self.memory.budget(inst) if gpus else None
        if budget is not None:  # engines that size themselves are told their share, in bytes
            spec = replace(spec, argv=spec.argv + adapter.memory_args(inst.model, budget))
        log_path = self.settings.engine_log(name)
        proc = EngineProcess(name, spec, port, log_path, inst.output)
        inst.process = proc
        inst.starts += 1
        await proc.spawn(env)
        assert proc.pid is not None
        self.watchdog.watch(proc.pid)
        if gpus:
            self.memory.track(inst, proc.pid)
        where = f", GPU {','.join(map(str, gpus))}" if gpus else ""
        self.record("start", name, f"starting {name} (pid {proc.pid}, port {port}{where})")
        assert self.http is not None
        start_timeout_s = self.settings.setting_of(inst.model, "start_timeout")
        try:
            await proc.wait_ready(self.http, start_timeout_s, adapter.is_ready)
        except EngineStartFailed as exc:
            if any(OOM_OUTPUT.search(line) for line in proc.tail(40)):
                raise EngineOutOfMemory(exc.message) from exc
            raise
        if gpus:
            used = self.memory.measure(inst, new_load=True)
            if self.memory.overcommitted(gpus):
                on = ",".join(map(str, gpus))
                raise EngineOutOfMemory(
                    f"model '{name}' reported {used} MiB, more than GPU {on} had left"
                )
        return proc

    async def _discard_process(self, inst: Instance) -> None:
        proc, inst.process = inst.process, None
        if proc and proc.pid:
            await proc.stop(0)
            self.watchdog.forget(proc.pid)
            await self.memory.wait_released(inst)
        self.memory.detach(inst)

    async def _fail_start(self, inst: Instance, exc: BaseException) -> None:
        # Still `starting` meanwhile: new requests join the start and share its error.
        error = exc.message if isinstance(exc, GatewayError) else repr(exc)
        await self._fail(inst, error, "start_failed", f"{inst.name} failed to start: {error}")

    async def _fail(self, inst: Instance, error: str, kind: str, message: str) -> None:
        """An engine failed: its process and memory go first, then the model is `failed`.

        Only then, so that no new engine of the model can start (and register its memory) while
        the old one is still being cleared away.
        """
        inst.failures += 1
        inst.last_error = error
        await self._discard_process(inst)
        inst.state = State.FAILED
        self._changed.set()
        self.record(kind, inst.name, message)

    async def _make_room(self, inst: Instance, *, isolate: bool) -> tuple[int, ...]:
        """Stops idle engines until `inst` may run; waits for busy ones. Returns its GPU."""
        deadline = time.monotonic() + self.settings.defaults.evict_wait
        await self.memory.prepare(inst)
        async with self._placement:
            while True:
                self._changed.clear()
                gpus, waiting_for = await self._room_step(inst, isolate)
                if waiting_for is None:
                    return gpus
                if not waiting_for:
                    continue  # engines were stopped: decide again
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GatewayBusy(f"cannot start '{inst.name}': {waiting_for}; retry later")
                with contextlib.suppress(asyncio.TimeoutError):
                    await asyncio.wait_for(self._changed.wait(), left)

    async def _room_step(self, inst: Instance, isolate: bool) -> tuple[tuple[int, ...], str | None]:
        """One step toward room: (gpus, None) to start; ((), why) to wait; ((), '') again."""
        gpus: tuple[int, ...] = ()
        if self.memory.enabled:
            need, _ = self.memory.footprint(inst)
            if need is None and self.memory.policy == "refuse" and not isolate:
                raise NoRoom(
                    f"cannot start '{inst.name}': its footprint is unknown (never measured, no "
                    "vram_mib, no estimate) and gpus.unknown_footprint is 'refuse'; set vram_mib"
                )
            plan = self.memory.plan(inst, self.instances.values(), isolate=isolate)
            if plan.refuse:
                raise NoRoom(f"cannot start '{inst.name}': it {plan.refuse}; nothing was evicted")
            if plan.evict:
                # isolate: the retry after an out-of-memory start, alone on its GPU
                unknown = self.memory.footprint(inst)[0] is None
                reason = "oom" if isolate else "discovery" if unknown else "lru"
                stops = [self.stop(n, reason, f"to start {inst.name}") for n in plan.evict]
                await asyncio.gather(*stops)
                return (), ""
            if plan.wait:
                holders = ", ".join(
                    f"{i.name}: {_why_held(i)}" for i in self.instances.values() if i.gpus
                )
                return (), f"its GPU memory is held by engines that cannot make way ({holders})"
            gpus = plan.gpus
        residents = [self._running(i) for i in self.instances.values()]
        excess, victim = choose_eviction(residents, self.settings.max_running, inst.name)
        if excess <= 0:
            return gpus, None
        if victim is not None:
            await self.stop(victim, "lru", f"to start {inst.name}")
            return (), ""
        busy = ", ".join(r.name for r in residents if r.state is not State.STOPPED)
        limit = self.settings.max_running
        return (), f"max_running={limit} and every running engine is busy ({busy})"

    async def _watch_exit(self, inst: Instance, proc: EngineProcess) -> None:
        assert proc.proc is not None
        code = await proc.proc.wait()
        if inst.process is proc and inst.state is State.READY:
            # Died while serving: in-flight requests fail on their broken connections. New ones
            # wait, as for any stop, until it is cleared away, then start it anew.
            inst.state = State.STOPPING
            inst.stop_task = asyncio.current_task()  # type: ignore[assignment]
            error = f"engine exited with code {code} while serving"
            await self._fail(inst, error, "died", f"{inst.name} died (exit code {code})")

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
            code = await proc.stop(self.settings.setting_of(inst.model, "stop_timeout"))
            self.watchdog.forget(proc.pid)
            # The next load must find the memory free, not merely the process gone.
            await self.memory.wait_released(inst)
        self.memory.detach(inst)
        swapped = self.take_replacement(inst)
        inst.state = State.STOPPED
        if reason in ("lru", "discovery", "oom"):
            inst.evictions += 1
            self.inflation = max(self.inflation, inst.priority)
        self._changed.set()
        detail = f" {why}" if why else ""
        self.record(
            "stop",
            inst.name,
            f"stop {inst.name} ({reason}, idle {idle_s:.0f}s{detail}), exit {code}",
            reason=reason,
        )
        if swapped and inst.model.pinned:
            self.begin_start(inst)  # pinned models are up at all times, in their new form too

    def take_replacement(self, inst: Instance) -> bool:
        """A reload changed the model: from now on (its next start) it has its new definition."""
        changed = inst.replacement
        if changed is None:
            return False
        inst.model, inst.replacement = changed, None
        self.memory.refresh(inst)
        return True

    async def unload(self, name: str) -> None:
        await self.stop(name, "admin")

    async def _ttl_loop(self) -> None:
        while True:
            await asyncio.sleep(TTL_CHECK_S)
            reconfigure.reload_step(self)
            ttl = {n: self.settings.setting_of(i.model, "ttl") for n, i in self.instances.items()}
            residents = [self._running(i) for i in self.instances.values()]
            for name in expired(residents, ttl, time.monotonic()):
                self.stop(name, "ttl")

    # -- reporting -------------------------------------------------------------------------

    def record(self, kind: str, model: str, message: str, **data: Any) -> None:
        log.info(message)
        event = {"time": time.time(), "kind": kind, "model": model, "message": message, **data}
        self.events.publish(event)
        self.metrics.event(kind, model, data)

    def download_changed(self, job: Any) -> None:
        """A download job moved (queued, running, a file done, finished): tell listeners."""
        info = job.public()
        progress = f"{info['bytes_done']}/{info['bytes_total']} bytes"
        message = f"download {job.repo}: {job.state}, {progress}"
        if job.error:
            message += f": {job.error}"
        self.record("download", job.repo, message, job=job.id, state=job.state)

    def _running(self, inst: Instance) -> Running:
        rank = inst.priority if self.settings.gpus.eviction == "frequency" else None
        return Running(inst.name, inst.state, inst.is_idle, inst.last_used, inst.model.pinned, rank)

    def _state_changed(self, inst: Instance, old: State, new: State) -> None:
        event = {
            "time": time.time(),
            "kind": "state",
            "model": inst.name,
            "message": f"{inst.name}: {old.value} -> {new.value}",
            "state": new.value,
            "previous": old.value,
        }
        self.events.publish(event)

    def status(self) -> dict[str, Any]:
        return {
            "gpus": self.memory.status(),
            "models": [
                i.status(self.settings.setting_of(i.model, "ttl")) | self.memory.model_status(i)
                for i in self.instances.values()
            ],
            "max_running": self.settings.max_running,
            "events": [e for e in self.events.recent if e["kind"] != "state"][-50:],
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


def _why_held(inst: Instance) -> str:
    if inst.model.pinned:
        return "pinned"
    if inst.state is State.READY:
        return "idle" if inst.is_idle else f"busy, {inst.in_flight} in flight"
    return inst.state.value
