"""The one decision function, case by case: snapshots in, typed steps out; no processes."""

from __future__ import annotations

from vramgate.errors import NoRoom, QueueFull
from vramgate.gpu.base import GpuMemory
from vramgate.scheduling.decide import Request, Room, Tick, decide
from vramgate.scheduling.snapshot import ModelSnap, Pending, Snapshot, State
from vramgate.scheduling.steps import (
    Begin,
    Drain,
    Forget,
    Join,
    Queue,
    Refuse,
    Replace,
    Serve,
    Sleep,
    Start,
    Stop,
    Wait,
)

READY, STOPPED, STARTING, SLEEPING = State.READY, State.STOPPED, State.STARTING, State.SLEEPING


def m(name: str, state: State = STOPPED, **fields) -> ModelSnap:
    return ModelSnap(name, state, **fields)


def world(*models: ModelSnap, gpus=(), max_running=None, now=100.0, **extra) -> Snapshot:
    return Snapshot({x.name: x for x in models}, tuple(gpus), max_running, now, **extra)


def gpu(index=0, total=10_000, used=0) -> GpuMemory:
    return GpuMemory(index, total, used, 500)


def one(snap: Snapshot, ask) -> object:
    [step] = decide(snap, ask)
    return step


# -- requests ---------------------------------------------------------------------------------


def test_stopped_or_failed_model_is_begun():
    assert one(world(m("a")), Request("a")) == Begin("a")
    assert one(world(m("a", State.FAILED)), Request("a")) == Begin("a")


def test_request_during_a_start_joins_it():
    assert one(world(m("a", STARTING)), Request("a")) == Join()


def test_request_during_a_stop_waits_for_it():
    assert isinstance(one(world(m("a", State.STOPPING)), Request("a")), Wait)


def test_ready_model_is_served_without_limit():
    assert one(world(m("a", READY, in_flight=1000)), Request("a")) == Serve()


def test_newcomer_does_not_overtake_the_queue():
    busy = m("a", READY, in_flight=1, queued=1, max_concurrency=2)
    assert one(world(busy), Request("a")) == Queue()


def test_full_model_queues_then_refuses_with_429():
    def full(queued: int) -> ModelSnap:
        return m("a", READY, in_flight=2, queued=queued, max_concurrency=2, max_queue=4)

    assert one(world(full(3)), Request("a")) == Queue()
    step = one(world(full(4)), Request("a"))
    assert isinstance(step, Refuse) and isinstance(step.error, QueueFull)


def test_draining_engine_takes_no_new_requests():
    """It makes way for another model: new requests wait until it has stopped."""
    step = one(world(m("a", READY, in_flight=1, draining_for="b")), Request("a"))
    assert isinstance(step, Wait) and "making way for b" in step.why


# -- room: the count limit ----------------------------------------------------------------------


def test_room_without_limits_starts_at_once():
    assert decide(world(m("a"), m("b", READY)), Room("a")) == [Start(())]


def test_count_limit_stops_the_least_recently_used_idle_engine():
    snap = world(m("new"), m("a", READY, last_used=5), m("b", READY, last_used=1), max_running=2)
    assert decide(snap, Room("new")) == [Stop("b", "lru", "to start new", "new")]


def test_count_limit_drains_a_busy_engine_rather_than_wait_forever():
    snap = world(m("new"), m("a", READY, in_flight=2, last_used=3), max_running=1)
    steps = decide(snap, Room("new"))
    assert steps[0] == Drain("a", "new")
    assert isinstance(steps[1], Wait)


def test_count_limit_waits_for_starts_under_way_but_not_for_stops():
    """A stop under way overlaps the next start (a cold swap is shorter by the stop's time)."""
    snap = world(m("new"), m("a", STARTING, admitted=True), m("b", State.STOPPING), max_running=1)
    [step] = decide(snap, Room("new"))
    assert isinstance(step, Wait) and "a: starting" in step.why
    alone = world(m("new"), m("b", State.STOPPING), max_running=1)
    assert decide(alone, Room("new")) == [Start(())]


def test_a_start_still_waiting_for_room_does_not_count():
    """Else two starts that each wait for room would wait for each other until evict_wait."""
    snap = world(m("new"), m("a", STARTING), m("b", READY, last_used=1), max_running=2)
    assert decide(snap, Room("new")) == [Start(())]


