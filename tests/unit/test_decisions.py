"""The scheduler's pure decisions, case by case, with no processes and no sleeps."""

from __future__ import annotations

from dataclasses import replace

from vramgate.decisions import Action, ModelView, Running, choose_eviction, decide, expired
from vramgate.instances import State


def view(state: State, in_flight=0, queued=0, max_concurrency=None, max_queue=4) -> ModelView:
    return ModelView(state, in_flight, queued, max_concurrency, max_queue)


def test_stopped_or_failed_model_is_started():
    assert decide(view(State.STOPPED)) is Action.START
    assert decide(view(State.FAILED)) is Action.START


def test_request_during_a_start_joins_it():
    assert decide(view(State.STARTING)) is Action.JOIN


def test_request_during_a_stop_waits_for_it():
    assert decide(view(State.STOPPING, in_flight=0)) is Action.WAIT_STOP


def test_ready_model_is_served_without_limit():
    assert decide(view(State.READY, in_flight=1000)) is Action.SERVE


def test_ready_model_with_free_slot_is_served():
    assert decide(view(State.READY, in_flight=1, max_concurrency=2)) is Action.SERVE


def test_newcomer_does_not_overtake_the_queue():
    assert decide(view(State.READY, in_flight=1, queued=1, max_concurrency=2)) is Action.QUEUE


def test_full_model_queues_then_rejects():
    assert decide(view(State.READY, in_flight=2, queued=3, max_concurrency=2)) is Action.QUEUE
    assert decide(view(State.READY, in_flight=2, queued=4, max_concurrency=2)) is Action.REJECT
    assert decide(view(State.READY, in_flight=1, max_concurrency=1, max_queue=0)) is Action.REJECT


def res(name: str, last_used: float, state=State.READY, is_idle=True, pinned=False) -> Running:
    return Running(name, state, is_idle, last_used, pinned)


def test_no_eviction_without_max_running():
    assert choose_eviction([res("a", 1), res("b", 2)], None, "c") == (0, None)


def test_no_eviction_while_under_max_running():
    assert choose_eviction([res("a", 1), res("b", 0, State.STOPPED)], 2, "c") == (0, None)


def test_least_recently_used_idle_engine_is_evicted():
    residents = [res("a", 5), res("b", 1), res("c", 3)]
    assert choose_eviction(residents, 3, "d") == (1, "b")


def test_busy_engine_is_not_evicted():
    residents = [res("a", 5), res("b", 1, is_idle=False)]
    assert choose_eviction(residents, 2, "c") == (1, "a")


def test_starting_or_stopping_engine_is_not_evicted_but_counts():
    residents = [res("a", 1, State.STARTING), res("b", 2, State.STOPPING)]
    assert choose_eviction(residents, 2, "c") == (1, None)


def test_all_busy_means_wait():
    assert choose_eviction([res("a", 1, is_idle=False)], 1, "b") == (1, None)


def test_the_asking_model_is_not_counted_against_itself():
    assert choose_eviction([res("a", 1, State.STARTING)], 1, "a") == (0, None)


def test_ttl_expiry():
    residents = [
        res("old", 0),
        res("fresh", 95),
        res("busy", 0, is_idle=False),
        res("forever", 0),
        res("starting", 0, State.STARTING),
    ]
    ttl = {"old": 10, "fresh": 10, "busy": 10, "forever": 0, "starting": 10}
    assert expired(residents, ttl, now=100) == ["old"]


def test_pinned_engine_is_neither_evicted_nor_expired():
    assert choose_eviction([res("p", 1, pinned=True), res("a", 5)], 2, "c") == (1, "a")
    assert choose_eviction([res("p", 1, pinned=True)], 1, "c") == (1, None)
    assert expired([res("p", 0, pinned=True)], {"p": 10}, now=100) == []


def test_count_limit_evicts_the_lowest_ranked_when_ranks_are_given():
    """gpus.eviction: frequency applies to max_running too: the least asked for goes first."""
    often = Running("often", State.READY, True, last_used=1.0, rank=9.0)
    once = Running("once", State.READY, True, last_used=5.0, rank=2.0)
    assert choose_eviction([often, once], 2, "new") == (1, "once")
    assert choose_eviction([replace(often, rank=None), replace(once, rank=None)], 2, "new") == (
        1,
        "often",
    )
