"""Placement policies replayed on one trace: vramgate's, count-based LRU, one model at a time.

    python bench/placement.py [--requests 3000] [--seed 1] [--out bench/results/placement.json]

A simulated GPU holds about half of 8 models of mixed sizes; requests pick a model by a Zipf law
(popularity unrelated to size) and arrive as a Poisson process; loading takes time proportional
to size, one load at a time; an engine serving a request is busy and cannot be stopped. The
vramgate policies are the scheduler's own pure function (`vramgate.scheduling.placement.place`);
the others are what llama.cpp's router and LocalAI do (keep the last K models) and llama-swap's
default group (one model at a time). A count-based policy that loads past the GPU's memory is an
OOM: the load fails, it evicts until the model fits and loads again.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from vramgate.gpu.base import GpuMemory
from vramgate.scheduling.placement import place
from vramgate.scheduling.snapshot import ModelSnap, State, cost_weight

SIZES_MIB = [2000, 3000, 4000, 5000, 6000, 7000, 8000, 10_000]
# Seconds per GiB to load, by model: engines differ (llama.cpp from the page cache against vLLM's
# compile and warm-up): three of the eight load five times slower for their size.
LOAD_FACTORS = [1, 5, 1, 1, 5, 1, 5, 1]
TOTAL_MIB, RESERVE_MIB = 24_000, 512


@dataclass
class Engine:
    size_mib: int
    ready_at: float
    busy_until: float
    last_used: float


def load_s(name: str, load_s_per_gib: float) -> float:
    i = int(name[1:])
    return SIZES_MIB[i] / 1024 * load_s_per_gib * LOAD_FACTORS[i]


@dataclass
class Result:
    policy: str
    loads: int = 0
    evictions: int = 0
    ooms: int = 0
    load_s: float = 0.0
    waits_s: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, float | int | str]:
        waits = sorted(self.waits_s)
        return {
            "policy": self.policy,
            "loads": self.loads,
            "evictions": self.evictions,
            "ooms": self.ooms,
            "load_s": round(self.load_s, 1),
            "mean_wait_s": round(statistics.fmean(waits), 3),
            "p99_wait_s": round(waits[int(0.99 * (len(waits) - 1))], 3),
        }


# A policy answers: which idle engines to stop so that `name` may load now; None = wait for a
# busy engine to finish first.
Policy = Callable[[str, int, dict[str, Engine], float], list[str] | None]


def vramgate_policy(
    name: str, size: int, resident: dict[str, Engine], now: float
) -> list[str] | None:
    used = sum(e.size_mib for e in resident.values())
    gpu = GpuMemory(0, TOTAL_MIB, used, RESERVE_MIB)
    residents = [_snap(n, e, now) for n, e in resident.items()]
    decision = place(size, [gpu], residents, name)
    if decision.refuse:
        raise RuntimeError(decision.refuse)
    # Draining busy engines is waiting for them here: the simulation has no new requests to hold.
    return None if decision.wait or decision.drain else list(decision.evict)


def _snap(name: str, e: Engine, now: float, rank: float | None = None) -> ModelSnap:
    busy = int(e.busy_until > now)
    return ModelSnap(
        name, State.READY, in_flight=busy, last_used=e.last_used, gpus=(0,), held_mib=e.size_mib,
        rank=rank,
    )  # fmt: skip


class VramgateFrequency:
    """vramgate's placement with `gpus.eviction: frequency`: the same `place()`, residents ranked
    by GreedyDual-Size-Frequency priority (requests so far + the last evicted priority), as
    the scheduler computes it; with `load_s_per_gib`, `gpus.eviction: cost`: each request
    weighs what reloading the model costs per GiB it takes (instances.cost_weight)."""

    def __init__(self, load_s_per_gib: float | None = None) -> None:
        self.requests: dict[str, int] = {}
        self.priority: dict[str, float] = {}
        self.inflation = 0.0
        self.load_s_per_gib = load_s_per_gib

    def on_request(self, name: str) -> None:
        self.requests[name] = self.requests.get(name, 0) + 1
        weight = 1.0
        if self.load_s_per_gib is not None:
            weight = cost_weight(load_s(name, self.load_s_per_gib), SIZES_MIB[int(name[1:])])
        self.priority[name] = self.inflation + self.requests[name] * weight

    def __call__(
        self, name: str, size: int, resident: dict[str, Engine], now: float
    ) -> list[str] | None:
        used = sum(e.size_mib for e in resident.values())
        gpu = GpuMemory(0, TOTAL_MIB, used, RESERVE_MIB)
        residents = [_snap(n, e, now, self.priority.get(n, 0.0)) for n, e in resident.items()]
        decision = place(size, [gpu], residents, name)
        if decision.refuse:
            raise RuntimeError(decision.refuse)
        if decision.wait or decision.drain:
            return None
        for victim in decision.evict:
            self.inflation = max(self.inflation, self.priority.get(victim, 0.0))
        return list(decision.evict)


def count_lru_policy(keep: int) -> Policy:
    def policy(name: str, size: int, resident: dict[str, Engine], now: float) -> list[str] | None:
        if len(resident) < keep:
            return []
        idle = [n for n, e in resident.items() if e.busy_until <= now]
        return [min(idle, key=lambda n: resident[n].last_used)] if idle else None

    return policy


def farthest_next_use(trace: list[tuple[float, str]]) -> Policy:
    """Belady's offline rule, in bytes: evict the idle engines asked for again the latest.

    It knows the future, so no online policy can be expected to beat it by much: a reference
    for what the trace allows, not a policy anyone can run.
    """
    uses: dict[str, list[float]] = {}
    for arrival, name in trace:
        uses.setdefault(name, []).append(arrival)

    def next_use(name: str, now: float) -> float:
        later = [t for t in uses.get(name, []) if t > now]
        return later[0] if later else float("inf")

    def policy(name: str, size: int, resident: dict[str, Engine], now: float) -> list[str] | None:
        free = TOTAL_MIB - RESERVE_MIB - sum(e.size_mib for e in resident.values())
        idle = sorted(
            (n for n, e in resident.items() if e.busy_until <= now),
            key=lambda n: next_use(n, now),
            reverse=True,
        )
        evict: list[str] = []
        for victim in idle:
            if free >= size:
                break
            evict.append(victim)
            free += resident[victim].size_mib
        return evict if free >= size else None

    return policy


def one_at_a_time(
    name: str, size: int, resident: dict[str, Engine], now: float
) -> list[str] | None:
    if any(e.busy_until > now for e in resident.values()):
        return None
    return list(resident)


def replay(
    policy_name: str, policy: Policy, trace, service_s: float, load_s_per_gib: float
) -> Result:
    result = Result(policy_name)
    resident: dict[str, Engine] = {}
    gpu_free_at = 0.0  # loads go one at a time
    on_request = getattr(policy, "on_request", None)
    for arrival, name in trace:
        size = SIZES_MIB[int(name[1:])]
        now = arrival
        if on_request is not None:
            on_request(name)
        while name not in resident:
            evict = policy(name, size, resident, now)
            if evict is None:  # wait for the first busy engine to finish, then decide again
                now = min(e.busy_until for e in resident.values() if e.busy_until > now)
                continue
            for victim in evict:
                del resident[victim]
                result.evictions += 1
            start = max(now, gpu_free_at)
            loading = load_s(name, load_s_per_gib)
            result.loads += 1
            result.load_s += loading
            if sum(e.size_mib for e in resident.values()) + size + RESERVE_MIB > TOTAL_MIB:
                # Out of memory: the load fails midway; stop the least recently used idle
                # engines until it fits, then load again.
                result.ooms += 1
                now = start + loading / 2
                gpu_free_at = now
                while sum(e.size_mib for e in resident.values()) + size + RESERVE_MIB > TOTAL_MIB:
                    idle = [n for n, e in resident.items() if e.busy_until <= now]
                    if not idle:
                        now = min(e.busy_until for e in resident.values())
                        continue
                    del resident[min(idle, key=lambda n: resident[n].last_used)]
                    result.evictions += 1
                continue
            gpu_free_at = start + loading
            resident[name] = Engine(size, gpu_free_at, gpu_free_at, gpu_free_at)
        engine = resident[name]
        begin = max(now, engine.ready_at)
        result.waits_s.append(begin - arrival)
        engine.busy_until = max(engine.busy_until, begin + service_s)
        engine.last_used = engine.busy_until
    return result


def make_trace(
    requests: int, rate_per_s: float, zipf_s: float, seed: int
) -> list[tuple[float, str]]:
    rng = random.Random(seed)
    names = [f"m{i}" for i in range(len(SIZES_MIB))]
    popularity = names[:]
    rng.shuffle(popularity)  # popularity unrelated to size
    weights = [1 / (rank + 1) ** zipf_s for rank in range(len(names))]
    t = 0.0
    trace = []
    for _ in range(requests):
        t += rng.expovariate(rate_per_s)
        trace.append((t, rng.choices(popularity, weights)[0]))
    return trace


def main() -> None:
    parser = argparse.ArgumentParser(description="Replay one trace against placement policies.")
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--rate", type=float, default=0.05, help="Requests per second.")
    parser.add_argument("--zipf", type=float, default=1.1)
    parser.add_argument("--service-s", type=float, default=2.0, help="Seconds a request is served.")
    parser.add_argument("--load-s-per-gib", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--out", type=Path, default=Path("bench/results/placement.json"))
    args = parser.parse_args()
    trace = make_trace(args.requests, args.rate, args.zipf, args.seed)
    policies: dict[str, Policy] = {
        "vramgate (bytes, LRU)": vramgate_policy,
        "vramgate (bytes, frequency)": VramgateFrequency(),
        "vramgate (bytes, cost)": VramgateFrequency(args.load_s_per_gib),
        # keep 2 is the largest K with which the two biggest models never overfill the GPU.
        "count LRU, keep 2": count_lru_policy(2),
        "count LRU, keep 3": count_lru_policy(3),
        "count LRU, keep 4": count_lru_policy(4),
        "one at a time": one_at_a_time,
        "offline optimum (Belady)": farthest_next_use(trace),
    }
    rows = [
        replay(name, policy, trace, args.service_s, args.load_s_per_gib).summary()
        for name, policy in policies.items()
    ]
    gpu = f"a {TOTAL_MIB} MiB GPU ({RESERVE_MIB} reserved)"
    print(f"{len(SIZES_MIB)} models {SIZES_MIB} MiB on {gpu}; {args.requests} requests, "
          f"Zipf {args.zipf}, {args.rate}/s, seed {args.seed}")  # fmt: skip
    header = ("policy", "loads", "evictions", "OOMs", "load s", "mean wait s", "p99 wait s")
    print("{:28} {:>6} {:>9} {:>5} {:>8} {:>11} {:>10}".format(*header))
    for r in rows:
        print(f"{r['policy']:28} {r['loads']:>6} {r['evictions']:>9} {r['ooms']:>5} "
              f"{r['load_s']:>8.0f} {r['mean_wait_s']:>11.3f} "
              f"{r['p99_wait_s']:>10.3f}")  # fmt: skip
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({"settings": vars(args) | {"out": str(args.out)}, "results": rows}, indent=2)
    )
    print(f"\nsaved {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