def test_pinned_engine_never_makes_way_for_the_count_limit():
    snap = world(m("new"), m("p", READY, pinned=True), max_running=1)
    [step] = decide(snap, Room("new"))
    assert isinstance(step, Wait) and "p: pinned" in step.why


def test_failed_models_do_not_count_as_running():
    snap = world(m("new"), m("f", State.FAILED), max_running=1)
    assert decide(snap, Room("new")) == [Start(())]


def test_an_engine_already_draining_is_not_drained_twice():
    snap = world(m("new"), m("a", READY, in_flight=1, draining_for="new"), max_running=1)
    [step] = decide(snap, Room("new"))
    assert isinstance(step, Wait)


# -- room: GPU memory ---------------------------------------------------------------------------


def test_fits_on_the_gpu_starts_there():
    snap = world(m("a", footprint_mib=4000), gpus=[gpu(0, used=7000), gpu(1)])
    assert decide(snap, Room("a")) == [Start((1,))]


def test_idle_engines_are_stopped_to_make_room():
    resident = m("b", READY, gpus=(0,), held_mib=6000, last_used=1)
    snap = world(m("a", footprint_mib=6000), resident, gpus=[gpu(used=6000)])
    assert decide(snap, Room("a")) == [Stop("b", "lru", "to start a", "a")]


def test_busy_engines_drain_to_make_room():
    resident = m("b", READY, in_flight=1, gpus=(0,), held_mib=6000)
    snap = world(m("a", footprint_mib=6000), resident, gpus=[gpu(used=6000)])
    steps = decide(snap, Room("a"))
    assert steps[0] == Drain("b", "a") and isinstance(steps[1], Wait)


def test_once_drained_idle_the_engine_is_stopped():
    resident = m("b", READY, gpus=(0,), held_mib=6000, draining_for="a")
    snap = world(m("a", footprint_mib=6000), resident, gpus=[gpu(used=6000)])
    assert decide(snap, Room("a")) == [Stop("b", "lru", "to start a", "a")]


def test_unknown_footprint_is_a_discovery_run():
    resident = m("b", READY, gpus=(0,), held_mib=2000)
    snap = world(m("a"), resident, gpus=[gpu(used=2000)])
    assert decide(snap, Room("a")) == [Stop("b", "discovery", "to start a", "a")]


def test_unknown_footprint_refused_when_the_policy_says_so():
    snap = world(m("a"), gpus=[gpu()], unknown_footprint="refuse")
    [step] = decide(snap, Room("a"))
    assert isinstance(step, Refuse) and "footprint is unknown" in step.error.message


def test_the_retry_after_out_of_memory_runs_alone():
    """isolate: the footprint is treated as unknown, so everything idle on its GPU goes."""
    resident = m("b", READY, gpus=(0,), held_mib=1000)
    snap = world(m("a", footprint_mib=1000), resident, gpus=[gpu(used=1000)])
    assert decide(snap, Room("a", isolate=True)) == [Stop("b", "oom", "to start a", "a")]


def test_too_big_for_every_gpu_is_refused_and_nothing_stops():
    resident = m("b", READY, gpus=(0,), held_mib=1000)
    [step] = decide(world(m("a", footprint_mib=20_000), resident, gpus=[gpu()]), Room("a"))
    assert isinstance(step, Refuse) and isinstance(step.error, NoRoom)


def test_memory_held_by_a_start_under_way_means_wait():
    starting = m("b", STARTING, gpus=(0,), held_mib=8000)
    [step] = decide(world(m("a", footprint_mib=4000), starting, gpus=[gpu(used=1000)]), Room("a"))
    assert isinstance(step, Wait) and "b: starting" in step.why


def test_memory_other_programs_hold_means_wait_naming_them_not_our_idle_engines():
    """Stopping the idle engine would not be enough beside what others hold: nothing stops,
    and the reason names them (they may leave), not our idle engine."""
    idle = m("b", READY, gpus=(0,), held_mib=3000, last_used=1)
    theirs = GpuMemory(0, 10_000, 6000, 500, others_mib=3000)
    [step] = decide(world(m("a", footprint_mib=7000), idle, gpus=[theirs]), Room("a"))
    assert isinstance(step, Wait) and step.why == "other programs hold 3000 MiB on GPU 0"


