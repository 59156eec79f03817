"""Defects of the driver's state machine, each reproduced on the real driver in this process
(fake engines, a simulated GPU) before it was fixed: lost wake-ups, drains that never end, an
unload that left a model asleep, watchers that pile up."""

from __future__ import annotations

import asyncio

from tests.harness import ask, driver, fake, kill, settings_for, until
from vramgate import reconfigure
from vramgate.scheduling.snapshot import State


def test_slot_freed_by_a_request_on_a_dead_engine_goes_to_the_queue_of_the_new_one(tmp_path):
    """Reproduced (the storm's lost wake-up): a request on an engine that was killed released its
    slot after the restarted engine was ready; the requests queued for the new engine were never
    handed that slot (ready, in_flight 0, queued 1, for ever)."""

    async def run() -> None:
        async with driver(tmp_path, {"one": fake(max_concurrency=1)}) as s:
            old = await s.acquire("one")  # held across the crash, as a slow relay holds it
            kill(s, "one")
            assert await until(lambda: s.instances["one"].state is State.FAILED)
            late = asyncio.create_task(ask(s, "one"))  # restarts it, then queues behind `old`
            assert await until(lambda: len(s.instances["one"].slot_waiters) == 1)
            assert s.instances["one"].state is State.READY
            s.release(old)
            assert await asyncio.wait_for(late, 5) == "tok0 "
            assert s.instances["one"].in_flight == 0 and not s.instances["one"].slot_waiters

    asyncio.run(run())


def test_a_wait_that_nothing_ends_is_a_503_after_max_wait(tmp_path):
    """Every wait in the request path is bounded: here a drain for a reload that (by an unknown
    defect, simulated by setting it by hand) nothing would ever end."""

    async def run() -> None:
        async with driver(tmp_path, {"one": fake()}, defaults={"max_wait": 1}) as s:
            await ask(s, "one")
            s.instances["one"].draining_for = "nobody"
            began = asyncio.get_running_loop().time()
            try:
                await ask(s, "one")
            except Exception as exc:
                assert type(exc).__name__ == "GatewayBusy" and "max_wait=1" in str(exc)
                assert exc.headers["Retry-After"]  # type: ignore[attr-defined]
            else:
                raise AssertionError("served while draining")
            assert 0.9 < asyncio.get_running_loop().time() - began < 3

    asyncio.run(run())


def test_drained_engine_does_not_hand_its_slots_to_its_queue(tmp_path):
    """Reproduced: a model drained to make room still handed each finishing request's slot to
    its queue, so it never went idle and the start that needed its room got 503 (evict_wait)."""
    gpu = {"simulate_mib": [10_000], "reserve_mib": 0}
    slow = fake("--vram-mib", "6000", "--tokens-per-s", "20", vram_mib=6000, max_concurrency=1)
    other = fake("--vram-mib", "6000", vram_mib=6000)

    async def run() -> None:
        async with driver(
            tmp_path,
            {"a": slow, "b": other},
            gpus={**gpu, "drain_after": 0},
            defaults={"evict_wait": 2},
        ) as s:
            first = asyncio.create_task(ask(s, "a", tokens=10))  # 0.5 s
            assert await until(lambda: s.instances["a"].in_flight == 1)
            # Served one after another, they would keep a busy for 2.5 s: past evict_wait.
            queued = [asyncio.create_task(ask(s, "a", tokens=10)) for _ in range(4)]
            assert await until(lambda: len(s.instances["a"].slot_waiters) == 4)
            b = asyncio.create_task(ask(s, "b"))  # needs a's room: a drains
            assert await asyncio.wait_for(b, 10) == "tok0 "
            await first
            # The queue waited for a to come back (it made way for b meanwhile).
            assert [await asyncio.wait_for(q, 20) for q in queued] == [_ten()] * 4

    asyncio.run(run())


def _ten() -> str:
    return "".join(f"tok{i} " for i in range(10))


