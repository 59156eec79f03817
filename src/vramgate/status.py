"""What the gateway reports about itself (GET /gateway/status, the page, metrics' gauges)."""

from __future__ import annotations

from typing import Any

from vramgate.scheduling.driver import Scheduler
from vramgate.scheduling.snapshot import State
from vramgate.scheduling.view import ttl_of


def gateway_status(scheduler: Scheduler) -> dict[str, Any]:
    memory, settings = scheduler.memory, scheduler.settings
    return {
        "gpus": memory.status(),
        "models": [
            i.status(ttl_of(i, settings))
            | memory.model_status(i)
            | {"runtime": settings.runtime_of(i.model)}
            for i in scheduler.instances.values()
        ],
        "host_ram": {
            "budget_mib": memory.host_budget_mib,
            "sleeping_mib": sum(
                i.host_mib or 0 for i in scheduler.instances.values() if i.state is State.SLEEPING
            ),
        },
        "max_running": settings.max_running,
        "runtime": scheduler.runtime.kind,
        "events": [e for e in scheduler.events.recent if e["kind"] != "state"][-50:],
    }
