"""The scheduler's view of GPU memory: footprints by trust, placement inputs, measurements.

Footprint, in order of trust: measured (learned, state_dir/footprints.json; read from the GPU,
or where it cannot tell, from the buffers the engine logged) > the model's
`vram_mib` hint > an estimate from its metadata (with a safety margin) > unknown (a discovery
run measures it). `gpus.unknown_footprint` decides what an unmeasured model without a hint gets.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import replace
from pathlib import Path
from typing import Any, Literal

from vramgate.config import ModelConfig, Settings
from vramgate.engines import REGISTRY
from vramgate.engines.base import MemoryBudget
from vramgate.gpu.base import GpuBackend, GpuMemory
from vramgate.gpu.estimate import Estimate, estimate_model, gpu_layers
from vramgate.gpu.footprints import FootprintStore, footprint_key
from vramgate.gpu.logged import logged_gpu_mib
from vramgate.gpu.nvml import NvmlGpus, nvml_available
from vramgate.gpu.share import share_mib
from vramgate.gpu.simulated import SimulatedGpus
from vramgate.hostram import (
    HOST_SUFFIX,
    HostRam,
    as_run,
    cpu_share,
    device_notes,
    estimate_host_mib,
    host_key,
    legacy_host_key,
    runs_on,
)
from vramgate.hub import is_hub_id
from vramgate.instances import Instance
from vramgate.scheduling.snapshot import State

log = logging.getLogger("vramgate.memory")
HUB_ESTIMATE_S = 30
MEASURED_REQUESTS = 3  # re-measure after this many first requests: KV caches and buffers grow


def gpu_backend(settings: Settings) -> GpuBackend:
    """Simulated GPUs where configured, else NVML where it finds a GPU, else none to account."""
    gpus, state_dir = settings.gpus, Path(settings.state_dir)
    if gpus.simulate_mib:
        others = Path(gpus.simulate_others_file) if gpus.simulate_others_file else None
        return SimulatedGpus(gpus.simulate_mib, gpus.reserve_mib, state_dir, others)
    if nvml_available():
        return NvmlGpus(gpus.reserve_mib)
    return SimulatedGpus([], gpus.reserve_mib, state_dir)  # placed by count and time only


def footprint_store(settings: Settings) -> FootprintStore:
    return FootprintStore(Path(settings.state_dir) / "footprints.json")


class Memory:
    def __init__(self, settings: Settings, gpus: GpuBackend, footprints: FootprintStore) -> None:
        self.footprints = footprints
        self.gpus = gpus
        # A cluster's GPUs come with its nodes: accounted for even before the first joins.
        self.enabled = bool(self.gpus.memory()) or getattr(self.gpus, "grows", False)
        log.info("GPU accounting: %s", self.gpus.kind if self.enabled else "off (no GPU found)")
        self.policy = settings.gpus.unknown_footprint
        self.yield_above = settings.gpus.yield_above
        # Host RAM that engines on the CPU and sleeping engines share (decide's host budget).
        self.host = HostRam(settings.host_ram_mib, footprints)
        self.estimates: dict[str, Estimate | None] = {}
        self.host_estimates: dict[str, int | None] = {}  # estimate_host_mib's, per model
        self._estimated_for: dict[str, str] = {}  # the device each host estimate is for
        # Hub repositories are asked for their metadata when first needed, not at startup.
        self._hub_pending: set[str] = set()
        self._measuring: set[str] = set()  # models with a measurement running in a thread
        for name, model in settings.models.items():
            self.refresh(name, model)

    def refresh(self, name: str, model: ModelConfig) -> None:
        """A model was added or its definition changed (reload): estimate it anew."""
        """Estimates from local files now; a hub id is only marked, for `prepare`."""
        defined, model = model.device, self.as_run(model)
        self._estimated_for[name] = model.device
        self.estimates.pop(name, None)
        self._hub_pending.discard(name)
        self.footprints.adopt_legacy(name, model, ("", HOST_SUFFIX))
        legacy = legacy_host_key(name, model, defined)
        if legacy is not None:
            self.footprints.adopt(legacy, host_key(name, model))
        on_cpu = cpu_share(model, None) > 0 or gpu_layers(model.args) is not None
        self.host_estimates[name] = 0
        if on_cpu:  # its estimate is needed for host RAM, with or without GPU accounting
            self._estimate_host(name, model, _estimate_or_none(name, model, hub=False))
        if not on_cpu and (not self.enabled or self.policy == "isolate"):
            return
        self.estimates[name] = _estimate_or_none(name, model, hub=False)
        if model.source and model.engine != "command" and is_hub_id(model.source):
            self._hub_pending.add(name)

    async def prepare(self, inst: Instance) -> None:
        """Fetches a hub model's estimate (safetensors headers, config.json) once, before its
        first placement; a hub that does not answer leaves what was known."""
        if inst.name not in self._hub_pending:
            return
        self._hub_pending.discard(inst.name)
        try:
            found = await asyncio.wait_for(
                asyncio.to_thread(_estimate_or_none, inst.name, inst.model), HUB_ESTIMATE_S
            )
        except TimeoutError:
            log.warning(
                "model '%s': the hub gave no metadata within %d s", inst.name, HUB_ESTIMATE_S
            )
            return
        if found is not None:
            self.estimates[inst.name] = found
            model = self.as_run(inst.model)
            if cpu_share(model, None) > 0 or gpu_layers(model.args) is not None:
                self._estimate_host(inst.name, model, found)  # refresh's was None: no metadata

    def _estimate_host(self, name: str, model: ModelConfig, found: Estimate | None) -> None:
        """Its host RAM estimate (`model` as_run's), from `found`, its metadata's estimate."""
        host = estimate_host_mib(model, found)
        # gpus.unknown_footprint: isolate holds in host RAM too: measured alone, first.
        self.host_estimates[name] = None if host and self.policy == "isolate" else host

    @property
    def has_gpus(self) -> bool:
        """Whether engines can be placed on a GPU now. A cluster's accounting is on before its
        first node joins, but its GPUs are those of its live nodes: with none carrying one,
        `auto` runs on a node's CPU and is counted in host RAM there."""
        if getattr(self.gpus, "grows", False):
            return bool(self.gpus.memory())  # the last reading of each node: no I/O
        return self.enabled

    def device(self, model: ModelConfig) -> Literal["cuda", "cpu"]:
        """Where its engine runs here: `auto` (and `cuda`) on the CPU where no GPU is seen."""
        return runs_on(model, self.has_gpus)

    def as_run(self, model: ModelConfig) -> ModelConfig:
        """`model` with the device it runs on here, for the engines' adapters."""
        return as_run(model, self.has_gpus)

    def device_notes(self, model: ModelConfig) -> list[str]:
        """A `cuda` model where no GPU is seen runs on the CPU: its notes say so."""
        return device_notes(model, self.has_gpus)

    def _host_estimate(self, inst: Instance) -> int | None:
        """Its host RAM estimate for where it runs now: estimated anew where that changed (a
        cluster's first GPU node joined, or its last left)."""
        if self._estimated_for.get(inst.name, self.device(inst.model)) != self.device(inst.model):
            self.refresh(inst.name, inst.model)
        return self.host_estimates.get(inst.name, 0)

    def footprint(self, inst: Instance) -> tuple[int | None, str]:
        if self.device(inst.model) == "cpu":
            return 0, "cpu"
        measured = self._learned(inst)
        if measured is not None:
            return measured, "measured"
        if inst.model.vram_mib is not None:
            return inst.model.vram_mib, "hint"
        estimate = self.estimates.get(inst.name)
        if estimate is not None:
            return estimate.placement_mib, "estimate"
        return None, "unknown"

    def reload_s(self, inst: Instance) -> float:
        """What bringing it back would take: its wake if it can sleep and has woken, else its
        last load (learned), else a guess from its size (a second per GiB, and one more)."""
        if inst.model.sleep and inst.wake_s is not None:
            return inst.wake_s
        learned = self.footprints.get_load_s(footprint_key(inst.name, inst.model))
        if learned is not None:
            return learned
        mib = self.footprint(inst)[0] or self.ram(inst)[0] or 0
        return 1.0 + mib / 1024

    def memory(self) -> tuple[GpuMemory, ...]:
        """Every GPU now; none when accounting is off. While other programs use a GPU and
        gpus.yield_above is set, our engines may fill it up to that share of its total."""
        if not self.enabled:
            return ()
        found = self.gpus.memory()
        if self.yield_above is None:
            return tuple(found)
        share = self.yield_above
        return tuple(
            replace(g, ceiling_mib=int(share * g.total_mib)) if g.others_mib > 0 else g
            for g in found
        )

    def held_mib(self, inst: Instance) -> int:
        """While resident: the larger of what it is expected to use and what it uses now;
        asleep, what it still uses (its context, a few buffers)."""
        if not inst.gpus:
            return 0
        if inst.asleep:
            return self.used_now(inst) or 0
        return max(self.footprint(inst)[0] or 0, self.used_now(inst) or 0)

    @property
    def host_budget_mib(self) -> int:
        return self.host.budget_mib

    def ram(self, inst: Instance) -> tuple[int | None, str]:
        """(MiB, source) of host RAM its engine holds running (CPU engines, partial offload)."""
        model = self.as_run(inst.model)  # learned per device it runs on (host_key)
        return self.host.footprint(inst.name, model, self._host_estimate(inst))

    def measure_host(self, inst: Instance, *, new_load: bool) -> int | None:
        """Measures (and learns) an engine's host RAM, where it needs some to run."""
        if inst.handle is None or self.ram(inst)[1] == "gpu":
            return None
        used = inst.handle.host_ram("pss")
        model = self.as_run(inst.model)
        return self.host.record(inst.name, model, used, new_load=new_load, base=inst.loaded_key)

    async def read_again(self, inst: Instance) -> None:
        """A fresh reading of the GPUs an engine is on, where reading them is not immediate (a
        cluster's nodes are read every poll_s)."""
        refresh = getattr(self.gpus, "refresh", None)
        if refresh is not None:
            await refresh({inst.name})

    def host_device(self, held_mib: int) -> GpuMemory:
        return self.host.device(held_mib)

    def host_devices(self, held_by_node: dict[str, int]) -> tuple[GpuMemory, ...]:
        """On a cluster, each live node's RAM as a device (none on one machine): its budget is
        host_ram_mib where set, else what the node had available when it joined."""
        hosts = getattr(self.gpus, "hosts", None)
        if hosts is None:
            return ()
        return tuple(hosts(self.host.configured_mib, held_by_node))

    def host_mib(self, inst: Instance) -> int:
        """Host RAM it holds asleep: measured when it last slept; else, at level 1 (weights kept
        in RAM), its GPU footprint, a bound on its weights; level 2 keeps next to nothing."""
        if inst.host_mib is not None:
            return inst.host_mib
        if inst.model.sleep == 1:
            return self.footprint(inst)[0] or 0
        return 0

    def budget(self, inst: Instance) -> MemoryBudget | None:
        """What an engine that sizes itself may take on each of its GPUs, if its footprint is known.

        Split over several GPUs, each holds an equal share; the tightest GPU sets the figures.
        """
        need = self.footprint(inst)[0]
        if need is None or not inst.gpus:
            return None
        # Read before its engine exists: free is pre-load. By index: on a cluster the indices
        # of the GPUs still there need not be 0..n-1.
        memory = {g.index: g for g in self.gpus.memory()}
        mine = [memory[i] for i in inst.gpus if i in memory]
        if not mine:  # its node has just gone: the start fails on its own
            return None
        tightest = min(mine, key=lambda g: g.free_mib)
        share = share_mib(need, len(inst.gpus))
        return MemoryBudget(share, tightest.total_mib, tightest.free_mib)

    def attach(self, inst: Instance, gpus: tuple[int, ...]) -> dict[str, str]:
        inst.gpus = gpus
        inst.measured_requests = 0
        return self.gpus.attach(inst.name, gpus)

    def track(self, inst: Instance, pids: list[int]) -> None:
        self.gpus.track(inst.name, pids)

    async def wait_released(self, inst: Instance, timeout_s: float = 10.0) -> None:
        if inst.gpus:
            await self.gpus.wait_released(inst.name, timeout_s)

    def detach(self, inst: Instance) -> None:
        if inst.gpus:
            self.gpus.detach(inst.name)
            inst.gpus = ()

    def used_now(self, inst: Instance) -> int | None:
        """MiB the engine holds now: what the GPU says, else what the engine logged it took."""
        used = self.gpus.used_by(inst.name)
        if used is None and inst.handle is not None:
            used = logged_gpu_mib(inst.handle.lines)
        return used

    def measure(self, inst: Instance, *, new_load: bool) -> int | None:
        """Reads what the engine uses now and learns it as (part of) its footprint."""
        used = self.used_now(inst)
        if used is not None:
            [key] = self._keys(inst, self._totals(inst.gpus)[:1], inst.loaded_key)
            self.footprints.record(key, used, new_load=new_load)
        return used

    def _learned(self, inst: Instance) -> int | None:
        """Its learned footprint. An engine that takes a share of its GPU (`sizes_to_gpu`)
        learns one per GPU size: the one for where it runs; not placed, the least of those of
        the sizes present (told that budget, it holds to it on any of them). A size it never
        ran on is unknown: 90% of a 16 GiB GPU is no footprint for an 8 GiB one."""
        totals = self._totals(inst.gpus) or self._totals(())
        found = [self.footprints.get_mib(key) for key in self._keys(inst, totals)]
        return min((mib for mib in found if mib is not None), default=None)

    def _keys(self, inst: Instance, totals: list[int], base: str | None = None) -> list[str]:
        """Its footprint's keys (`base`: the loaded file's, for a measurement; else the file's
        on disk now, for placement)."""
        key = base or footprint_key(inst.name, inst.model)
        if not totals or not REGISTRY[inst.model.engine].sizes_to_gpu:
            return [key]
        return [f"{key}#gpu={total}" for total in totals]

    def _totals(self, gpus: tuple[int, ...]) -> list[int]:
        """The sizes (MiB) of `gpus`, smallest first; of every GPU when `gpus` is empty."""
        if not self.enabled:
            return []
        found = self.gpus.memory()
        return sorted({g.total_mib for g in found if not gpus or g.index in gpus})

    def after_request(self, inst: Instance) -> None:
        """Re-measures after the first few requests (KV caches and buffers grow), in a thread:
        reading the GPU and /proc and saving with fsync must not hold the event loop, and
        nothing here may fail a request's release."""
        on_gpu = self.enabled and bool(inst.gpus)
        # In host RAM: an estimate above 0, or one unknown (None: measured all the same).
        on_cpu = self._host_estimate(inst) != 0 or inst.model.ram_mib is not None
        if not (on_gpu or on_cpu) or inst.measured_requests >= MEASURED_REQUESTS:
            return
        if inst.name in self._measuring:
            return
        inst.measured_requests += 1
        self._measuring.add(inst.name)
        task = asyncio.get_running_loop().create_task(asyncio.to_thread(self._measure, inst))
        task.add_done_callback(lambda t: self._measured(inst.name, t))

    def _measure(self, inst: Instance) -> None:
        if inst.gpus:
            self.measure(inst, new_load=False)
        self.measure_host(inst, new_load=False)

    def _measured(self, name: str, task: asyncio.Task[None]) -> None:
        self._measuring.discard(name)
        if not task.cancelled() and task.exception() is not None:
            log.warning("model '%s': measuring its memory failed: %r", name, task.exception())

    def overcommitted(self, gpus: tuple[int, ...]) -> bool:
        """The engines on one of `gpus` report more than it has: simulated out-of-memory."""
        return any(g.used_mib > g.total_mib for g in self.gpus.memory() if g.index in gpus)

    def status(self) -> list[dict[str, Any]]:
        if not self.enabled:
            return []
        return [
            {
                "index": g.index,
                "kind": self.gpus.kind,
                "total_mib": g.total_mib,
                "used_mib": g.used_mib,
                "free_mib": g.free_mib,
                "reserved_mib": g.reserve_mib,
                "others_mib": g.others_mib,  # held by programs that are not our engines
                "ceiling_mib": g.ceiling_mib,  # ours may fill it up to this, meanwhile
                "node": g.node or None,  # on a cluster
            }
            for g in self.memory()
        ]

    def model_status(self, inst: Instance) -> dict[str, Any]:
        mib, source = self.footprint(inst)
        ram, ram_source = self.ram(inst)
        running = inst.state is not State.STOPPED and bool(inst.gpus)
        return {
            "footprint_mib": mib,
            "footprint_source": source,
            "gpus": list(inst.gpus),
            "gpu_count": inst.model.gpus,
            "device": self.device(inst.model),  # where it runs (`auto` resolved)
            "used_mib": self.used_now(inst) if running else None,
            "pinned": inst.model.pinned,
            "ram_mib": ram,  # host RAM it holds running (0: wholly on GPUs)
            "ram_source": ram_source,
            "reload_s": round(self.reload_s(inst), 3),
        }


def _estimate_or_none(name: str, model: ModelConfig, *, hub: bool = True) -> Estimate | None:
    """An estimate, or None: whatever the metadata holds (an unknown dtype, arguments an
    estimator cannot read), a failed estimate only means an unknown footprint."""
    try:
        return estimate_model(model, hub=hub)
    except Exception as exc:
        log.warning("model '%s': no footprint estimate: %s", name, exc)
        return None
