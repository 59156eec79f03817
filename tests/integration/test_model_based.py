"""A model-based test of the scheduler: a seeded random walk of requests (plain, streamed,
queued, hung up) and faults (unloads, reloads that change, revert, remove and add back, crashes,
sleeps, out-of-memory starts, the count limit) against the real driver with fake engines on a
simulated GPU, checking after every step the invariants the README promises:

- no request waits past its bound;
- no busy engine is stopped or put to sleep (but by an admin unload or its own death);
- `in_flight` and `queued` match what is really open;
- GPU accounting matches what the engines report, and no engine runs untracked;
- every model answers again once the faults stop.

A failure prints its seed and step; `VRAMGATE_MBT_SEED=S VRAMGATE_MBT_STEPS=N pytest -k
model_based` replays it (and runs longer walks by hand).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness import driver, fake, settings_for
from vramgate import reconfigure
from vramgate.scheduling.driver import Scheduler
from vramgate.scheduling.snapshot import State

# How a request may end: served, hung up, a clean refusal, or (the walk relays to engines itself)
# a client error from an engine the walk killed. Not: an assertion or a wait cut by max_wait,
# which in this setup only a lost wake-up would reach.
ALLOWED = (
    "ok", "cancelled", "QueueFull", "Unloaded", "EngineStartFailed", "EngineOutOfMemory",
    "ModelNotFound", "GatewayBusy: cannot start", "Client", "ServerDisconnected",
)  # fmt: skip
STEPS = int(os.environ.get("VRAMGATE_MBT_STEPS", "2000"))
SEED = int(os.environ.get("VRAMGATE_MBT_SEED", "20261201"))
MAX_WAIT_S = 12.0
GPU = {"simulate_mib": [10_000], "reserve_mib": 0}
SLEEPY = ("--sleep-vram-mib", "100")


def models(run: str, generation: dict[str, int], removed: frozenset[str]) -> dict[str, Any]:
    """Five models of 3000 MiB on 10000: three fit. m3 and m4 sleep; m2 takes one request at a
    time; oom claims 3000 and takes 4500 (an out-of-memory start, retried alone)."""

    def one(name: str, *knobs: str, **extra: Any) -> dict[str, Any]:
        cmd_knobs = ("--name", f"{run}-{name}", "--tokens-per-s", "400", *knobs)
        env = {"GEN": str(generation.get(name, 0))}
        return fake(*cmd_knobs, vram_mib=3000, env=env, **extra)

    every = {
        "m0": one("m0", "--vram-mib", "3000"),
        "m1": one("m1", "--vram-mib", "3000", max_concurrency=3),
        "m2": one("m2", "--vram-mib", "3000", max_concurrency=1, max_queue=4),
        "m3": one("m3", "--vram-mib", "3000", *SLEEPY, sleep=1),
        "m4": one("m4", "--vram-mib", "3000", *SLEEPY, sleep=1, max_concurrency=2),
        "oom": one("oom", "--vram-mib", "4500"),
    }
    return {name: m for name, m in every.items() if name not in removed}


def settings_args() -> dict[str, Any]:
    return {
        "gpus": GPU,
        "max_running": 4,
        "host_ram_mib": 4096,
        "defaults": {
            "evict_wait": 4,
            "max_wait": MAX_WAIT_S,
            "stop_timeout": 1,
            "read_timeout": 10,
            "health_interval": 0,
        },
    }


@dataclass
class Asked:
    """One request of the walk."""

    model: str
    began: float
    task: asyncio.Task[str]
    holding: bool = False  # its lease is held (it relays)
    hangup_at: float | None = None


@dataclass
class Walk:
    scheduler: Scheduler
    rng: random.Random
    run: str
    tmp: Path
    asked: list[Asked] = field(default_factory=list)
    unloading: dict[str, asyncio.Task[None]] = field(default_factory=dict)
    killed: set[str] = field(default_factory=set)  # engines killed, not yet seen gone
    generation: dict[str, int] = field(default_factory=dict)
    removed: frozenset[str] = frozenset()
    did: list[str] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    events: list[str] = field(default_factory=list)  # what the scheduler said, for a failure
    outcomes: dict[str, int] = field(default_factory=dict)

    # -- actions ---------------------------------------------------------------------------

    async def request(self, name: str) -> str:
        s = self.scheduler
        me = next(a for a in self.asked if a.task is asyncio.current_task())
        async with s.lease(name) as lease:
            me.holding = True
            try:
                tokens = self.rng.randint(1, 12)
                body = {"model": name, "prompt": "x", "max_tokens": tokens}
                if self.rng.random() < 0.4:
                    body["stream"] = True
                assert s.http is not None
                async with s.http.post(lease.url + "/v1/completions", json=body) as resp:
                    text = await resp.read()
                    return "ok" if resp.status == 200 and b"tok0" in text else f"{resp.status}"
            finally:
                me.holding = False

    def ask(self, name: str) -> None:
        now = time.monotonic()
        asked = Asked(name, now, asyncio.ensure_future(self._outcome(name)))
        if self.rng.random() < 0.1:
            asked.hangup_at = now + self.rng.uniform(0, 0.3)
        self.asked.append(asked)

    async def _outcome(self, name: str) -> str:
        await asyncio.sleep(0)  # registered in `asked` before it runs
        try:
            return await self.request(name)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            if isinstance(exc, AssertionError):  # ours: where it failed
                import traceback

                return "AssertionError at " + traceback.format_exc().splitlines()[-3].strip()
            return f"{type(exc).__name__}: {str(exc)[:70]}"

    def step(self) -> None:
        s, rng = self.scheduler, self.rng
        names = [n for n in s.instances if n not in self.removed]
        roll = rng.random()
        if roll < 0.66:
            name = rng.choice(names)
            for _ in range(rng.choice((1, 1, 1, 3, 6))):
                self.ask(name)
            self.did.append(f"ask {name}")
        elif roll < 0.71:
            name = rng.choice(names)
            if name not in self.unloading:
                self.unloading[name] = asyncio.ensure_future(s.unload(name))
                self.did.append(f"unload {name}")
        elif roll < 0.74:
            running = [
                n for n, i in s.instances.items() if i.handle and i.handle.returncode is None
            ]
            if running:
                name = rng.choice(running)
                handle = s.instances[name].handle
                assert handle is not None and handle.pid is not None
                with contextlib.suppress(ProcessLookupError):
                    os.kill(handle.pid, signal.SIGKILL)
                self.killed.add(name)
                self.did.append(f"kill {name}")
        elif roll < 0.86:
            idle = [
                n
                for n, i in s.instances.items()
                if i.state is State.READY and i.is_idle and i.model.sleep
            ]
            if idle:
                name = rng.choice(idle)
                s.sleep(name, "sleep_after")
                self.did.append(f"sleep {name}")
        elif roll < 0.90:
            self.reload()
        # else: time passes only

    def reload(self) -> None:
        kind = self.rng.choice(("change", "revert", "remove", "restore"))
        name = self.rng.choice(("m0", "m1", "m3", "oom"))
        if kind == "change":
            self.generation[name] = self.generation.get(name, 0) + 1
        elif kind == "revert":
            self.generation[name] = 0
        elif kind == "remove":
            self.removed = self.removed | {name}
        else:
            self.removed = self.removed - {name}
        config = models(self.run, self.generation, self.removed)
        new = settings_for(self.tmp, config, **settings_args())
        reconfigure.apply_settings(self.scheduler, new)
        self.did.append(f"reload: {kind} {name}")

    # -- invariants ------------------------------------------------------------------------

    def on_event(self, event: dict[str, Any]) -> None:
        """No busy engine is stopped or slept: checked the moment it starts to go."""
        self.events.append(f"{event.get('model')}: {event.get('message')}")
        if event.get("kind") != "state" or event.get("state") != "stopping":
            return
        if event.get("previous") != "ready":
            return
        inst = self.scheduler.instances.get(event["model"])
        if inst is None or inst.in_flight == 0:
            return
        why = inst.leaving
        if why in ("admin", "died", "hung", "shutdown") or event["model"] in self.killed:
            return
        self.violations.append(f"{event['model']} went ({why}) with {inst.in_flight} in flight")

    def check(self) -> None:
        s = self.scheduler
        now = time.monotonic()
        bound = MAX_WAIT_S + 10  # its wait, then its answer (at most 12 tokens) and a stop
        for asked in self.asked:
            if not asked.task.done() and now - asked.began > bound:
                self.violations.append(
                    f"a request for {asked.model} open {now - asked.began:.0f} s"
                )
        for name, inst in s.instances.items():
            mine = [a for a in self.asked if a.model == name and not a.task.done()]
            holding = sum(a.holding for a in mine)
            if not holding <= inst.in_flight <= len(mine):
                self.violations.append(
                    f"{name}: in_flight {inst.in_flight}, {holding} holding, {len(mine)} open"
                )
            if len(inst.slot_waiters) > len(mine) - holding:
                self.violations.append(f"{name}: {len(inst.slot_waiters)} queued, {len(mine)} open")
            if inst.state is State.READY and (inst.handle is None or not inst.gpus):
                self.violations.append(f"{name}: ready with no engine or no GPU memory counted")
            if inst.state in (State.STOPPED, State.FAILED) and (inst.handle or inst.gpus):
                self.violations.append(
                    f"{name}: {inst.state.value} but holds an engine ({inst.handle}) or GPU "
                    f"({inst.gpus}); leaving {inst.leaving}, asleep {inst.asleep}"
                )
        # Every engine's reported use is counted on the GPUs it runs on, and nothing else is
        # (the simulated backend sums the reports of the engines attached to each GPU).
        attached = dict(s.memory.gpus._on_gpus)  # type: ignore[attr-defined]
        mine = {n: i.gpus for n, i in s.instances.items() if i.gpus}
        if attached != mine:
            self.violations.append(f"GPU accounting {attached}, models hold {mine}")

    def forget_done(self) -> None:
        keep = []
        for asked in self.asked:
            if asked.task.done():
                result = "cancelled" if asked.task.cancelled() else asked.task.result()
                self.outcomes[result] = self.outcomes.get(result, 0) + 1
                if not result.startswith(ALLOWED):
                    self.violations.append(f"a request for {asked.model} ended with {result}")
            else:
                keep.append(asked)
                if asked.hangup_at is not None and time.monotonic() >= asked.hangup_at:
                    asked.task.cancel()
        self.asked = keep
        for name, task in list(self.unloading.items()):
            if task.done():
                del self.unloading[name]
        for name in list(self.killed):
            inst = self.scheduler.instances.get(name)
            if inst is None or inst.state in (State.STOPPED, State.FAILED, State.STARTING):
                self.killed.discard(name)

    async def settle(self) -> None:
        """Every request and stop done (bounded), then the strict checks: nothing counted that
        is not there, and every engine process of this run is some model's engine."""
        pending = [a.task for a in self.asked] + list(self.unloading.values())
        if pending:
            await asyncio.wait(pending, timeout=MAX_WAIT_S + 15)
        self.forget_done()
        if self.asked:
            self.violations.append(f"{len(self.asked)} requests still open after settling")
        s = self.scheduler
        for _ in range(100):
            if all(i.state not in (State.STARTING, State.STOPPING) for i in s.instances.values()):
                break
            await asyncio.sleep(0.05)
        for name, inst in s.instances.items():
            if inst.in_flight or inst.slot_waiters or inst.joining:
                self.violations.append(
                    f"{name}: settled with in_flight {inst.in_flight}, queued "
                    f"{len(inst.slot_waiters)}, joining {inst.joining}"
                )
        tracked = {i.handle.pid for i in s.instances.values() if i.handle and i.handle.pid}
        running = engine_pids(self.run)
        if running - tracked:
            self.violations.append(f"untracked engines: {running - tracked} (tracked {tracked})")