def test_drain_ends_when_the_start_that_asked_for_it_gives_up(tmp_path):
    """The drain is lifted when the start that needed the room gives up (evict_wait) while the
    drained engine is still busy: else the drained model would make every later request wait."""
    gpu = {"simulate_mib": [10_000], "reserve_mib": 0}
    slow = fake("--vram-mib", "6000", "--tokens-per-s", "10", vram_mib=6000)
    other = fake("--vram-mib", "6000", vram_mib=6000)

    async def run() -> None:
        async with driver(
            tmp_path,
            {"a": slow, "b": other},
            gpus={**gpu, "drain_after": 0},
            defaults={"evict_wait": 1},
        ) as s:
            busy = asyncio.create_task(ask(s, "a", tokens=30))  # 3 s: longer than evict_wait
            assert await until(lambda: s.instances["a"].in_flight == 1)
            b = asyncio.create_task(ask(s, "b"))
            assert await until(lambda: s.instances["a"].draining_for == "b")
            try:
                await asyncio.wait_for(b, 5)
            except Exception as exc:
                assert type(exc).__name__ == "GatewayBusy", exc
            else:
                raise AssertionError("b started while a was busy on the GPU it needed")
            assert s.instances["a"].draining_for is None
            assert await asyncio.wait_for(ask(s, "a"), 2) == "tok0 "  # served beside the busy one
            await busy

    asyncio.run(run())


def test_reload_that_restores_a_busy_models_definition_ends_its_drain(tmp_path):
    """Reproduced: a reload changed a busy model (drain for reload), a second reload restored
    its definition; the drain stayed for ever and every later request waited (ttl 0)."""
    models = {"a": fake("--tokens-per-s", "20", ttl=0)}
    changed = {"a": fake("--tokens-per-s", "20", ttl=0, env={"GEN": "2"})}

    async def run() -> None:
        async with driver(tmp_path, models) as s:
            busy = asyncio.create_task(ask(s, "a", tokens=10))
            assert await until(lambda: s.instances["a"].in_flight == 1)
            reconfigure.apply_settings(s, settings_for(tmp_path, changed))
            assert s.instances["a"].draining_for == "reload"
            reconfigure.apply_settings(s, settings_for(tmp_path, models))
            await busy
            assert await asyncio.wait_for(ask(s, "a"), 3) == "tok0 "
            assert s.instances["a"].starts == 1  # the same engine: nothing changed in the end

    asyncio.run(run())


def test_a_request_waiting_for_a_model_a_reload_removes_gets_404_and_starts_nothing(tmp_path):
    """A request that waited while its model drained for removal must not start an engine of
    a forgotten model (one nobody would ever stop)."""

    async def run() -> None:
        async with driver(tmp_path, {"a": fake("--tokens-per-s", "20"), "b": fake()}) as s:
            busy = asyncio.create_task(ask(s, "a", tokens=10))
            assert await until(lambda: s.instances["a"].in_flight == 1)
            reconfigure.apply_settings(s, settings_for(tmp_path, {"b": fake()}))
            waiting = asyncio.create_task(ask(s, "a"))
            await busy
            try:
                await asyncio.wait_for(waiting, 5)
            except Exception as exc:
                assert type(exc).__name__ == "ModelNotFound", exc
            else:
                raise AssertionError("served by a removed model")
            assert "a" not in s.instances

    asyncio.run(run())


SLEEPY = ("--vram-mib", "3000", "--sleep-vram-mib", "100")


def test_unload_during_a_sleep_ends_with_the_engine_gone(tmp_path):
    """Reproduced: an unload that came while the model was being put to sleep answered after
    the sleep and left it `sleeping`, its process alive and its host RAM held."""
    gpu = {"simulate_mib": [10_000], "reserve_mib": 0}
    model = fake(*SLEEPY, "--sleep-s", "1", vram_mib=3000, sleep=1)

    async def run() -> None:
        async with driver(tmp_path, {"a": model}, gpus=gpu, host_ram_mib=4096) as s:
            await ask(s, "a")
            handle = s.instances["a"].handle
            assert handle is not None
            s.sleep("a", "sleep_after")
            await asyncio.sleep(0.3)
            await asyncio.wait_for(s.unload("a"), 10)
            assert s.instances["a"].state is State.STOPPED
            assert handle.returncode is not None and s.instances["a"].handle is None

    asyncio.run(run())


