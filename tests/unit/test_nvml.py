"""The NVML backend against a stand-in `pynvml` with the library's API: per-GPU totals, an
engine's use summed over its process tree, release after a stop, and NVML's absence."""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
import types
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from vramgate.gpu import nvml

MIB = 1 << 20


@dataclass
class _Memory:
    total: int
    used: int
    free: int


@dataclass
class _Process:
    pid: int
    usedGpuMemory: int | None


class FakeNvml(types.ModuleType):
    """What vramgate uses of nvidia-ml-py, over GPUs whose process lists the test sets."""

    def __init__(self, totals_mib: list[int]) -> None:
        super().__init__("pynvml")
        self.totals = totals_mib
        self.processes: list[dict[int, int]] = [{} for _ in totals_mib]  # per GPU: pid -> MiB
        self.other_mib = [0 for _ in totals_mib]  # used by processes we do not own

    def nvmlInit(self) -> None:
        pass

    def nvmlDeviceGetCount(self) -> int:
        return len(self.totals)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        return index

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> _Memory:
        used = (sum(self.processes[handle].values()) + self.other_mib[handle]) * MIB
        return _Memory(self.totals[handle] * MIB, used, self.totals[handle] * MIB - used)

    def nvmlDeviceGetComputeRunningProcesses(self, handle: int) -> list[_Process]:
        return [_Process(pid, mib * MIB) for pid, mib in self.processes[handle].items()]


@pytest.fixture
def fake_nvml(monkeypatch: pytest.MonkeyPatch) -> FakeNvml:
    fake = FakeNvml([80_000, 40_000])
    monkeypatch.setitem(sys.modules, "pynvml", fake)
    return fake


@pytest.fixture
def engine_tree() -> Iterator[tuple[subprocess.Popen, int]]:
    """A real engine-like process with a worker child: (leader, worker pid)."""
    code = "import subprocess,sys,time; w=subprocess.Popen([sys.executable,'-c','import time; time.sleep(60)']); print(w.pid, flush=True); time.sleep(60)"  # noqa: E501
    leader = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert leader.stdout is not None
    worker = int(leader.stdout.readline())
    yield leader, worker
    subprocess.run(["kill", "-9", str(worker), str(leader.pid)], check=False)
    leader.wait()


def test_available_only_where_a_gpu_is_seen(fake_nvml: FakeNvml, monkeypatch):
    assert nvml.nvml_available()
    monkeypatch.setitem(sys.modules, "pynvml", FakeNvml([]))
    assert not nvml.nvml_available()


def test_totals_and_use_per_gpu_with_processes_we_do_not_own(fake_nvml: FakeNvml):
    fake_nvml.other_mib[1] = 5000
    gpus = nvml.NvmlGpus(reserve_mib=512)
    first, second = gpus.memory()
    assert (first.total_mib, first.used_mib, first.reserve_mib) == (80_000, 0, 512)
    assert (second.used_mib, second.free_mib) == (5000, 35_000)


def test_an_engines_use_is_summed_over_its_process_tree(fake_nvml: FakeNvml, engine_tree):
    leader, worker = engine_tree
    gpus = nvml.NvmlGpus(reserve_mib=512)
    env = gpus.attach("m", (0, 1))
    assert env == {"CUDA_DEVICE_ORDER": "PCI_BUS_ID", "CUDA_VISIBLE_DEVICES": "0,1"}
    gpus.track("m", [leader.pid])
    assert gpus.used_by("m") is None  # nothing allocated yet
    fake_nvml.processes[0] = {leader.pid: 1000, 999_999: 7000}  # 999999: not ours
    fake_nvml.processes[1] = {worker: 3000}  # a worker (tensor parallel) on the other GPU
    assert gpus.used_by("m") == 4000


def test_wait_released_returns_once_the_gpu_lists_none_of_its_processes(
    fake_nvml: FakeNvml, engine_tree
):
    leader, worker = engine_tree
    gpus = nvml.NvmlGpus(reserve_mib=512)
    gpus.attach("m", (0,))
    gpus.track("m", [leader.pid])
    fake_nvml.processes[0] = {worker: 2000}
    assert gpus.used_by("m") == 2000  # the tree is remembered while alive

    async def release_later() -> float:
        loop = asyncio.get_running_loop()
        loop.call_later(0.3, fake_nvml.processes[0].clear)
        began = time.monotonic()
        await gpus.wait_released("m", timeout_s=5)
        return time.monotonic() - began

    took = asyncio.run(release_later())
    assert 0.25 <= took < 2
    gpus.detach("m")
    assert gpus.used_by("m") is None


def test_wait_released_gives_up_after_its_timeout(fake_nvml: FakeNvml, engine_tree):
    leader, _ = engine_tree
    gpus = nvml.NvmlGpus(reserve_mib=512)
    gpus.attach("m", (0,))
    gpus.track("m", [leader.pid])
    fake_nvml.processes[0] = {leader.pid: 2000}
    began = time.monotonic()
    asyncio.run(gpus.wait_released("m", timeout_s=0.3))
    assert 0.25 <= time.monotonic() - began < 2
