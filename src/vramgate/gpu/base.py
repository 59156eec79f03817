"""What a GPU memory backend offers the scheduler: per-GPU totals and per-engine use, in MiB."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol


@dataclass(frozen=True)
class GpuMemory:
    """One GPU as the device reports it, in MiB."""

    index: int
    total_mib: int
    used_mib: int
    reserve_mib: int
    others_mib: int = 0  # of used_mib, what processes that are not our engines hold
    # While other programs use it (gpus.yield_above): what our engines may fill it up to.
    ceiling_mib: int | None = None
    node: str = ""  # on a cluster: the node it is in (its index is unique in the cluster)

    @property
    def free_mib(self) -> int:
        return self.total_mib - self.used_mib


class GpuBackend(Protocol):
    """NVML on real GPUs, or simulated GPUs; engines are known by model name."""

    kind: str
    reserve_mib: int

    def attach(self, name: str, gpus: tuple[int, ...]) -> dict[str, str]:
        """Registers an engine about to start on `gpus`; returns the environment it gets."""
        ...

    def track(self, name: str, pids: Sequence[int]) -> None:
        """The engine's processes now exist (their trees hold its memory)."""
        ...

    def used_by(self, name: str) -> int | None:
        """MiB the engine uses now, or None if unknown yet."""
        ...

    def memory(self) -> list[GpuMemory]: ...

    async def wait_released(self, name: str, timeout_s: float) -> None:
        """After a stop: returns once the engine's memory is free again (or after `timeout_s`)."""
        ...

    def detach(self, name: str) -> None: ...