def test_a_stop_under_way_that_frees_enough_is_waited_for_rather_than_evicting_more():
    """The driver decides again as soon as it has issued a stop; the stopping engine's memory
    is on its way: nothing more is evicted for it."""
    going = m("b", State.STOPPING, gpus=(0,), held_mib=4000)
    idle = m("a", READY, gpus=(0,), held_mib=4000, last_used=1)
    snap = world(m("c", footprint_mib=4000), idle, going, gpus=[gpu(total=9000, used=8000)])
    [step] = decide(snap, Room("c"))
    assert isinstance(step, Wait) and "b stopping" in step.why


def test_memory_and_count_limit_both_apply():
    resident = m("b", READY, gpus=(1,), held_mib=1000, last_used=1)
    snap = world(m("a", footprint_mib=1000), resident, gpus=[gpu(0), gpu(1)], max_running=1)
    assert decide(snap, Room("a")) == [Stop("b", "lru", "to start a", "a")]


def test_a_model_on_the_cpu_takes_no_gpu_memory_and_evicts_nothing_for_it():
    """device: cpu (gpu_count 0): it starts with full GPUs; only the count limit applies."""
    resident = m("b", READY, gpus=(0,), held_mib=9000, last_used=1)
    full = [gpu(used=9500)]
    cpu = m("a", footprint_mib=0, gpu_count=0)
    assert decide(world(cpu, resident, gpus=full), Room("a")) == [Start(())]
    limited = world(cpu, resident, gpus=full, max_running=1)
    assert decide(limited, Room("a")) == [Stop("b", "lru", "to start a", "a")]


# -- tick: TTL, reload, pinned ------------------------------------------------------------------


def test_idle_engine_past_its_ttl_stops():
    snap = world(m("old", READY, last_used=50, ttl_s=10), m("fresh", READY, last_used=95, ttl_s=10))
    assert decide(snap, Tick()) == [Stop("old", "ttl")]


def test_ttl_spares_busy_pinned_and_ttl_zero_engines():
    snap = world(
        m("busy", READY, in_flight=1, ttl_s=10),
        m("pinned", READY, pinned=True, ttl_s=10),
        m("forever", READY, ttl_s=0),
        m("starting", STARTING, ttl_s=10),
    )
    assert decide(snap, Tick()) == []


def test_a_stopped_pinned_model_is_begun():
    assert decide(world(m("p", pinned=True)), Tick()) == [Begin("p")]
    assert decide(world(m("p", State.FAILED, pinned=True)), Tick()) == []


def test_removed_model_is_forgotten_once_stopped_and_stopped_once_idle():
    assert decide(world(m("r", pending=Pending.REMOVED)), Tick()) == [Forget("r")]
    idle = m("r", READY, pending=Pending.REMOVED)
    assert decide(world(idle), Tick()) == [Stop("r", "reload", "removed from the configuration")]


def test_changed_model_is_replaced_at_once_when_not_running():
    assert decide(world(m("c", pending=Pending.CHANGED)), Tick()) == [Replace("c")]


def test_changed_model_under_steady_traffic_drains_then_stops():
    """It would never be idle on its own: new requests wait while it drains."""
    busy = m("c", READY, in_flight=3, pending=Pending.CHANGED)
    assert decide(world(busy), Tick()) == [Drain("c", "reload")]
    draining = m("c", READY, in_flight=3, pending=Pending.CHANGED, draining_for="reload")
    assert decide(world(draining), Tick()) == []
    drained = m("c", READY, pending=Pending.CHANGED, draining_for="reload")
    assert decide(world(drained), Tick()) == [Stop("c", "reload", "its definition changed")]


def test_a_pending_change_waits_for_a_start_under_way():
    assert decide(world(m("c", STARTING, pending=Pending.CHANGED)), Tick()) == []


def test_a_model_just_started_is_not_idle_while_its_waiting_requests_come():
    """Else the next start could evict it before the requests that waited for it are served,
    and two models would take each other's room forever."""
    snap = world(m("b"), m("a", READY, joining=3, last_used=1), max_running=1)
    steps = decide(snap, Room("b"))
    assert steps[0] == Drain("a", "b")
    assert decide(world(m("a", READY, joining=1, ttl_s=1, last_used=0)), Tick()) == []


