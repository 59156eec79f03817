"""Real NVIDIA GPUs through NVML (nvidia-ml-py): totals, free memory, and each engine's use.

An engine's use is what NVML reports for every process of its tree (vLLM and SGLang run workers
as children). On an H100 NVML reports each process's use, and a killed process's memory is free
again within about 0.2 s; `wait_released` polls for that before the next load.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Sequence

from vramgate.gpu.base import GpuMemory
from vramgate.gpu.proctree import process_table, process_tree

log = logging.getLogger("vramgate.nvml")
MIB = 1 << 20
RELEASE_POLL_S = 0.05
# One /proc scan serves every model for this long: status, metrics and placement each ask for
# every model's use, and a scan of /proc costs milliseconds on a busy host.
TABLE_MAX_AGE_S = 0.5


def nvml_available() -> bool:
    """True where NVML loads and sees at least one GPU."""
    try:
        import pynvml

        pynvml.nvmlInit()
        return pynvml.nvmlDeviceGetCount() > 0
    except Exception:  # no library, no driver, no device: all mean "no NVML here"
        return False


class NvmlGpus:
    kind = "nvml"

    def __init__(self, reserve_mib: int) -> None:
        import pynvml

        pynvml.nvmlInit()
        self.nvml = pynvml
        self.reserve_mib = reserve_mib
        count = pynvml.nvmlDeviceGetCount()
        self.handles = [pynvml.nvmlDeviceGetHandleByIndex(i) for i in range(count)]
        self._pids: dict[str, tuple[int, ...]] = {}
        self._on_gpus: dict[str, tuple[int, ...]] = {}
        self._trees: dict[str, set[int]] = {}  # last seen while alive: dead trees cannot be read
        self._table: dict[int, tuple[int, int]] = {}
        self._table_at = float("-inf")

    def attach(self, name: str, gpus: tuple[int, ...]) -> dict[str, str]:
        self._on_gpus[name] = gpus
        # CUDA's own order can differ from NVML's (fastest first); PCI bus order matches NVML.
        return {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": ",".join(map(str, gpus))}

    def track(self, name: str, pids: Sequence[int]) -> None:
        self._pids[name] = tuple(pids)
        self._table_at = float("-inf")  # a new engine: the next reading scans /proc again

    def _process_use(self, gpu: int) -> dict[int, int]:
        """pid -> MiB for every compute process on `gpu`."""
        procs = self.nvml.nvmlDeviceGetComputeRunningProcesses(self.handles[gpu])
        return {int(p.pid): int(p.usedGpuMemory or 0) // MIB for p in procs}

    def used_by(self, name: str) -> int | None:
        """MiB the engine's process tree uses over all its GPUs, None before it allocates."""
        pids, gpus = self._pids.get(name), self._on_gpus.get(name)
        if not pids or gpus is None:
            return None
        if time.monotonic() - self._table_at > TABLE_MAX_AGE_S:
            self._table, self._table_at = process_table(), time.monotonic()
        tree = set().union(*(process_tree(pid, self._table) for pid in pids))
        self._trees[name] = tree
        found = [mib for gpu in gpus for p, mib in self._process_use(gpu).items() if p in tree]
        return sum(found) if found else None

    def memory(self) -> list[GpuMemory]:
        out = []
        ours = set().union(*self._trees.values()) if self._trees else set()
        for i, handle in enumerate(self.handles):
            info = self.nvml.nvmlDeviceGetMemoryInfo(handle)
            total, used = int(info.total) // MIB, int(info.used) // MIB
            # Others: every process on it that is not one of our engines' trees (as last seen),
            # a game, ComfyUI, a notebook; processes NVML cannot attribute count as ours.
            others = sum(mib for pid, mib in self._process_use(i).items() if pid not in ours)
            out.append(GpuMemory(i, total, used, self.reserve_mib, min(others, used)))
        return out

    async def wait_released(self, name: str, timeout_s: float) -> None:
        pids, gpus = self._pids.get(name), self._on_gpus.get(name)
        if not pids or gpus is None:
            return
        tree = self._trees.get(name, set()) | set(pids)
        deadline = time.monotonic() + timeout_s
        while any(p in tree for gpu in gpus for p in self._process_use(gpu)):
            if time.monotonic() >= deadline:
                log.warning("GPUs %s still list %s's processes after %.1f s", gpus, name, timeout_s)
                return
            await asyncio.sleep(RELEASE_POLL_S)

    def detach(self, name: str) -> None:
        self._pids.pop(name, None)
        self._on_gpus.pop(name, None)
        self._trees.pop(name, None)
