"""The GPUs of every live node of a Ray cluster as one backend, with cluster-wide indices.

Each node's agent reads its own GPUs (NVML or simulated) and what each of its engines holds;
this backend keeps the last reading of every node (refreshed every `cluster.ray.poll_s`, and at
once after a load) and counts an engine's memory on a GPU only while it is attached here, so a
stop frees its memory for placement at once, not one poll later.
"""

from __future__ import annotations

from collections.abc import Sequence

from vramgate.gpu.base import GpuMemory
from vramgate.gpu.share import share_mib
from vramgate.hostram import HOST_RESERVE_MIB
from vramgate.runtimes.ray_cluster import Cluster


class ClusterGpus:
    kind = "cluster"
    grows = True  # nodes bring their GPUs as they join: accounting is on from the start

    def __init__(self, cluster: Cluster, reserve_mib: int) -> None:
        self.cluster = cluster
        self.reserve_mib = reserve_mib
        self._on_gpus: dict[str, tuple[int, ...]] = {}  # engines holding memory, by model

    def attach(self, name: str, gpus: tuple[int, ...]) -> dict[str, str]:
        """Registers the engine; its environment (the node's own GPU indices, a simulated GPU's
        usage file) is set by the agent that starts it there."""
        self._on_gpus[name] = gpus
        return {}

    def track(self, name: str, pids: Sequence[int]) -> None:
        """The agent tracks its engines' processes on the node."""

    def used_by(self, name: str) -> int | None:
        gpus = self._on_gpus.get(name)
        if not gpus:
            return None
        try:
            node, _ = self.cluster.node_of_gpu(gpus[0])
        except Exception:  # its node is gone: so is its memory
            return None
        found = node.reading.get("engines", {}).get(name)
        return None if found is None else int(found)

    def memory(self) -> list[GpuMemory]:
        out: list[GpuMemory] = []
        for node in self.cluster.live():
            readings = node.reading.get("gpus") or []
            ours = [0] * len(node.totals_mib)
            for name, gpus in self._on_gpus.items():
                local = [i - node.first_index for i in gpus if i in node.indices()]
                use = share_mib(self.used_by(name) or 0, len(gpus))
                for k in local:
                    ours[k] += use
            for k, total in enumerate(node.totals_mib):
                reading = readings[k] if k < len(readings) else {}
                # What the node reports beyond its engines: others, and, on real GPUs, what
                # NVML cannot attribute (kept as used). Our engines count as attached here.
                base = max(0, int(reading.get("used", 0)) - int(reading.get("engines", 0)))
                others = int(reading.get("others", 0))
                index = node.first_index + k
                out.append(GpuMemory(index, total, base + ours[k], self.reserve_mib, others,
                                     node=node.name))  # fmt: skip
        return out

    def hosts(self, configured_mib: int | None, held_by_node: dict[str, int]) -> list[GpuMemory]:
        """Each live node's RAM as a device: its budget (host_ram_mib, else what it had
        available when it joined), less what our engines hold there and, as on a GPU, what
        the node reports it has available now."""
        out = []
        for node in self.cluster.read():
            budget = node.ram_budget_mib(configured_mib)
            available = int(node.reading.get("host_available_mib", budget))
            held = held_by_node.get(node.name, 0)
            free = max(0, min(budget - held, available - HOST_RESERVE_MIB))
            out.append(GpuMemory(-2 - node.number, budget, budget - free, 0, node=node.name))
        return out

    async def refresh(self, names: set[str]) -> None:
        await self.cluster.read_now(names)

    async def wait_released(self, name: str, timeout_s: float) -> None:
        """The agent's stop returns once the node's GPUs no longer list the engine."""

    def detach(self, name: str) -> None:
        self._on_gpus.pop(name, None)
