"""Host RAM: which share of a model lives there, its estimate, PSS measured over a process tree,
and GPU placement under a ceiling while other programs use the GPU."""

from __future__ import annotations

import os
import subprocess
import sys

from vramgate.config import ModelConfig
from vramgate.gpu.base import GpuMemory
from vramgate.gpu.estimate import Estimate
from vramgate.hostram import (
    NO_GPU_NOTE,
    as_run,
    cpu_share,
    device_notes,
    estimate_host_mib,
    runs_on,
    tree_pss_mib,
)
from vramgate.scheduling.placement import Placement, available_mib, place
from vramgate.scheduling.snapshot import ModelSnap, State

GGUF = ModelConfig(engine="llamacpp", source="/m.gguf")
ESTIMATE = Estimate(weights_mib=1000, kv_cache_mib=200, compute_mib=100, overhead_mib=128,
                    context=4096, basis="test")  # fmt: skip


def test_the_share_of_weights_in_host_ram():
    assert cpu_share(GGUF, 30) == 0.0
    assert cpu_share(GGUF.model_copy(update={"device": "cpu"}), 30) == 1.0
    partial = GGUF.model_copy(update={"args": ["-ngl", "20"]})
    assert abs(cpu_share(partial, 30) - 10 / 30) < 1e-9
    assert cpu_share(GGUF.model_copy(update={"args": ["-ngl", "99"]}), 30) == 0.0
    assert cpu_share(GGUF.model_copy(update={"args": ["-ngl", "-1"]}), 30) == 0.0


def test_estimates_by_engine():
    on_cpu = GGUF.model_copy(update={"device": "cpu"})
    # llama.cpp: weights, KV cache and buffers (the GGUF estimate less its GPU context), + 64.
    assert estimate_host_mib(on_cpu, ESTIMATE) == 1000 + 200 + 100 + 64
    tf = ModelConfig(engine="transformers", source="/m", device="cpu")
    assert estimate_host_mib(tf, ESTIMATE) == 1000 + 450
    vllm = ModelConfig(
        engine="vllm", source="/m", device="cpu", env={"VLLM_CPU_KVCACHE_SPACE": "1"}
    )
    assert estimate_host_mib(vllm, ESTIMATE) == 1000 + 1024 + 2100  # weights, its KV space, runtime
    assert estimate_host_mib(tf, None) is None  # nothing tells
    assert estimate_host_mib(GGUF, ESTIMATE) == 0  # wholly on a GPU


def test_auto_runs_on_gpus_where_the_gateway_sees_any_else_on_the_cpu():
    """device: auto (the default) follows the GPUs the gateway sees; cuda without one runs on
    the CPU too, with a note; cpu is the CPU everywhere."""
    cuda, cpu = (GGUF.model_copy(update={"device": d}) for d in ("cuda", "cpu"))
    assert GGUF.device == "auto"
    assert [runs_on(GGUF, True), runs_on(cuda, True), runs_on(cpu, True)] == ["cuda", "cuda", "cpu"]
    assert [runs_on(m, False) for m in (GGUF, cuda, cpu)] == ["cpu", "cpu", "cpu"]
    assert as_run(GGUF, True).device == "cuda" and as_run(cpu, True) is cpu
    # As run without a GPU, it is estimated in host RAM as a CPU model is.
    assert estimate_host_mib(as_run(GGUF, False), ESTIMATE) == 1000 + 200 + 100 + 64
    assert estimate_host_mib(as_run(GGUF, True), ESTIMATE) == 0
    assert device_notes(cuda, False) == [NO_GPU_NOTE]
    assert device_notes(cuda, True) == device_notes(GGUF, False) == device_notes(cpu, False) == []


def test_pss_of_a_process_tree_counts_what_it_touched():
    code = (
        "import time; b = bytearray(200 << 20); b[::4096] = b'1' * len(b[::4096]); time.sleep(30)"
    )
    child = subprocess.Popen([sys.executable, "-c", code])
    measured = 0
    try:
        for _ in range(100):
            measured = tree_pss_mib([child.pid])
            if measured >= 200:
                break
            os.sched_yield()
            subprocess.run(["sleep", "0.05"], check=True)
        assert 200 <= measured < 300, measured
    finally:
        child.kill()
        child.wait()
    assert tree_pss_mib([]) == 0


