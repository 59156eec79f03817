"""The driver: asks `decide` what to do and carries the steps out with the runtime and memory.

It decides nothing itself. Cold start: a request asks `decide_request` -> Begin; the start task
asks `decide(Room)` until it says Start(gpus) (stopping or draining others meanwhile); the runtime
spawns the engine; its readiness is awaited; every request that joined the start is served.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Coroutine, Iterable
from pathlib import Path
from typing import Any, TypeVar

import aiohttp

from vramgate.config import ModelConfig, Settings
from vramgate.engines import adapters
from vramgate.errors import (
    EngineOutOfMemory,
    EngineStartFailed,
    GatewayBusy,
    GatewayError,
    ModelNotFound,
    NodeLost,
)
from vramgate.events import Events
from vramgate.instances import Instance
from vramgate.kvcache import KvStore
from vramgate.memory import Memory
from vramgate.proxy import new_upstream_session
from vramgate.readahead import readahead
from vramgate.runtimes.base import Runtime
from vramgate.scheduling import steps as do
from vramgate.scheduling.decide import Room, Tick, Yield, decide, decide_request
from vramgate.scheduling.definitions import Definitions
from vramgate.scheduling.lifecycle import Lifecycle
from vramgate.scheduling.slots import (
    Lease,
    LeaseHold,
    confirm_exit,
    free_slot,
    join_start,
    send_back,
    wait_for_slot,
)
from vramgate.scheduling.snapshot import State, cost_weight
from vramgate.scheduling.stopping import Stopping
from vramgate.scheduling.view import request_snap, snapshot
from vramgate.upstream import UpstreamPool

log = logging.getLogger("vramgate.scheduler")
T = TypeVar("T")
TICK_S = 0.25
NODE_LOST_RETRIES = 2  # new placements of a start whose node died under it, before it fails


class Scheduler(Stopping, Definitions):
    def __init__(self, settings: Settings, runtime: Runtime, memory: Memory, events: Events):
        self.settings = settings
        self.adapters = adapters(settings)
        self.runtime, self.memory, self.events = runtime, memory, events
        kv = KvStore(Path(settings.state_dir) / "kv", settings.kv_disk_mib)
        self.life = Lifecycle(runtime, memory, events, kv)
        self.instances: dict[str, Instance] = {}
        self.adhoc_names: set[str] = set()  # models a request named from models_dir
        self.adhoc_labels: dict[str, str] = {}  # other spellings of their paths -> their names
        self.inflation = 0.0  # GreedyDual's L: the priority of the last engine evicted
        self.http: aiohttp.ClientSession | None = None  # probes, sleep calls, KV saves
        self.upstream = UpstreamPool(settings.defaults.read_timeout)  # relayed requests
        self.life.upstream = self.upstream
        self._loading: dict[int, asyncio.Lock] = {}  # one load at a time per GPU
        self._changed = asyncio.Event()  # set (and replaced) whenever anything changes
        self._room_queue: list[str] = []  # starts waiting for room, in arrival order
        self._tasks: set[asyncio.Task[Any]] = set()
        self._last_health = 0.0
        self._last_yield = 0.0
        self._ticker: asyncio.Task[None] | None = None
        for name, model in settings.models.items():
            self.add_model(name, model)

    def add_model(self, name: str, model: ModelConfig) -> Instance:
        inst = self.instances[name] = Instance(name, model)
        inst.on_state = lambda i, old, new: self._state_changed(i.name, old, new)
        return inst

    async def start(self) -> None:
        await self.runtime.start()
        self.http = self.life.http = new_upstream_session(self.settings.defaults.read_timeout)
        self._ticker = self._spawn(self._tick_loop())

    async def close(self) -> None:
        if self._ticker:
            self._ticker.cancel()
        running = [self.stop(i.name, "shutdown") for i in self.instances.values() if i.is_running]
        await asyncio.gather(*running, return_exceptions=True)
        if self.http:
            await self.http.close()
        self.upstream.close()
        await self.runtime.close()

    # -- requests --------------------------------------------------------------------------

    def lease(self, name: str) -> LeaseHold:
        """`async with scheduler.lease(name) as lease`: a slot on its ready engine, released
        at the end whatever happens."""
        inst = self.instances.get(name)
        if inst is None:  # forgotten since its name was resolved (a reload, max_adhoc)
            raise ModelNotFound(f"model '{name}' was removed from the configuration")
        inst.count_request(self.inflation)
        return LeaseHold(self.acquire, self.release, name)

    async def acquire(self, name: str) -> Lease:
        inst = self.instances[name]
        deadline: float | None = None  # set once it must wait: the fast path reads no clock
        while True:
            changed = self._changed
            step = decide_request(request_snap(inst, self.settings))
            match step:
                case do.Serve():
                    assert inst.handle is not None
                    inst.in_flight += 1
                    return Lease(inst, inst.handle)
                case do.Refuse(error=error):
                    raise error
            if deadline is None:
                deadline = asyncio.get_running_loop().time() + self.settings.max_wait_of(inst.model)
            lease = await self._wait(inst, step, changed, deadline)
            if lease is not None:
                return lease
            if self.instances.get(name) is not inst:  # a reload removed it meanwhile
                raise ModelNotFound(f"model '{name}' was removed from the configuration")

    async def _wait(
        self, inst: Instance, step: do.Step, changed: asyncio.Event, deadline: float
    ) -> Lease | None:
        """Waits as `step` says, until `deadline` at the latest: whatever is lost on the way (a
        wake-up nobody sends), a request ends with a clean 503 rather than waiting for ever."""
        bound = asyncio.timeout_at(deadline)
        try:
            async with bound:
                match step:
                    case do.Queue():
                        return await wait_for_slot(inst, self._notify)
                    case do.Begin() | do.Join():
                        if isinstance(step, do.Begin):
                            self.begin_start(inst)
                        # Counted until served: a model just started is not idle while the
                        # requests that waited for it are on their way to it.
                        inst.joining += 1
                        try:
                            await join_start(inst)
                        finally:
                            inst.joining -= 1
                            if inst.joining == 0:
                                self._notify()
                    case do.Wait():
                        await changed.wait()
        except TimeoutError:
            if not bound.expired():
                raise  # the start's own error
            limit = self.settings.max_wait_of(inst.model)
            why = step.why if isinstance(step, do.Wait) else type(step).__name__.lower()
            state = (
                f"{inst.state.value}, {inst.in_flight} in flight, {len(inst.slot_waiters)} queued"
            )
            log.warning(
                "a request for %s waited %g s (%s; %s): refused", inst.name, limit, why, state
            )
            raise GatewayBusy(
                f"model '{inst.name}' could not take this request within max_wait={limit:g} s "
                f"({why}); retry later",
                headers={"Retry-After": "5"},
            ) from None
        return None

    def release(self, lease: Lease) -> None:
        """The request is done. Bookkeeping first: nothing after it can leak the slot."""
        inst = lease.instance
        free_slot(inst, lease.handle, self._notify)
        inst.touch()
        self.memory.after_request(inst)

    def release_after_exit(self, hold: LeaseHold, timeout_s: float) -> None:
        """The engine broke off an answer, and may be dying: its slot is freed once its exit
        has been seen (or `timeout_s` passed), never handed meanwhile to a request queued for
        it; in the background, so that the client has its error at once (a client that has
        its whole answer is gone, and would cancel a wait of its own)."""
        lease = hold.lease
        assert lease is not None
        hold.released_later = True

        async def later() -> None:
            try:
                await confirm_exit(lease, timeout_s)
            finally:
                self.release(lease)

        self._spawn(later())

    async def ensure_ready(self, name: str) -> None:
        """Starts a model if needed and waits for it, without holding a request slot."""
        self.release(await self.acquire(name))

    # -- starting --------------------------------------------------------------------------

    def begin_start(self, inst: Instance) -> None:
        assert inst.start_task is None or inst.start_task.done(), "two starts of one model"
        inst.state = State.STARTING
        inst.last_error = None
        inst.start_task = self._spawn(self._start(inst))

    async def _start(self, inst: Instance) -> None:
        began = time.monotonic()
        try:
            try:
                await self._launch_placed(inst, isolate=False)
            except EngineOutOfMemory as exc:
                # What it used is learned now (or, for a real OOM, unknown): make more room, once.
                message = f"{inst.name} out of memory at start; retrying: {exc.message}"
                self.events.record("oom", inst.name, message)
                await self.life.discard(inst)
                await self._launch_placed(inst, isolate=True)
        except asyncio.CancelledError:
            await self.life.discard(inst)  # stopped meanwhile (unload, shutdown): not a failure
            raise
        except GatewayError as exc:
            message = f"{inst.name} failed to start: {exc.message}"
            await self.life.fail(inst, exc.message, "start_failed", message)
            raise
        except Exception as exc:
            # A bug, or a launch that broke outside the engine (an argv the OS refuses): still
            # the start failure its requests wait for (503), never a bug's 500; and no exception
            # text in last_error, which /gateway/status shows to every client.
            log.error("%s failed to start: unexpected error", inst.name, exc_info=exc)
            error = "unexpected error while starting the engine; the gateway's log has the details"
            message = f"{inst.name} failed to start: {error}"
            await self.life.fail(inst, error, "start_failed", message)
            raise EngineStartFailed(f"model '{inst.name}' failed to start: {error}") from None
        if inst.state is State.STOPPING:
            return  # a stop came as it became ready: the stop takes its engine away
        inst.state = State.READY
        inst.ready_at, inst.loaded_at = time.time(), time.monotonic()
        if self.settings.gpus.eviction == "cost":  # what its requests weigh: its reload, now known
            size = self.memory.footprint(inst)[0] or self.memory.ram(inst)[0] or 1024
            inst.cost_weight = cost_weight(self.memory.reload_s(inst), size)
        inst.touch()
        took = time.monotonic() - began
        self.events.record("ready", inst.name, f"{inst.name} ready in {took:.2f} s", seconds=took)
        assert inst.handle is not None
        if inst.watched is not inst.handle:  # one watcher per engine: a wake keeps its engine
            inst.watched = inst.handle
            self._spawn(self.life.watch_exit(inst, inst.handle))

    async def _launch_placed(self, inst: Instance, *, isolate: bool) -> None:
        """`_launch`, placed anew where the node it started or woke on died meanwhile: the
        requests that wait for it are served elsewhere, not given a 503."""
        for attempt in range(NODE_LOST_RETRIES + 1):
            try:
                await self._launch(inst, isolate=isolate)
                return
            except EngineStartFailed as exc:
                handle = inst.handle
                lost = handle.lost_reason if handle is not None else None
                if lost is None and isinstance(exc, NodeLost):  # before its engine had a handle
                    lost = str(exc)
                if (
                    lost is None
                    or attempt == NODE_LOST_RETRIES
                    or isinstance(exc, EngineOutOfMemory)
                ):
                    raise
                where = f"node {handle.where}" if handle is not None else "its node"
                message = f"{inst.name}: {where} died during its start ({lost}); placing it anew"
                self.events.record("node_lost", inst.name, message, level="warning")
                await self.life.discard(inst)

    async def _launch(self, inst: Instance, *, isolate: bool) -> None:
        if not inst.asleep:  # its weights read while others make room
            self._spawn(asyncio.to_thread(readahead, inst.model.source))
        if (error := self.runtime.unavailable()) is not None:
            raise error
        await self.memory.prepare(inst)
        gpus, env = await self._make_room(inst, isolate)
        # Loads on one GPU go one at a time (vLLM's profiling breaks if memory moves under it),
        # wakes and restarts after a failed wake among them (they ran beside loads once);
        # loads on different GPUs run in parallel. Locks are taken in GPU order: no deadlock
        # between two models split over overlapping GPUs.
        async with contextlib.AsyncExitStack() as held:
            for gpu in gpus:
                await held.enter_async_context(self._loading.setdefault(gpu, asyncio.Lock()))
            adapter = self.adapters[inst.model.engine]
            if inst.asleep:
                await self.life.wake_or_restart(self.settings, adapter, inst, gpus)
            else:
                await self.life.spawn_until_ready(self.settings, adapter, inst, env, gpus)

    async def _make_room(self, inst: Instance, isolate: bool) -> tuple[tuple[int, ...], dict]:
        """Carries out Room decisions until one says Start; returns its GPUs and environment.

        Starts that need others to make way take turns in arrival order; one that fits now
        starts at once, whoever waits. Nothing is locked while waiting.
        """
        deadline = time.monotonic() + self.settings.defaults.evict_wait
        self._room_queue.append(inst.name)
        try:
            while True:
                changed = self._changed
                steps = decide(self._snapshot(with_memory=True), Room(inst.name, isolate))
                match steps:
                    case [do.Start(gpus=gpus, why=where, node=node)]:  # decided, reserved
                        inst.admitted, inst.placed_on = True, node
                        if node and not gpus:
                            self.events.record("place", inst.name, f"place {inst.name} on the "
                                               f"RAM of node {node}")  # fmt: skip
                        if gpus:
                            self.events.record("place", inst.name, f"place {inst.name} on {where}")
                            return gpus, self.memory.attach(inst, gpus)
                        # On the CPU (asked, or no GPU seen): an engine that sees no GPU
                        # takes none, so host RAM counts all it holds.
                        on_cpu = self.memory.device(inst.model) == "cpu"
                        return gpus, {"CUDA_VISIBLE_DEVICES": ""} if on_cpu else {}
                    case [do.Refuse(error=error)]:
                        raise error
                why = next((s.why for s in steps if isinstance(s, do.Wait)), "")
                stops = [
                    self.stop(s.name, s.reason, s.why, s.for_)
                    if isinstance(s, do.Stop)
                    else self.sleep(s.name, s.reason, s.why, s.for_)
                    for s in steps
                    if isinstance(s, do.Stop | do.Sleep)
                ]
                for step in steps:
                    if isinstance(step, do.Drain):
                        self._drain(step.name, step.for_)
                if stops:
                    # Decided again at once: a count limit lets the start overlap the stops;
                    # memory they hold makes it wait for them (placement sees it held).
                    await asyncio.sleep(0)
                    continue
                left = deadline - time.monotonic()
                if left <= 0:
                    raise GatewayBusy(
                        f"cannot start '{inst.name}': {why}; retry later",
                        headers={"Retry-After": "10"},
                    )
                # Decided again at a change, and at least every TICK_S: time alone makes room
                # too (a busy engine's turn ends: gpus.drain_after).
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(changed.wait(), min(left, TICK_S))
        finally:
            self._room_queue.remove(inst.name)
            for other in self.instances.values():
                if other.draining_for == inst.name:
                    other.draining_for = None
                if other.made_way_for == inst.name:
                    other.made_way_for = None
            self._notify()

    def _drain(self, name: str, for_: str) -> None:
        inst = self.instances[name]
        inst.draining_for = for_
        send_back(inst)  # its queue waits for it to come back: it must become idle
        message = f"drain {name}: no new requests until it makes way for {for_}"
        self.events.record("drain", name, message)

    # -- housekeeping ----------------------------------------------------------------------

    async def _tick_loop(self) -> None:
        while True:
            await asyncio.sleep(TICK_S)
            try:  # one bad step must not end TTL, reload and health handling for every model
                self._tick()
            except Exception:
                log.exception("housekeeping failed; trying again in %.2f s", TICK_S)

    def _tick(self) -> None:
        for step in decide(self._snapshot(), Tick()):
            match step:
                case do.Stop(name=name, reason=reason, why=why):
                    self.stop(name, reason, why)
                case do.Sleep(name=name, reason=reason, why=why):
                    self.sleep(name, reason, why)
                case do.Drain(name=name, for_=for_):
                    self._drain(name, for_)
                case do.Forget(name=name):
                    del self.instances[name]
                    self._notify()  # requests that waited for it learn it is gone
                case do.Replace(name=name):
                    self._replace(self.instances[name])
                    self._notify()
                case do.Begin(name=name):
                    self.begin_start(self.instances[name])
        share, poll_s = self.settings.gpus.yield_above, self.settings.gpus.poll_s
        if share is not None and time.monotonic() - self._last_yield >= poll_s:
            self._last_yield = time.monotonic()
            for step in decide(self._snapshot(with_memory=True), Yield(share)):
                if isinstance(step, do.Sleep):
                    self.sleep(step.name, step.reason, step.why)
                elif isinstance(step, do.Stop):
                    self.stop(step.name, step.reason, step.why)
        interval = self.settings.defaults.health_interval
        if interval and time.monotonic() - self._last_health >= interval:
            self._last_health = time.monotonic()
            for inst in self.instances.values():
                if inst.state is State.READY and inst.handle is not None:
                    adapter = self.adapters[inst.model.engine]
                    check = self.life.check_health(self.settings, adapter, inst, inst.handle)
                    self._spawn(check)

    # -- plumbing --------------------------------------------------------------------------

    def _snapshot(self, insts: Iterable[Instance] | None = None, *, with_memory: bool = False):
        chosen = self.instances.values() if insts is None else insts
        queue = tuple(self._room_queue)
        return snapshot(
            chosen,
            self.settings,
            self.memory,
            self.adapters,
            with_memory=with_memory,
            room_queue=queue,
        )

    def _notify(self) -> None:
        """Wakes everything waiting for a change (requests, starts that need room)."""
        self._changed.set()
        self._changed = asyncio.Event()

    def _state_changed(self, name: str, old: State, new: State) -> None:
        self.events.state(name, old.value, new.value)
        self._notify()

    def _spawn(self, coro: Coroutine[Any, Any, T]) -> asyncio.Task[T]:
        task = asyncio.get_running_loop().create_task(coro)
        self._tasks.add(task)
        # Waiters see a start's exception through their own await; this keeps asyncio quiet.
        task.add_done_callback(lambda t: self._tasks.discard(t) or t.cancelled() or t.exception())
        return task