def test_a_start_behind_others_waits_for_room_they_must_be_given_first():
    snap = world(m("x"), m("y"), m("a", READY, in_flight=1), max_running=1, room_queue=("x", "y"))
    [step] = decide(snap, Room("y"))
    assert isinstance(step, Wait) and "x's start" in step.why
    assert decide(snap, Room("x"))[0] == Drain("a", "x")


def test_a_start_that_fits_now_goes_first_unless_it_made_way_for_one_ahead():
    """The model stopped to make room for x must not take that room back before x has it:
    the two would swap for ever (seen: 21 s of ping-pong under steady traffic)."""
    fits = world(m("x"), m("y"), max_running=2, room_queue=("x", "y"))
    assert decide(fits, Room("y")) == [Start(())]
    victim = world(m("x"), m("b", made_way_for="x"), max_running=2, room_queue=("x", "b"))
    [step] = decide(victim, Room("b"))
    assert isinstance(step, Wait) and "made way for x" in step.why
    assert decide(victim, Room("x")) == [Start(())]


def test_stops_for_a_start_name_it():
    snap = world(m("new"), m("a", READY, last_used=1), max_running=1)
    assert decide(snap, Room("new")) == [Stop("a", "lru", "to start new", "new")]


# -- the sleep tier ------------------------------------------------------------------------------


def sleepy(name: str, state: State = READY, **fields) -> ModelSnap:
    """An engine that can sleep, holding 6000 MiB on GPU 0 awake (1000 MiB of host RAM asleep)."""
    base = {"gpus": (0,), "held_mib": 6000, "can_sleep": True, "host_mib": 1000, "last_used": 1}
    return m(name, state, **(base | fields))


def test_sleep_is_chosen_over_stop_when_host_ram_allows():
    snap = world(m("a", footprint_mib=6000), sleepy("b"), gpus=[gpu(used=6000)],
                 host_budget_mib=4000)  # fmt: skip
    assert decide(snap, Room("a")) == [Sleep("b", "lru", "to start a", "a")]


def test_stop_when_host_ram_does_not_allow_or_the_engine_cannot_sleep():
    full = world(m("a", footprint_mib=6000), sleepy("b"), gpus=[gpu(used=6000)],
                 host_budget_mib=500)  # fmt: skip
    assert decide(full, Room("a")) == [Stop("b", "lru", "to start a", "a")]
    cannot = world(m("a", footprint_mib=6000), sleepy("b", can_sleep=False),
                   gpus=[gpu(used=6000)], host_budget_mib=4000)  # fmt: skip
    assert decide(cannot, Room("a")) == [Stop("b", "lru", "to start a", "a")]


def test_older_sleepers_stop_so_that_a_newer_victim_may_sleep():
    old = sleepy("old", SLEEPING, gpus=(0,), held_mib=500, last_used=0.5, host_mib=1500)
    snap = world(m("a", footprint_mib=5000), sleepy("b", last_used=2), old,
                 gpus=[gpu(used=6500)], host_budget_mib=2000)  # fmt: skip
    steps = decide(snap, Room("a"))
    assert steps == [Stop("old", "host_ram", "host RAM for b to sleep", "a"),
                     Sleep("b", "lru", "to start a", "a")]  # fmt: skip
    # A sleeper used more recently than the victim stays; the victim stops instead.
    recent = old._replace(last_used=3)
    snap = snap._replace(models={**snap.models, "old": recent})
    assert decide(snap, Room("a")) == [Stop("b", "lru", "to start a", "a")]


def test_a_busy_engine_is_never_put_to_sleep():
    busy = sleepy("b", in_flight=2)
    snap = world(m("a", footprint_mib=6000), busy, gpus=[gpu(used=6000)], host_budget_mib=4000)
    steps = decide(snap, Room("a"))
    assert steps[0] == Drain("b", "a") and not any(isinstance(s, Sleep) for s in steps)
    idle_past = sleepy("b", in_flight=1, sleep_after_s=5, last_used=0)
    assert decide(world(idle_past, host_budget_mib=4000), Tick()) == []


def test_sleepers_hold_only_what_is_left_and_are_evicted_first_when_room_is_short():
    """A sleeper's residue is its GPU use now; when even that is needed, it is stopped."""
    asleep = sleepy("b", SLEEPING, held_mib=2000)
    snap = world(m("a", footprint_mib=8000), asleep, gpus=[gpu(used=2000)], host_budget_mib=4000)
    assert decide(snap, Room("a")) == [Stop("b", "lru", "to start a", "a")]
    roomy = world(m("a", footprint_mib=7000), asleep, gpus=[gpu(used=2000)])
    assert decide(roomy, Room("a")) == [Start((0,))]


