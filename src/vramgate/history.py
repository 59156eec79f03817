"""Each device's memory over the last hour, by model (the status page draws it stacked): a sample
every SAMPLE_S and at every start, stop and sleep, with those moments marked. GPUs as the GPU
backend reports them (other programs' use apart), the host's RAM as the scheduler places it."""

from __future__ import annotations

import time
from collections import deque
from typing import Any

from vramgate.scheduling.driver import Scheduler
from vramgate.scheduling.snapshot import State

SAMPLE_S = 5.0
KEEP_S = 3600.0
MARKED = {"ready": "start", "stop": "stop", "sleep": "sleep", "wake": "wake", "died": "stop"}


class MemoryHistory:
    def __init__(self, scheduler: Scheduler) -> None:
        self.scheduler = scheduler
        self.samples: deque[dict[str, Any]] = deque()
        self.marks: deque[dict[str, Any]] = deque()
        self.last = 0.0

    def event(self, event: dict[str, Any]) -> None:
        """An events hook: starts, stops, sleeps and wakes are marked and sampled at once."""
        kind = MARKED.get(event.get("kind", ""))
        if kind is None:
            return
        self.marks.append({"t": event["time"], "kind": kind, "model": event.get("model", "")})
        self.sample()

    def tick(self) -> None:
        if time.time() - self.last >= SAMPLE_S:
            self.sample()

    def sample(self) -> None:
        now = time.time()
        self.last = now
        scheduler = self.scheduler
        memory = scheduler.memory
        devices: dict[str, dict[str, int]] = {}
        for gpu in memory.memory():
            devices[f"gpu{gpu.index}"] = {"others": gpu.others_mib}
        host: dict[str, int] = {}
        for name, inst in scheduler.instances.items():
            for gpu in inst.gpus:
                used = memory.used_now(inst) or memory.footprint(inst)[0] or 0
                devices.setdefault(f"gpu{gpu}", {})[name] = used // max(len(inst.gpus), 1)
            held = (inst.host_mib or 0) if inst.state is State.SLEEPING else 0
            if inst.is_running and inst.state is not State.SLEEPING:
                held = memory.ram(inst)[0] or 0
            if held:
                host[name] = held
        devices["host"] = host
        self.samples.append({"t": now, "devices": devices})
        while self.samples and self.samples[0]["t"] < now - KEEP_S:
            self.samples.popleft()
        while self.marks and self.marks[0]["t"] < now - KEEP_S:
            self.marks.popleft()

    def report(self) -> dict[str, Any]:
        memory = self.scheduler.memory
        devices = [
            {"id": f"gpu{g.index}", "label": f"GPU {g.index}", "total_mib": g.total_mib}
            for g in memory.memory()
        ]
        devices.append({"id": "host", "label": "Host RAM", "total_mib": memory.host_budget_mib})
        return {
            "now": time.time(),
            "window_s": KEEP_S,
            "devices": devices,
            "samples": list(self.samples),
            "marks": list(self.marks),
        }
