"""One engine's life as the driver carries it out: spawned until ready, watched (exit, health),
cleared away on failure, discarded on stop. Bounded everywhere: nothing here can hang a model."""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, replace

import aiohttp

from vramgate.config import Settings
from vramgate.engines.base import EngineAdapter, LaunchSpec
from vramgate.errors import EngineOutOfMemory, EngineStartFailed
from vramgate.events import Events
from vramgate.gpu.footprints import footprint_key
from vramgate.instances import Instance
from vramgate.kvcache import KvStore, quietly, reuse_event, reuse_of
from vramgate.memory import Memory
from vramgate.proxy import split_url
from vramgate.runtimes.base import EngineHandle, Runtime
from vramgate.scheduling import sleeping
from vramgate.scheduling.slots import GATEWAY_STOPS, send_back
from vramgate.scheduling.snapshot import State
from vramgate.upstream import UpstreamPool

log = logging.getLogger("vramgate.scheduler")

KV_PEEKS = 8  # answers read for llama-server's account of a restore before giving up
# What CUDA and HIP allocators print when a load does not fit (llama.cpp, PyTorch, vLLM).
OOM_OUTPUT = re.compile(r"out of memory|cudaMalloc failed|hipMalloc failed|OutOfMemoryError", re.I)


@dataclass
class Lifecycle:
    runtime: Runtime
    memory: Memory
    events: Events
    kv: KvStore
    http: aiohttp.ClientSession | None = None
    upstream: UpstreamPool | None = None  # relayed requests' connections

    async def spawn_until_ready(
        self,
        settings: Settings,
        adapter: EngineAdapter,
        inst: Instance,
        env: dict[str, str],
        gpus: tuple[int, ...],
    ) -> None:
        """Spawns `inst`'s engine and returns once it is ready and (on GPUs) measured."""
        # Adapters read where it runs (`auto` resolved): transformers' --device, vLLM's sleep.
        name, model = inst.name, self.memory.as_run(inst.model)
        budget = self.memory.budget(inst) if gpus else None
        # Engines that size themselves are told their share, in bytes.
        extra = adapter.memory_args(model, budget) if budget is not None else []
        key = footprint_key(name, model)
        inst.loaded_key = key  # before the spawn: the file it loads is the one on disk now

        def kv_args() -> list[str] | None:  # reads the GGUF header, makes the folder: a thread
            if not adapter.keeps_kv(model):
                return None
            # A state_dir that cannot hold the folder: the engine starts all the same.
            try:
                folder = self.kv.folder(key)
            except OSError as exc:
                log.warning("model '%s': its KV caches are not kept: %s cannot be made (%s)",
                            name, self.kv.path(key), exc.strerror or exc)  # fmt: skip
                return None
            return adapter.kv_args(model, folder)

        kept = await asyncio.to_thread(kv_args)  # None: not kept, or this engine cannot
        kv_key = key if kept is not None else None
        extra = [*extra, *(kept or [])]
        inst.kv_key = kv_key  # this engine's caches are saved under it before it stops

        def spec_for_port(port: int) -> LaunchSpec:
            spec = adapter.launch(name, model, port)
            return replace(spec, argv=spec.argv + extra)

        if inst.notes is None:  # once per definition: in the log, the events and its status
            notes = await asyncio.to_thread(adapter.notes, model)
            inst.notes = self.memory.device_notes(inst.model) + notes
            for note in inst.notes:
                self.events.record("note", name, f"model '{name}': {note}", level="warning")
        inst.starts += 1
        container = settings.container_of(model) if settings.runtime_of(model) == "docker" else None
        spawned = time.monotonic()
        handle = await self.runtime.spawn(
            name, spec_for_port, {**model.env, **env}, gpus, settings.engine_log(name), inst.output,
            container, (inst.placed_on,) if inst.placed_on else tuple(model.nodes),
        )  # fmt: skip
        inst.handle = handle
        own_key = adapter.engine_key(model)
        if own_key:  # the engine's own key: every request to it carries it (relayed, sleep, KV)
            handle.headers["authorization"] = f"Bearer {own_key}"
        if gpus:
            self.memory.track(inst, handle.pids())
        where = f", GPU {','.join(map(str, gpus))}" if gpus else ""
        where += f", node {handle.where}" if handle.where else ""
        message = f"starting {name} (pid {handle.pid}, {handle.base_url}{where})"
        self.events.record("start", name, message)
        assert self.http is not None
        try:
            timeout_s = settings.setting_of(model, "start_timeout")
            await handle.wait_ready(self.http, timeout_s, adapter.is_ready)
        except EngineStartFailed as exc:
            if any(OOM_OUTPUT.search(line) for line in handle.tail(40)):
                raise EngineOutOfMemory(exc.message, detail=exc.detail) from exc
            raise
        # What bringing it back costs (gpus.eviction: cost), learned with its footprint.
        self.memory.footprints.record_load_s(key, time.monotonic() - spawned)
        if kv_key is not None:
            assert self.http is not None
            # Before it serves: the first request finds its prefix cached as before the swap.
            tokens: list[int] = []
            restore = self.kv.restore(self.http, handle.base_url, kv_key, handle.headers, tokens)
            if await quietly("restore", name, restore) and sum(tokens):
                # The first answer says whether llama-server used it (relaying.run asks).
                inst.kv_restored, inst.kv_reused, inst.kv_unread = sum(tokens), None, KV_PEEKS
        # On the CPU (or partly): its host RAM, learned as its GPU memory is.
        await asyncio.to_thread(self.memory.measure_host, inst, new_load=True)
        if gpus:
            await self.memory.read_again(inst)  # on another node: read it there now
            used = await asyncio.to_thread(self.memory.measure, inst, new_load=True)
            if self.memory.overcommitted(gpus):
                on = ",".join(map(str, gpus))
                raise EngineOutOfMemory(
                    f"model '{name}' reported {used} MiB, more than GPU {on} had left"
                )

    async def wake_or_restart(
        self, settings: Settings, adapter: EngineAdapter, inst: Instance, gpus: tuple[int, ...]
    ) -> None:
        """Wakes a sleeping engine where it sleeps; one that will not wake is replaced by a new
        engine in the same room."""
        assert self.http is not None and inst.handle is not None
        if gpus:
            self.memory.track(inst, inst.handle.pids())
        try:
            took = await sleeping.wake(self.http, settings, adapter, inst)
        except sleeping.SleepFailed as exc:
            if inst.handle.lost_reason is not None:  # its node died: its room went with it
                where = f"node {inst.handle.where}"
                raise EngineStartFailed(
                    f"model '{inst.name}': {where} died during its wake ({exc})"
                ) from exc
            message = f"{inst.name} did not wake ({exc}); starting it anew"
            self.events.record("wake_failed", inst.name, message, level="warning")
            await self.discard(inst)
            env = self.memory.attach(inst, gpus) if gpus else {}
            await self.spawn_until_ready(settings, adapter, inst, env, gpus)
            return
        self.events.record("wake", inst.name, f"{inst.name} woke in {took:.3f} s", seconds=took)

    def kv_peek(self, inst: Instance) -> Callable[[int, bytes], None]:
        """Reads llama-server's `timings` in the first whole answer after a KV restore: the
        cache used (cache_n > 0) or not, in the events and the model's `kv_reused`."""

        def peek(status: int, content: bytes) -> None:
            seen = reuse_of(content) if status == 200 and inst.kv_restored else None
            if seen is None:  # no account of its prompt (an embedding, an error): the next one
                inst.kv_unread -= 1
                if inst.kv_unread <= 0:  # its answers never say: stop reading them
                    inst.kv_restored = 0
                return
            restored, inst.kv_restored = inst.kv_restored, 0
            message, inst.kv_reused = reuse_event(inst.name, restored, *seen)
            level = "info" if inst.kv_reused else "warning"
            self.events.record("kv", inst.name, message, level=level)

        return peek

    async def save_kv(self, inst: Instance, handle: EngineHandle | None) -> None:
        """A ready engine about to stop saves its KV caches, where its model keeps them."""
        key = inst.kv_key
        if key is None or handle is None or handle.returncode is not None:
            return
        assert self.http is not None
        save = self.kv.save(self.http, handle.base_url, key, handle.headers)
        await quietly("save", inst.name, save)

    async def discard(self, inst: Instance, stop_timeout_s: float = 0.0) -> int | None:
        """Its engine goes (bounded), then its memory; requests queued for a slot decide again."""
        handle, inst.handle = inst.handle, None
        inst.admitted = False
        send_back(inst)
        try:
            if handle is None:
                return None
            if handle.returncode is None and getattr(handle, "lost_reason", None) is None:
                GATEWAY_STOPS.add(handle)  # running: its exit will be ours (not a death's)
            code = await handle.stop(stop_timeout_s)
            # The next load must find the memory free, not merely the process gone.
            await self.memory.wait_released(inst)
            return code
        finally:
            inst.asleep = False
            self.memory.detach(inst)

    async def fail(
        self, inst: Instance, error: str, kind: str, message: str, end: State = State.FAILED
    ) -> None:
        """Its process and memory go first, then it reads `failed`: until then no new engine of
        the model can start (and register its memory) while the old one is being cleared.

        A stop under way (an unload that cancelled this start as it failed) owns the state: it
        ends `stopped`. Were it `failed` meanwhile, a request would start the model again
        while the stop still runs, and the stop would then mark that new start `stopped`."""
        inst.failures += 1
        inst.last_error = error
        try:
            await self.discard(inst)
        finally:
            # Only where this task still owns the model: a stop begun meanwhile, or a new start
            # after it (the walk's seed 20680123: a death's cleanup outlasted an unload and
            # the next start, and marked that start `stopped`, so a request began a second).
            owner = {State.STARTING: inst.start_task, State.STOPPING: inst.stop_task}
            if owner.get(inst.state) is asyncio.current_task():
                inst.draining_for = None
                inst.state = end
            self.events.record(kind, inst.name, message)

    async def lost(
        self, inst: Instance, error: str, kind: str, message: str, end: State = State.FAILED
    ) -> None:
        """A ready engine died or hung: requests on it fail; the next request starts it anew."""
        inst.leaving = kind
        inst.state = State.STOPPING
        inst.stop_task = asyncio.current_task()  # type: ignore[assignment]
        await self.fail(inst, error, kind, message, end)

    async def watch_exit(self, inst: Instance, handle: EngineHandle) -> None:
        code = await handle.wait()
        if self.upstream is not None:  # requests on it end now (its node may be gone too)
            self.upstream.abort(*split_url(handle.base_url))
        if inst.state is State.STARTING:
            return  # a wake under way: it sees its engine end, and places the model anew
        if handle.lost_reason is not None and inst.handle is handle:
            # Its node died: nothing is wrong with the model; it reads stopped and starts on
            # another node at its next request.
            where = f"node {handle.where}"
            await self.lost(inst, f"its {where} died ({handle.lost_reason})", "node_lost",
                            f"{inst.name} went with {where}", State.STOPPED)  # fmt: skip
            return
        if inst.handle is handle and inst.state is State.SLEEPING:
            await self.lost(inst, f"engine exited with code {code} while asleep", "died",
                            f"{inst.name} died asleep (exit code {code})")  # fmt: skip
        elif inst.handle is handle and inst.state is State.READY:
            error = f"engine exited with code {code} while serving"
            await self.lost(inst, error, "died", f"{inst.name} died (exit code {code})")

    async def check_health(
        self, settings: Settings, adapter: EngineAdapter, inst: Instance, handle: EngineHandle
    ) -> None:
        """A ready engine that stops answering its readiness probe is hung: it is killed, so
        that its clients get an error and the next request starts it anew."""
        assert self.http is not None
        ok = await handle.probe(self.http, settings.defaults.health_interval, adapter.is_ready)
        if inst.handle is not handle or inst.state is not State.READY:
            return
        inst.health_failures = 0 if ok else inst.health_failures + 1
        limit = settings.defaults.health_failures
        if inst.health_failures >= limit:
            inst.health_failures = 0
            error = f"engine stopped answering {handle.base_url} ({limit} health checks failed)"
            await self.lost(inst, error, "hung", f"{inst.name} hung: {error}; killed")