def test_a_request_wakes_a_sleeper_and_the_wake_is_placed_on_its_own_gpu():
    assert one(world(sleepy("a", SLEEPING)), Request("a")) == Begin("a")
    waking = sleepy("a", STARTING, asleep=True, gpus=(1,), held_mib=500, footprint_mib=6000)
    other = m("c", READY, gpus=(1,), held_mib=4000, last_used=0)
    snap = world(waking, other, gpus=[gpu(0), gpu(1, used=4500)], host_budget_mib=0)
    # GPU 0 is empty, but the sleeper's process lives on GPU 1: room is made there.
    assert decide(snap, Room("a")) == [Stop("c", "lru", "to start a", "a")]
    alone = snap._replace(models={"a": waking}, gpus=(gpu(0), gpu(1, used=500)))
    assert decide(alone, Room("a")) == [Start((1,))]


def test_idle_engines_sleep_after_their_time_and_sleepers_stop_after_their_ttl():
    drowsy = sleepy("a", sleep_after_s=60, ttl_s=600, last_used=0)
    assert decide(world(drowsy, now=30, host_budget_mib=4000), Tick()) == []
    assert decide(world(drowsy, now=61, host_budget_mib=4000), Tick()) == [
        Sleep("a", "sleep_after", "idle 61 s")
    ]
    assert decide(world(drowsy, now=61, host_budget_mib=10), Tick()) == []  # no host room
    assert decide(world(drowsy, now=601, host_budget_mib=4000), Tick()) == [Stop("a", "ttl")]
    asleep = sleepy("a", SLEEPING, ttl_s=600, last_used=0)
    assert decide(world(asleep, now=599, host_budget_mib=4000), Tick()) == []
    assert decide(world(asleep, now=601, host_budget_mib=4000), Tick()) == [Stop("a", "ttl")]
    pinned = sleepy("a", sleep_after_s=1, last_used=0, pinned=True)
    assert decide(world(pinned, now=99, host_budget_mib=4000), Tick()) == []


def test_sleepers_over_the_host_budget_stop_least_recently_used_first():
    models = [sleepy(n, SLEEPING, last_used=t, host_mib=1000) for n, t in (("x", 3), ("y", 1),
                                                                            ("z", 2))]  # fmt: skip
    steps = decide(world(*models, host_budget_mib=1500), Tick())
    assert steps == [Stop("y", "host_ram", "host RAM over 1500 MiB"),
                     Stop("z", "host_ram", "host RAM over 1500 MiB")]  # fmt: skip


def test_a_changed_sleeper_is_stopped_for_the_reload():
    changed = sleepy("a", SLEEPING, pending=Pending.CHANGED)
    assert decide(world(changed, host_budget_mib=4000), Tick()) == [
        Stop("a", "reload", "its definition changed")
    ]


def test_discovery_and_out_of_memory_retries_stop_rather_than_sleep():
    snap = world(m("a"), sleepy("b"), gpus=[gpu(used=6000)], host_budget_mib=4000)
    assert decide(snap, Room("a")) == [Stop("b", "discovery", "to start a", "a")]
    snap = world(m("a", footprint_mib=2000), sleepy("b"), gpus=[gpu(used=6000)],
                 host_budget_mib=4000)  # fmt: skip
    assert decide(snap, Room("a", isolate=True)) == [Stop("b", "oom", "to start a", "a")]


def test_count_limit_drains_a_busy_engine_only_after_its_turn():
    young = m("a", READY, in_flight=2, loaded_at=99.0, drain_after_s=3.0)
    assert isinstance(one(world(m("new"), young, max_running=1, now=100.0), Room("new")), Wait)
    steps = decide(world(m("new"), young, max_running=1, now=102.5), Room("new"))
    assert steps[0] == Drain("a", "new")


def test_a_model_a_reload_removed_or_changed_is_not_started_with_its_old_definition():
    for pending in (Pending.REMOVED, Pending.CHANGED):
        for state in (STOPPED, State.FAILED, SLEEPING):
            step = one(world(m("a", state, pending=pending)), Request("a"))
            assert isinstance(step, Wait), (pending, state, step)