def test_under_a_ceiling_our_engines_leave_room_to_other_programs():
    """10000 MiB, others use 2000 and ours 4000; with a ceiling at 9000 our engines may fill
    3000 more, not 3500; without others there is no ceiling."""
    resident = ModelSnap("a", State.READY, gpus=(0,), held_mib=4000)
    gpu = GpuMemory(0, 10_000, 6000, 500, others_mib=2000, ceiling_mib=9000)
    assert available_mib(gpu, [resident], ()) == 3000
    assert place(3000, [gpu], [resident], "b") == Placement(gpus=(0,))
    assert place(3200, [gpu], [resident], "b") == Placement(gpus=(0,), evict=("a",))


def test_a_model_larger_than_the_gpu_starts_with_part_of_its_layers_there(tmp_path):
    """A llama.cpp model of ~570 MiB (a 64k context) on a 400 MiB GPU: whole it is refused
    (507); with -ngl 3 its GPU share (~250 MiB) is placed there and the rest counts in host
    RAM (issue 24, defect 11: the whole-model estimate refused what -ngl is for)."""
    from tests.unit.test_estimate import make_gguf
    from vramgate.config import Settings
    from vramgate.engines import adapters
    from vramgate.gpu.simulated import SimulatedGpus
    from vramgate.instances import Instance
    from vramgate.memory import Memory, footprint_store
    from vramgate.scheduling.decide import Room, decide
    from vramgate.scheduling.steps import Refuse, Start
    from vramgate.scheduling.view import snapshot

    gguf = make_gguf(tmp_path / "m.gguf", arch="llama", window=0)
    args = ["-c", "65536"]
    models = {
        "whole": {"engine": "llamacpp", "source": str(gguf), "args": args},
        "part": {"engine": "llamacpp", "source": str(gguf), "args": [*args, "-ngl", "3"]},
    }
    settings = Settings.model_validate({"state_dir": str(tmp_path), "host_ram_mib": 4000,
                                        "models": models})  # fmt: skip
    memory = Memory(settings, SimulatedGpus([400], 0, tmp_path), footprint_store(settings))
    insts = [Instance(n, m) for n, m in settings.models.items()]
    snap = snapshot(insts, settings, memory, adapters(settings), with_memory=True)
    [refused] = decide(snap, Room("whole"))
    assert isinstance(refused, Refuse) and "needs 5" in refused.error.message
    part = snap.models["part"]
    assert part.footprint_mib is not None and 200 < part.footprint_mib < 300, part
    assert part.ram_mib is not None and 300 < part.ram_mib < 400, (
        part
    )  # 9 layers' weights and 48k cells of KV cache, + 64
    [start] = decide(snap, Room("part"))
    assert isinstance(start, Start) and start.gpus == (0,), start


def test_isolate_makes_a_cpu_engine_a_discovery_run_until_measured(tmp_path):
    """gpus.unknown_footprint: isolate: its host estimate is not trusted before a measurement
    (unknown, so a discovery run on its node's RAM); with estimate, the estimate is used."""
    from tests.unit.test_estimate import make_gguf
    from vramgate.config import Settings
    from vramgate.gpu.simulated import SimulatedGpus
    from vramgate.instances import Instance
    from vramgate.memory import Memory, footprint_store

    gguf = make_gguf(tmp_path / "m.gguf", arch="llama", window=0)
    for policy, expected in (("estimate", "estimate"), ("isolate", "unknown")):
        settings = Settings.model_validate({
            "state_dir": str(tmp_path), "gpus": {"unknown_footprint": policy},
            "models": {"c": {"engine": "llamacpp", "source": str(gguf), "device": "cpu"}},
        })  # fmt: skip
        memory = Memory(settings, SimulatedGpus([], 0, tmp_path), footprint_store(settings))
        inst = Instance("c", settings.models["c"])
        assert memory.ram(inst)[1] == expected
        memory.host.record("c", inst.model, 500, new_load=True)
        assert memory.ram(inst) == (500, "measured")
        (tmp_path / "footprints.json").unlink()