def engine_pids(run: str) -> set[int]:
    """Live fake engine processes of this run (their --name says so)."""
    found = set()
    marker = f"{run}-".encode()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes()
            state = (entry / "stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            continue
        if b"vramgate.testing.fake_engine" in cmdline and marker in cmdline and state != "Z":
            found.add(int(entry.name))
    return found


async def walk(tmp: Path, seed: int, steps: int) -> Walk:
    run = f"mbt{seed}-{os.getpid()}"
    config = models(run, {}, frozenset())
    async with driver(tmp, config, **settings_args()) as s:
        w = Walk(s, random.Random(seed), run, tmp)
        s.events.hooks.append(w.on_event)
        try:
            for i in range(steps):
                w.step()
                await asyncio.sleep(w.rng.choice((0, 0, 0.005, 0.01, 0.02, 0.1)))
                w.forget_done()
                w.check()
                if i % 250 == 249:
                    await w.settle()
                if w.violations:
                    said = "\n  ".join(w.events[-25:])
                    raise AssertionError(
                        f"step {i}: {w.violations[:5]}; last: {w.did[-12:]}; events:\n  {said}"
                    )
            # Faults over: every model answers again.
            await w.settle()
            for name in list(s.instances):
                w.ask(name)
            final = {a.model: a.task for a in w.asked}
            await w.settle()
            for name, task in final.items():
                if task.cancelled() or task.result() != "ok":
                    w.violations.append(f"{name} did not answer after the faults: {task}")
            if w.violations:
                raise AssertionError(f"at the end: {w.violations[:5]}; last: {w.did[-12:]}")
            failed = {k: v for k, v in w.outcomes.items() if k not in ("ok", "cancelled")}
            print(f"model-based walk (seed {seed}, {steps} steps): {w.outcomes}; {failed}")
        except AssertionError as exc:
            raise AssertionError(
                f"seed {seed}: {exc}\nreplay: VRAMGATE_MBT_SEED={seed} VRAMGATE_MBT_STEPS={steps} "
                "pytest tests/integration/test_model_based.py"
            ) from None
    return w


def test_model_based_random_walk_keeps_every_invariant(tmp_path):
    w = asyncio.run(walk(tmp_path, SEED, STEPS))
    # The walk did what it is for: requests served, and each kind of fault happened.
    assert w.outcomes.get("ok", 0) > STEPS / 4, w.outcomes
    kinds = {d.split()[0] for d in w.did}
    assert {"ask", "unload", "kill", "sleep", "reload:"} <= kinds, kinds
    assert not engine_pids(w.run), "engines outlived the scheduler"
