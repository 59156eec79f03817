"""Placement in GPU memory, case by case: pure functions of GPUs, residents and the ask."""

from __future__ import annotations

from vramgate.gpu.base import GpuMemory
from vramgate.scheduling.placement import Placement, available_mib, place
from vramgate.scheduling.snapshot import ModelSnap, State


def gpu(index=0, total=10_000, used=0, reserve=500) -> GpuMemory:
    return GpuMemory(index, total, used, reserve)


def res(
    name,
    mib,
    last_used=0.0,
    gpu: int | tuple[int, ...] = 0,
    state=State.READY,
    idle=True,
    pinned=False,
    loaded_at=0.0,
    rank=None,
) -> ModelSnap:
    on = (gpu,) if isinstance(gpu, int) else gpu
    return ModelSnap(
        name, state, in_flight=0 if idle else 1, last_used=last_used, pinned=pinned, gpus=on,
        held_mib=mib, loaded_at=loaded_at, rank=rank,
    )  # fmt: skip


def test_fits_on_an_empty_gpu():
    assert place(4000, [gpu()], [], "a") == Placement(gpus=(0,))


def test_second_smaller_model_runs_beside_the_first():
    assert place(3000, [gpu(used=5000)], [res("a", 5000)], "b") == Placement(gpus=(0,))


def test_reserve_is_never_handed_out():
    # 10000 total, 500 reserved, 5000 resident: 4500 left, so 4600 does not fit.
    decision = place(4600, [gpu(used=5000)], [res("a", 5000)], "b")
    assert decision == Placement(gpus=(0,), evict=("a",))


def test_reported_use_of_processes_we_do_not_own_counts():
    # Nothing of ours is resident, but something else uses 6000: 3500 left.
    assert place(4000, [gpu(used=6000)], [], "a") == Placement(wait=True)


def test_engine_not_yet_grown_counts_with_its_footprint():
    # Reported use lags (3000 of an expected 8000): the footprint decides.
    starting = res("a", 8000, state=State.STARTING, idle=True)
    assert available_mib(gpu(used=3000), [starting], ()) == 1500
    assert place(2000, [gpu(used=3000)], [starting], "b") == Placement(wait=True)


def test_least_recently_used_idle_engine_is_evicted():
    residents = [res("old", 3000, last_used=1), res("new", 3000, last_used=9)]
    assert place(5000, [gpu(used=6000)], residents, "c") == Placement(gpus=(0,), evict=("old",))


def test_fewest_engines_are_stopped():
    # LRU order would stop small1 then big; big alone is enough, so small1 stays.
    residents = [res("small1", 1000, 1), res("big", 6000, 2), res("small2", 1000, 3)]
    assert place(7000, [gpu(used=8000)], residents, "x") == Placement(gpus=(0,), evict=("big",))


def test_busy_engine_is_never_evicted_but_drained():
    """It finishes its requests (taking no more) and then makes way: no model starves."""
    residents = [res("busy", 6000, last_used=0, idle=False), res("idle", 2000, last_used=5)]
    assert place(7000, [gpu(used=8000)], residents, "x") == Placement(gpus=(0,), drain=("busy",))
    assert place(3000, [gpu(used=8000)], residents, "x") == Placement(gpus=(0,), evict=("idle",))


def test_pinned_engine_is_never_evicted():
    residents = [res("pinned", 6000, pinned=True), res("idle", 2000, last_used=5)]
    assert place(7000, [gpu(used=8000)], residents, "x") == Placement(wait=True)


def test_too_big_for_any_gpu_is_refused_with_nothing_evicted():
    decision = place(20_000, [gpu(), gpu(1, total=16_000)], [res("a", 1000)], "big")
    assert decision.evict == () and decision.gpus == ()
    assert decision.refuse == "needs 20000 MiB but the largest GPU has 16000 MiB (500 MiB reserved)"


def test_two_gpus_model_goes_where_it_fits_tightest():
    gpus = [gpu(0, used=2000), gpu(1, used=6000)]
    residents = [res("a", 2000, gpu=0), res("b", 6000, gpu=1)]
    assert place(3000, gpus, residents, "c") == Placement(gpus=(1,))
    assert place(5000, gpus, residents, "c") == Placement(gpus=(0,))


def test_two_gpus_evict_where_fewest_stops_are_needed():
    gpus = [gpu(0, used=9000), gpu(1, used=9000)]
    residents = [
        res("a1", 4500, 1, gpu=0),
        res("a2", 4500, 2, gpu=0),
        res("b1", 9000, 5, gpu=1),
    ]
    assert place(8000, gpus, residents, "c") == Placement(gpus=(1,), evict=("b1",))


def test_unknown_footprint_is_a_discovery_run_alone_on_a_gpu():
    residents = [res("a", 3000, 1), res("b", 2000, 2), res("p", 1000, pinned=True)]
    assert place(None, [gpu(used=6000)], residents, "new") == Placement(gpus=(0,), evict=("a", "b"))


def test_discovery_drains_busy_engines_on_its_gpu():
    """Busy engines are not stopped: they drain (no new requests), then make way."""
    residents = [res("a", 3000, idle=False)]
    assert place(None, [gpu(used=3000)], residents, "new") == Placement(gpus=(0,), drain=("a",))