# -- host RAM, other programs, cost ------------------------------------------------------------


def host(used=0, total=4000) -> GpuMemory:
    return GpuMemory(-1, total, used, 0)


def test_a_cpu_engine_starts_when_its_host_ram_fits():
    snap = world(m("cpu", ram_mib=1500), m("other", READY, ram_mib=2000), host=host(used=2000),
                 host_budget_mib=4000)  # fmt: skip
    assert decide(snap, Room("cpu")) == [Start(())]


def test_idle_cpu_engines_and_sleepers_make_way_in_host_ram_by_stopping():
    snap = world(
        m("cpu", ram_mib=2500),
        m("old", READY, ram_mib=2000, last_used=1),
        m("sleeper", SLEEPING, host_mib=1500, last_used=5, can_sleep=True),
        host=host(used=3500), host_budget_mib=4000,
    )  # fmt: skip
    steps = decide(snap, Room("cpu"))
    assert steps == [Stop("old", "host_ram", "host RAM to start cpu", "cpu")]


def test_a_busy_cpu_engine_drains_for_host_ram_and_too_much_is_a_507():
    busy = m("busy", READY, ram_mib=3000, in_flight=1)
    snap = world(m("cpu", ram_mib=2000), busy, host=host(used=3000), host_budget_mib=4000)
    steps = decide(snap, Room("cpu"))
    assert steps[0] == Drain("busy", "cpu") and isinstance(steps[-1], Wait)
    huge = world(m("cpu", ram_mib=9000), busy, host=host(used=3000), host_budget_mib=4000)
    step = one(huge, Room("cpu"))
    assert isinstance(step, Refuse) and isinstance(step.error, NoRoom)
    assert "host RAM" in step.error.message and busy.state is READY
    assert step.error.code == "insufficient_host_memory"  # a NoRoom, not the GPU's code


def test_sleeping_counts_against_the_budget_cpu_engines_share():
    """A GPU engine may sleep only while host RAM (with what CPU engines hold) allows."""
    gpu_model = m("g", READY, gpus=(0,), held_mib=6000, can_sleep=True, host_mib=1500)
    cpu = m("c", READY, ram_mib=3000)
    snap = world(m("new", footprint_mib=6000), gpu_model, cpu, gpus=[gpu(used=6000)],
                 host=host(used=3000), host_budget_mib=4000)  # fmt: skip
    assert decide(snap, Room("new")) == [Stop("g", "lru", "to start new", "new")]
    roomy = snap._replace(host_budget_mib=5000)
    assert decide(roomy, Room("new")) == [Sleep("g", "lru", "to start new", "new")]


def test_other_programs_past_the_share_make_idle_engines_go_cheapest_first():
    from vramgate.scheduling.decide import Yield

    cheap = m("cheap", READY, gpus=(0,), held_mib=3000, reload_s=2, last_used=50)
    dear = m("dear", READY, gpus=(0,), held_mib=3000, reload_s=40, last_used=50)
    busy = m("busy", READY, gpus=(0,), held_mib=2000, in_flight=1)
    others = GpuMemory(0, 10_000, 9500, 500, 1500)  # 8000 ours + 1500 others: past 0.9
    snap = world(cheap, dear, busy, gpus=[others], now=100.0)
    assert decide(snap, Yield(0.9)) == [
        Stop("cheap", "yield", "other programs use 1500 MiB of GPU 0")
    ]
    # Ours alone over the share: not the others' doing, nothing yields.
    mostly_ours = GpuMemory(0, 10_000, 9500, 500, 200)
    assert decide(snap._replace(gpus=(mostly_ours,)), Yield(0.9)) == []


def test_cost_eviction_keeps_a_slow_loader_over_a_quick_one():
    """Asked for as often, of one size: the one that takes 40 s to load stays, the 2 s one goes
    (ranks as instances.count_request makes them, weighed by snapshot.cost_weight)."""
    from vramgate.scheduling.snapshot import cost_weight

    slow = m("slow", READY, gpus=(0,), held_mib=5000, last_used=60, rank=5 * cost_weight(40, 5000))
    quick = m("quick", READY, gpus=(0,), held_mib=5000, last_used=80, rank=5 * cost_weight(2, 5000))
    snap = world(
        m("x", footprint_mib=5000), slow, quick, gpus=[gpu(total=12_000, used=10_000)], now=100.0
    )
    assert decide(snap, Room("x")) == [Stop("quick", "lru", "to start x", "x")]


