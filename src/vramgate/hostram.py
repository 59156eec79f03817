"""Host RAM, placed like a GPU: what engines on the CPU (and the CPU side of partially offloaded
ones) need, estimated before their first load, measured after (PSS of the engine's process
tree: pages its workers share count once), learned and kept with the GPU footprints; and the
budget they share with sleeping engines (`host_ram_mib`, default: what this process may take at
startup, the least of MemAvailable and its cgroup's room: cgroup.py).

Estimates, by engine, from what each was measured to take here (docs/benchmarks.md, "Host RAM"):
the model's weights (the GGUF or safetensors files; a GGUF's KV cache and buffers as its GPU
estimate counts them) plus the engine's own runtime.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Literal

from vramgate.cgroup import available_mib, read_field
from vramgate.config import ModelConfig
from vramgate.gpu.base import GpuMemory
from vramgate.gpu.estimate import Estimate, gpu_layers, read_gguf_header
from vramgate.gpu.footprints import FootprintStore, footprint_key
from vramgate.gpu.proctree import PROC, process_table, process_tree

log = logging.getLogger("vramgate.memory")
HOST = -1  # the host's RAM as a device in placement (GPUs are numbered from 0)
HOST_RESERVE_MIB = 256  # of what the machine has available, never planned for
# The engine's own runtime on the CPU beyond the weights (and, for llama.cpp, beyond its KV
# cache and buffers, which the GGUF estimate counts): measured here with small models.
RUNTIME_MIB = {"llamacpp": 64, "transformers": 450, "vllm": 2100, "sglang": 2100, "command": 0}


HOST_SUFFIX = "#host"  # a model's host footprint: its GPU footprint's key and this


NO_GPU_NOTE = (
    "device: cuda, but the gateway sees no GPU (NVML finds none and none is simulated): it runs "
    "on the CPU and is counted in host RAM"
)


def runs_on(model: ModelConfig, has_gpus: bool) -> Literal["cuda", "cpu"]:
    """Where a model's engine runs: on GPUs where the gateway sees any, unless it asks for the
    CPU; else on the CPU (`auto` there, and `cuda` too: nothing else can run it)."""
    return "cuda" if has_gpus and model.device != "cpu" else "cpu"


def as_run(model: ModelConfig, has_gpus: bool) -> ModelConfig:
    """`model` with `device` where it runs (never `auto`), for what reads it: the engines'
    arguments, the host RAM share and estimate below."""
    device = runs_on(model, has_gpus)
    return model if model.device == device else model.model_copy(update={"device": device})


def device_notes(model: ModelConfig, has_gpus: bool) -> list[str]:
    """What a model's definition should be told about its device on this gateway."""
    return [NO_GPU_NOTE] if model.device == "cuda" and not has_gpus else []


def host_key(name: str, model: ModelConfig, base: str | None = None) -> str:
    """Its host footprint's key, for `model` as_run's: where it runs is part of it. With `device:
    auto` one definition runs beside a GPU here and wholly on the CPU there: what llama.cpp with
    `-ngl 10` holds beside a GPU is no figure for the whole model on the CPU. (Its `-ngl`, the
    share on the GPU, is in footprint_key's args already.) `base`: footprint_key as it was
    made when the engine was spawned, where one is measured."""
    return f"{base or footprint_key(name, model)}{HOST_SUFFIX}={model.device}"


def legacy_host_key(name: str, model: ModelConfig, defined: str) -> str | None:
    """The key host footprints had before the device was part of it, where its entry is of the
    same place: a definition that names the device it runs on (`cpu`, or `cuda` where a GPU is
    seen). Under `auto` (or `cuda` without a GPU) it may have been learned on either: unread."""
    return footprint_key(name, model) + HOST_SUFFIX if defined == model.device else None


def cpu_share(model: ModelConfig, layers: int | None) -> float:
    """The share of a model's weights that live in host RAM while it runs (`model` as_run's):
    all of it on the CPU; for llama.cpp with `-ngl N` below its layer count, the layers it
    keeps on the CPU."""
    if model.device == "cpu":
        return 1.0
    if model.engine != "llamacpp" or not layers:
        return 0.0
    on_gpu = gpu_layers(model.args)
    return 0.0 if on_gpu is None or on_gpu >= layers else (layers - on_gpu) / layers