def test_discovery_waits_for_a_start_under_way_on_its_gpu():
    residents = [res("a", 3000, state=State.STARTING)]
    assert place(None, [gpu(used=3000)], residents, "new") == Placement(wait=True)


def test_discovery_prefers_the_gpu_it_can_have_alone():
    gpus = [gpu(0, used=3000), gpu(1)]
    assert place(None, gpus, [res("a", 3000, gpu=0)], "new") == Placement(gpus=(1,))


def test_the_asking_model_is_not_its_own_obstacle():
    assert place(4000, [gpu(used=4000)], [res("a", 4000)], "a") == Placement(gpus=(0,))


def test_recently_loaded_engine_is_spared_while_another_can_go():
    """Anti-thrash: an engine younger than min_residency goes only if nothing else frees enough."""
    young = res("young", 4500, 1.0, loaded_at=95.0)
    old = res("old", 4500, 5.0, loaded_at=10.0)
    g = gpu(used=9000)
    assert place(5000, [g], [young, old], "x") == Placement(gpus=(0,), evict=("young",))
    spared = place(5000, [g], [young, old], "x", now=100.0, min_residency_s=30)
    assert spared == Placement(gpus=(0,), evict=("old",))


def test_recently_loaded_engine_goes_when_nothing_else_frees_enough():
    young = res("young", 5500, 1.0, loaded_at=95.0)
    old = res("old", 3500, 5.0, loaded_at=10.0)
    decision = place(5000, [gpu(used=9000)], [young, old], "x", now=100.0, min_residency_s=30)
    assert decision == Placement(gpus=(0,), evict=("young",))


def test_tensor_parallel_needs_its_share_on_as_many_gpus():
    gpus = [gpu(0, used=6000), gpu(1), gpu(2)]
    residents = [res("a", 6000, gpu=0)]
    # 8000 MiB over 2 GPUs: 4000 each; GPU 0 has only 3500 left, so GPUs 1 and 2.
    assert place(8000, gpus, residents, "tp", gpu_count=2) == Placement(gpus=(1, 2))


def test_tensor_parallel_evicts_on_each_gpu_it_needs():
    gpus = [gpu(0, used=6000), gpu(1, used=6000)]
    residents = [res("a", 6000, 1.0, gpu=0), res("b", 6000, 2.0, gpu=1)]
    decision = place(10_000, gpus, residents, "tp", gpu_count=2)
    assert decision == Placement(gpus=(0, 1), evict=("a", "b"))


def test_a_split_resident_frees_its_share_on_every_gpu():
    gpus = [gpu(0, used=4000), gpu(1, used=4000)]
    split = res("split", 8000, gpu=(0, 1))
    assert available_mib(gpus[0], [split], ()) == 5500
    assert place(9000, gpus, [split], "x") == Placement(gpus=(0,), evict=("split",))


def test_more_gpus_than_exist_or_a_share_too_big_is_refused():
    assert place(1000, [gpu()], [], "tp", gpu_count=2).refuse == "asks for 2 GPUs but there are 1"
    too_big = place(30_000, [gpu(0), gpu(1)], [res("a", 1000)], "tp", gpu_count=2)
    assert too_big.refuse is not None and "15000 MiB on each of 2 GPUs" in too_big.refuse
    assert too_big.evict == ()


def test_tensor_parallel_discovery_takes_the_emptiest_gpus():
    gpus = [gpu(0, used=3000), gpu(1), gpu(2)]
    decision = place(None, gpus, [res("a", 3000, gpu=0)], "tp", gpu_count=2)
    assert decision == Placement(gpus=(1, 2))


def test_a_rank_replaces_recency_in_the_eviction_order():
    """gpus.eviction: frequency ranks residents by priority; the lowest goes first."""
    often = res("often", 4500, 1.0, rank=9.0)
    once = res("once", 4500, 5.0, rank=1.0)
    decision = place(4000, [gpu(used=9000)], [often, once], "x")
    assert decision == Placement(gpus=(0,), evict=("once",))  # LRU would have taken "often"


def test_a_model_fits_into_exactly_the_room_left():
    """GPU 0: 10000 total, 500 reserved, 5000 resident: exactly 4500 left, and 4500 fits there
    (the tightest fit, ahead of GPU 1's 5500)."""
    gpus = [gpu(0, used=5000), gpu(1, used=4000)]
    residents = [res("a", 5000, gpu=0), res("b", 4000, gpu=1)]
    assert place(4500, gpus, residents, "c") == Placement(gpus=(0,))
    assert place(4501, gpus, residents, "c") == Placement(gpus=(1,))


def test_a_busy_engine_is_drained_only_after_its_turn():
    """Just started and busy (serving the requests that waited for it): not drained until it
    has served for drain_after seconds; then it is."""
    young = ModelSnap(
        "busy", State.READY, in_flight=1, gpus=(0,), held_mib=6000, loaded_at=99.0,
        drain_after_s=3.0,
    )  # fmt: skip
    assert place(7000, [gpu(used=6000)], [young], "x", now=100.0) == Placement(wait=True)
    decision = place(7000, [gpu(used=6000)], [young], "x", now=102.5)
    assert decision == Placement(gpus=(0,), drain=("busy",))
    idle = young._replace(in_flight=0)  # an idle one goes at once, whatever its age
    assert place(7000, [gpu(used=6000)], [idle], "x", now=100.0) == Placement((0,), ("busy",))