# -- a cluster's nodes ----------------------------------------------------------------------------


def node_gpu(index: int, node: str, total: int = 10_000, used: int = 0) -> GpuMemory:
    return GpuMemory(index, total, used, 500, node=node)


def test_a_model_split_over_two_gpus_takes_them_on_one_node():
    """GPUs 0 (node a) and 2 (node b) are the emptiest, but a split model's GPUs share a node:
    it goes to b's two, which need no stop."""
    gpus = [node_gpu(0, "a"), node_gpu(1, "a", used=6000), node_gpu(2, "b"), node_gpu(3, "b")]
    resident = m("r", READY, gpus=(1,), held_mib=6000)
    [step] = decide(world(m("tp", footprint_mib=12_000, gpu_count=2), resident, gpus=gpus),
                    Room("tp"))  # fmt: skip
    assert isinstance(step, Start) and step == Start((2, 3)) and "of node b" in step.why


def test_a_model_tied_to_a_node_evicts_there_and_nowhere_else():
    gpus = [node_gpu(0, "a", used=6000), node_gpu(1, "b", used=6000)]
    old = m("old", READY, gpus=(0,), held_mib=6000, last_used=1)
    newer = m("newer", READY, gpus=(1,), held_mib=6000, last_used=5)
    snap = world(m("t", footprint_mib=6000, nodes=("b",)), old, newer, gpus=gpus)
    assert decide(snap, Room("t")) == [Stop("newer", "lru", "to start t", "t")]


def test_a_model_whose_nodes_are_all_gone_waits():
    gpus = [node_gpu(0, "a")]
    [step] = decide(world(m("t", footprint_mib=1000, nodes=("b",)), gpus=gpus), Room("t"))
    assert isinstance(step, Wait) and "none of its nodes (b)" in step.why


def node_ram(node: str, number: int, total: int = 1000, used: int = 0) -> GpuMemory:
    return GpuMemory(-2 - number, total, used, 0, node=node)


def test_an_engine_on_the_cpu_goes_to_the_node_with_room_in_its_ram():
    busy = m("busy", READY, ram_mib=800, in_flight=1, node="a")
    snap = world(m("cpu", ram_mib=500), busy,
                 hosts=(node_ram("a", 0, used=800), node_ram("b", 1)))  # fmt: skip
    [step] = decide(snap, Room("cpu"))
    assert isinstance(step, Start) and step.node == "b"


def test_room_in_a_nodes_ram_is_made_on_that_node_only():
    """Tied to node a: the idle engine there makes way, though node b has room."""
    idle = m("idle", READY, ram_mib=800, node="a", last_used=5)
    other = m("other", READY, ram_mib=800, node="b", last_used=1)
    snap = world(m("cpu", ram_mib=500, nodes=("a",)), idle, other,
                 hosts=(node_ram("a", 0, used=800), node_ram("b", 1, used=800)))  # fmt: skip
    assert decide(snap, Room("cpu")) == [Stop("idle", "host_ram", "host RAM to start cpu", "cpu")]


def test_a_sleeper_counts_against_its_own_nodes_ram():
    """b's sleepers fill b's RAM, not a's: an engine on a may sleep there."""
    sleepy = m("s", READY, gpus=(0,), held_mib=6000, can_sleep=True, host_mib=600, node="a",
               last_used=1)  # fmt: skip
    full = m("z", SLEEPING, host_mib=900, node="b", last_used=2)
    gpus = [node_gpu(0, "a", used=6000)]
    snap = world(m("new", footprint_mib=6000, nodes=("a",)), sleepy, full, gpus=gpus,
                 hosts=(node_ram("a", 0), node_ram("b", 1, used=900)))  # fmt: skip
    assert decide(snap, Room("new")) == [Sleep("s", "lru", "to start new", "new")]
    over = world(m("y", SLEEPING, host_mib=700, node="b", last_used=1), full,
                 hosts=(node_ram("a", 0), node_ram("b", 1, used=1600)))  # fmt: skip
    assert decide(over, Tick()) == [Stop("y", "host_ram", "host RAM over 1000 MiB")]