def estimate_host_mib(model: ModelConfig, estimate: Estimate | None) -> int | None:
    """What `model`'s engine (as_run's) will hold in host RAM, from its metadata; None: unknown."""
    layers = _layers(model)
    share = cpu_share(model, layers)
    if share == 0.0:
        return 0
    runtime = RUNTIME_MIB.get(model.engine, 0)
    if estimate is None:
        return None
    if share < 1.0:  # partial offload: those layers' weights and KV cache (the GGUF estimate
        return math.ceil(estimate.host_mib + runtime)  # splits them), its host buffers
    if model.engine == "llamacpp":  # its KV cache and buffers, as the GGUF estimate counts them
        body = estimate.total_mib - estimate.overhead_mib
    else:
        body = estimate.weights_mib
    if model.engine == "vllm":  # its KV cache on the CPU: VLLM_CPU_KVCACHE_SPACE GiB (default 4)
        space = model.env.get("VLLM_CPU_KVCACHE_SPACE", "4")
        body += (int(space) if space.isdigit() else 4) * 1024
    return math.ceil(body + runtime)


def _layers(model: ModelConfig) -> int | None:
    source = Path(model.source) if model.source else None
    if model.engine != "llamacpp" or source is None or not source.is_file():
        return None
    try:
        meta, _ = read_gguf_header(source)
    except Exception:
        return None
    arch = meta.get("general.architecture")
    count = meta.get(f"{arch}.block_count")
    return int(count) if isinstance(count, int) else None


def tree_pss_mib(roots: list[int]) -> int:
    """Proportional set size of `roots` and their trees, in MiB: each shared page counted once
    over the processes sharing it (RSS counts it in every one)."""
    if not roots:
        return 0
    table = process_table()
    pids = set().union(*(process_tree(root, table) for root in roots))
    total_kib = 0
    for pid in pids:
        total_kib += read_field(PROC / str(pid) / "smaps_rollup", "Pss:") or read_field(
            PROC / str(pid) / "status", "VmRSS:"
        )
    return total_kib // 1024


class HostRam:
    """The host RAM budget and the host footprints of models."""

    def __init__(self, budget_mib: int | None, footprints: FootprintStore) -> None:
        self.set_budget(budget_mib)
        self.footprints = footprints

    def set_budget(self, budget_mib: int | None, held_mib: int = 0) -> None:
        """host_ram_mib, at startup or from a reload. None: what this process may take, with
        what our engines hold now (`held_mib`) given back: available_mib has it taken out
        already, and a reload back to the default must not count it twice (housekeeping
        would stop idle engines that fitted before it)."""
        self.configured_mib = budget_mib
        self.budget_mib = budget_mib if budget_mib is not None else available_mib() + held_mib

    def footprint(self, name: str, model: ModelConfig, needs: int | None) -> tuple[int | None, str]:
        """(MiB, source) of what it holds running: measured > `ram_mib` > the estimate (`needs`,
        estimate_host_mib's: 0 for a model wholly on a GPU, None when nothing tells)."""
        if needs == 0 and model.ram_mib is None:
            return 0, "gpu"
        measured = self.footprints.get_mib(host_key(name, model))
        if measured is not None:
            return measured, "measured"
        if model.ram_mib is not None:
            return model.ram_mib, "hint"
        return (needs, "estimate") if needs is not None else (None, "unknown")

    def record(
        self, name: str, model: ModelConfig, used: int, *, new_load: bool, base: str | None = None
    ) -> int:
        """Learns a measured host footprint (PSS of the engine's tree, MiB), under the key of
        what the engine loaded (`base`, made at its spawn)."""
        if used > 0:
            self.footprints.record(host_key(name, model, base), used, new_load=new_load)
        return used

    def device(self, held_mib: int) -> GpuMemory:
        """The host as placement sees it: the budget, with what our engines hold and what the
        machine has available now (others' use of RAM counts, as on a GPU)."""
        free = min(self.budget_mib - held_mib, available_mib() - HOST_RESERVE_MIB)
        return GpuMemory(HOST, self.budget_mib, self.budget_mib - max(free, 0), 0)
