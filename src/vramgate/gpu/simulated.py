"""Simulated GPUs for tests and machines without one, following the usage-file contract.

Every engine started on a simulated GPU gets VRAMGATE_SIM_USAGE_FILE; it writes its current use
there in MiB, as a decimal integer. A GPU's used memory is the sum of those files for the
engines on it now; an engine split over N GPUs (tensor parallel) holds 1/N of its figure on
each. So a fake engine can use more or less than its estimate, grow, or never say.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from vramgate.filenames import file_stem
from vramgate.gpu.base import GpuMemory
from vramgate.gpu.share import share_mib


class SimulatedGpus:
    kind = "simulated"

    def __init__(
        self,
        totals_mib: list[int],
        reserve_mib: int,
        state_dir: Path,
        others_file: Path | None = None,
    ) -> None:
        self.totals_mib = list(totals_mib)
        self.reserve_mib = reserve_mib
        self.others_file = others_file  # gpus.simulate_others_file: other programs' MiB a GPU
        self.dir = state_dir / "simulated-gpu"
        self._on_gpus: dict[str, tuple[int, ...]] = {}  # engines holding memory now, by model

    def attach(self, name: str, gpus: tuple[int, ...]) -> dict[str, str]:
        """Registers an engine about to start on `gpus`; returns the environment it gets."""
        path = self.usage_file(name)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.unlink(missing_ok=True)  # a previous run's figure is not this one's
        self._on_gpus[name] = gpus
        visible = ",".join(map(str, gpus))
        return {"VRAMGATE_SIM_USAGE_FILE": str(path), "CUDA_VISIBLE_DEVICES": visible}

    def track(self, name: str, pids: Sequence[int]) -> None:
        """Simulated use comes from the usage file, not from processes."""

    async def wait_released(self, name: str, timeout_s: float) -> None:
        """A stopped engine's simulated memory is free at once."""

    def detach(self, name: str) -> None:
        """The engine is gone: its memory is free again."""
        self._on_gpus.pop(name, None)
        with contextlib.suppress(OSError):
            self.usage_file(name).unlink()

    def usage_file(self, name: str) -> Path:
        return self.dir / f"{file_stem(name)}.mib"

    def used_by(self, name: str) -> int | None:
        """What the engine last reported, or None if it has not (yet)."""
        try:
            return int(self.usage_file(name).read_text().strip())
        except (OSError, ValueError):
            return None

    def others(self) -> list[int]:
        """What other programs use on each GPU: the file's lines (read at every check: a test
        rewrites it at will); a missing file or line means 0."""
        found = [0] * len(self.totals_mib)
        if self.others_file is None:
            return found
        try:
            lines = self.others_file.read_text().split()
        except OSError:
            return found
        for i, line in enumerate(lines[: len(found)]):
            with contextlib.suppress(ValueError):
                found[i] = max(0, int(line))
        return found

    def memory(self) -> list[GpuMemory]:
        used = [0] * len(self.totals_mib)
        for name, gpus in self._on_gpus.items():
            for gpu in gpus:
                used[gpu] += share_mib(self.used_by(name) or 0, len(gpus))
        others = self.others()
        return [
            GpuMemory(i, total, used[i] + others[i], self.reserve_mib, others[i])
            for i, total in enumerate(self.totals_mib)
        ]