def test_sleeps_and_wakes_keep_one_exit_watcher_per_engine(tmp_path):
    """Reproduced: every wake added another exit watcher on the same engine."""
    gpu = {"simulate_mib": [10_000], "reserve_mib": 0}
    model = fake(*SLEEPY, vram_mib=3000, sleep=1)

    def watchers() -> int:
        names = (t.get_coro().__qualname__ for t in asyncio.all_tasks())  # type: ignore[union-attr]
        return sum(name == "Lifecycle.watch_exit" for name in names)

    async def run() -> None:
        async with driver(tmp_path, {"a": model}, gpus=gpu, host_ram_mib=4096) as s:
            for _ in range(4):
                await ask(s, "a")
                await s.sleep("a", "sleep_after")
                assert s.instances["a"].state is State.SLEEPING
            await ask(s, "a")
            assert s.instances["a"].wakes == 4 and s.instances["a"].starts == 1
            assert watchers() == 1

    asyncio.run(run())


def test_a_failed_wake_says_so_without_the_engines_words(tmp_path):
    """Reproduced: up to 300 characters of the engine's answer went into sleep_failed and
    wake_failed events, which any key can read; engine output is for admins (its log)."""
    gpu = {"simulate_mib": [10_000], "reserve_mib": 0}
    wakeless = fake(*SLEEPY, "--wake-fails", vram_mib=3000, sleep=1)
    sleepless = fake(*SLEEPY, "--sleep-fails", vram_mib=3000, sleep=1)

    async def run() -> None:
        async with driver(
            tmp_path, {"a": wakeless, "b": sleepless}, gpus=gpu, host_ram_mib=4096
        ) as s:
            for name in ("a", "b"):
                await ask(s, name)
                await s.sleep(name, "sleep_after")
                assert await asyncio.wait_for(ask(s, name), 10) == "tok0 "
            events = [e for e in s.events.recent if e["kind"] in ("sleep_failed", "wake_failed")]
            assert {e["kind"] for e in events} == {"sleep_failed", "wake_failed"}, events
            assert not any("engine-internal" in e["message"] for e in events), events
            assert all("answered 500" in e["message"] for e in events), events

    asyncio.run(run())


def test_a_wake_waits_for_a_load_on_its_gpu(tmp_path):
    """Loads on one GPU go one at a time (vLLM's profiling breaks if memory moves under it):
    a wake, which brings its weights back, is one of them. Reproduced: a wake ran beside a
    load under way on the same GPU (issue 24, 14)."""
    gpu = {"simulate_mib": [20_000], "reserve_mib": 0}
    sleepy = fake("--vram-mib", "6000", "--sleep-vram-mib", "100", vram_mib=6000, sleep=1)
    slow = fake("--vram-mib", "6000", "--load-delay", "2", vram_mib=6000)

    async def run() -> None:
        async with driver(tmp_path, {"a": sleepy, "b": slow}, gpus=gpu) as s:
            a, b = s.instances["a"], s.instances["b"]
            await ask(s, "a")
            await s.sleep("a", "admin")
            assert a.state is State.SLEEPING
            loading = asyncio.create_task(ask(s, "b"))
            assert await until(lambda: b.handle is not None)  # b's load is under way
            waking = asyncio.create_task(ask(s, "a"))
            assert await until(lambda: a.state is State.READY, 15)
            assert b.state is State.READY, "a woke while b loaded on the same GPU"
            await asyncio.gather(loading, waking)

    asyncio.run(run())
