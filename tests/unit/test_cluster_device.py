"""`device: auto` on a cluster: the GPUs of its live nodes, none of them one -> the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from vramgate.config import ModelConfig, Settings
from vramgate.gpu.base import GpuMemory
from vramgate.gpu.footprints import FootprintStore
from vramgate.hostram import NO_GPU_NOTE
from vramgate.instances import Instance
from vramgate.memory import Memory

GGUF = Path("/root/.cache/vramgate/models/SmolLM2-135M-Instruct.Q4_1.gguf")
needs_gguf = pytest.mark.skipif(not GGUF.is_file(), reason="needs the SmolLM2 GGUF")


class Cluster:
    """What ClusterGpus reports: the last reading of its live nodes' GPUs (none, at first)."""

    kind = "cluster"
    grows = True

    def __init__(self) -> None:
        self.found: list[GpuMemory] = []

    def memory(self) -> list[GpuMemory]:
        return self.found


def memory(models: dict[str, ModelConfig], cluster: Cluster, tmp_path: Path) -> Memory:
    settings = Settings(models=models, host_ram_mib=4000, state_dir=tmp_path)
    return Memory(settings, cluster, FootprintStore(tmp_path / "f.json"))  # type: ignore[arg-type]


@needs_gguf
def test_auto_on_a_cluster_without_gpus_runs_on_the_cpu_counted_in_host_ram(tmp_path):
    """Reproduced (review 26): accounting on from the start made `auto` cuda on a cluster whose
    nodes carry no GPU: it ran on a node's CPU with 0 MiB of host RAM ("gpu")."""
    model = ModelConfig(engine="llamacpp", source=str(GGUF))  # device: auto
    cuda = model.model_copy(update={"device": "cuda"})
    cluster = Cluster()
    mem = memory({"m": model, "c": cuda}, cluster, tmp_path)
    assert mem.memory() == ()
    assert mem.device(model) == "cpu" and mem.device_notes(cuda) == [NO_GPU_NOTE]
    ram, source = mem.ram(Instance("m", model))
    assert source == "estimate" and (ram or 0) > 0


@needs_gguf
def test_a_gpu_node_joining_moves_auto_to_its_gpu(tmp_path):
    """Once a node brings a GPU, `auto` is placed there and leaves host RAM; and back."""
    model = ModelConfig(engine="llamacpp", source=str(GGUF))
    cluster = Cluster()
    mem = memory({"m": model}, cluster, tmp_path)
    inst = Instance("m", model)
    cluster.found = [GpuMemory(0, 24_000, 0, 0, node="gpu-a")]
    assert mem.device(model) == "cuda" and mem.ram(inst) == (0, "gpu")
    cluster.found = []
    assert mem.device(model) == "cpu" and mem.ram(inst)[1] == "estimate"
