"""Learned host RAM is keyed by where the engine ran: beside a GPU or wholly on the CPU."""

from __future__ import annotations

from pathlib import Path

import pytest

from vramgate.config import ModelConfig, Settings
from vramgate.gpu.footprints import FootprintStore, footprint_key
from vramgate.gpu.simulated import SimulatedGpus
from vramgate.hostram import HOST_SUFFIX, host_key
from vramgate.instances import Instance
from vramgate.memory import Memory

GGUF = Path("/root/.cache/vramgate/models/gemma-3-270m-q4_k_m.gguf")
needs_gguf = pytest.mark.skipif(not GGUF.is_file(), reason="needs the default gemma GGUF")


def memory(model: ModelConfig, totals: list[int], store: FootprintStore, tmp_path: Path) -> Memory:
    settings = Settings(models={"m": model}, host_ram_mib=8000, state_dir=tmp_path)
    return Memory(settings, SimulatedGpus(totals, 0, tmp_path), store)


@needs_gguf
def test_host_ram_learned_beside_a_gpu_is_not_the_cpu_figure(tmp_path):
    """Reproduced (review 26): `-ngl 10` beside a GPU learned 60 MiB of host RAM; the same
    definition (auto) where no GPU is seen took those 60 MiB, "measured", as the whole model's."""
    model = ModelConfig(engine="llamacpp", source=str(GGUF), args=["-ngl", "10"])  # auto
    store = FootprintStore(tmp_path / "footprints.json")
    on_gpu = memory(model, [10_000], store, tmp_path)
    inst = Instance("m", model)
    partial = on_gpu.ram(inst)
    assert on_gpu.device(model) == "cuda" and partial[1] == "estimate"
    store.record(host_key("m", on_gpu.as_run(model)), 60, new_load=True)
    assert on_gpu.ram(inst) == (60, "measured")

    no_gpu = memory(model, [], store, tmp_path)  # the same definition, wholly on the CPU
    assert no_gpu.device(model) == "cpu"
    whole = no_gpu.host_estimates["m"]
    assert whole is not None and whole > (partial[0] or 0)
    assert no_gpu.ram(inst) == (whole, "estimate")  # until measured there


@needs_gguf
def test_an_older_host_entry_is_read_where_the_definition_names_its_device(tmp_path):
    """Entries learned before the device was in the key: a `device: cpu` model's was measured
    on the CPU and is kept; an `auto` one's may come from either place and is learned anew."""
    cpu = ModelConfig(engine="llamacpp", source=str(GGUF), device="cpu")
    auto = ModelConfig(engine="llamacpp", source=str(GGUF))
    found = []
    for model in (cpu, auto):
        store = FootprintStore(tmp_path / f"{model.device}.json")  # one state_dir each
        store.record(footprint_key("m", model) + HOST_SUFFIX, 321, new_load=True)
        found.append(memory(model, [], store, tmp_path).ram(Instance("m", model))[1])
    assert found == ["measured", "estimate"]