def test_sleepers_on_a_node_whose_ram_is_not_read_yet_stay():
    """A node placement does not list (joined again, not read yet; or dead) has no known
    budget: its sleepers are not stopped as "host RAM over 0 MiB" (the cluster walk's traces)."""
    asleep = m("y", SLEEPING, host_mib=700, node="b", last_used=1)
    snap = world(asleep, hosts=(node_ram("a", 0),))
    assert decide(snap, Tick()) == []
    known = world(asleep, hosts=(node_ram("a", 0), node_ram("b", 1, total=500, used=700)))
    assert decide(known, Tick()) == [Stop("y", "host_ram", "host RAM over 500 MiB")]


def test_yielding_on_a_node_sleeps_within_that_nodes_ram():
    """Other programs past the share on node a's GPU: the idle engine there sleeps if node a's
    RAM has room, whatever node b's sleepers hold; with a full, it stops."""
    from vramgate.scheduling.decide import Yield

    idle = m("idle", READY, gpus=(0,), held_mib=3000, can_sleep=True, host_mib=600, node="a",
             last_used=50)  # fmt: skip
    elsewhere = m("z", SLEEPING, host_mib=900, node="b", last_used=2)
    others = GpuMemory(0, 10_000, 9500, 500, 6500, node="a")  # 3000 ours + 6500 others
    why = "other programs use 6500 MiB of GPU 0"
    snap = world(idle, elsewhere, gpus=[others], now=100.0,
                 hosts=(node_ram("a", 0), node_ram("b", 1, used=900)))  # fmt: skip
    assert decide(snap, Yield(0.9)) == [Sleep("idle", "yield", why)]
    full = snap._replace(hosts=(node_ram("a", 0, total=500), node_ram("b", 1, used=900)))
    assert decide(full, Yield(0.9)) == [Stop("idle", "yield", why)]


def test_a_cpu_start_waits_for_a_host_ram_stop_under_way_instead_of_stopping_more():
    """Three CPU engines of 1500 MiB under a 3800 MiB budget: the least recently used idle one
    is being stopped for the third; decided again meanwhile, the other idle one stays."""
    snap = world(
        m("third", ram_mib=1500),
        m("old", State.STOPPING, ram_mib=1500, last_used=1),
        m("newer", READY, ram_mib=1500, last_used=5),
        host=host(used=3000, total=3800), host_budget_mib=3800,
    )  # fmt: skip
    [step] = decide(snap, Room("third"))
    assert isinstance(step, Wait) and "old" in step.why


def test_a_cpu_engine_with_an_unknown_footprint_is_placed_alone_and_held_whole():
    """Nothing tells its host RAM (no hint, no estimate, never measured): a discovery run,
    as on a GPU; idle engines in host RAM make way, and until it is measured nothing else
    starts beside it (issue 24, defect 10)."""
    idle = m("idle", READY, ram_mib=500, last_used=1)
    snap = world(m("unknown", ram_mib=None), idle, host=host(used=500), host_budget_mib=4000)
    assert decide(snap, Room("unknown")) == [
        Stop("idle", "host_ram", "host RAM to start unknown", "unknown")
    ]
    starting = m("unknown", STARTING, admitted=True, ram_mib=None)
    beside = world(m("small", ram_mib=100), starting, host=host(), host_budget_mib=4000)
    [step] = decide(beside, Room("small"))
    assert isinstance(step, Wait), step
    refusing = snap._replace(unknown_footprint="refuse")
    [step] = decide(refusing, Room("unknown"))
    assert isinstance(step, Refuse) and "set ram_mib" in step.error.message


def test_idle_cpu_engines_over_the_host_budget_go_at_the_tick_least_recently_used_first():
    """Measured above its hint, an engine on the CPU leaves the host over its budget: idle
    ones there go until it fits again, least recently used first; a busy one stays."""
    old = m("old", READY, ram_mib=1500, last_used=1)
    newer = m("newer", READY, ram_mib=1500, last_used=5)
    busy = m("busy", READY, ram_mib=1500, last_used=0, in_flight=1)
    snap = world(old, newer, busy, host_budget_mib=4000)
    assert decide(snap, Tick()) == [Stop("old", "host_ram", "host RAM over 4000 MiB")]
    assert decide(snap._replace(host_budget_mib=4500), Tick()) == []
