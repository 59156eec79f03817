"""The hot path's view of a request (`request_snap` + `decide_request`) decides as the whole
snapshot does, in every state a model can be in when a request arrives."""

from __future__ import annotations

import asyncio
import itertools
from pathlib import Path

from vramgate.config import Settings
from vramgate.engines import adapters
from vramgate.gpu.simulated import SimulatedGpus
from vramgate.instances import Instance
from vramgate.memory import Memory, footprint_store
from vramgate.scheduling.decide import Request, decide, decide_request
from vramgate.scheduling.snapshot import Pending, State
from vramgate.scheduling.view import request_snap, snapshot


def test_request_snap_decides_as_the_whole_snapshot(tmp_path: Path):
    settings = Settings.model_validate(
        {
            "state_dir": str(tmp_path),
            "defaults": {"max_queue": 3},
            "models": {
                "m": {"engine": "command", "cmd": "true ${PORT}", "max_concurrency": 2},
                "q": {"engine": "command", "cmd": "true ${PORT}", "max_queue": 1},
            },
        }
    )
    memory = Memory(settings, SimulatedGpus([8000], 0, tmp_path), footprint_store(settings))
    engines = adapters(settings)
    loop = asyncio.new_event_loop()
    seen = set()
    cases = itertools.product(
        ("m", "q"), State, (0, 1, 2), (0, 1, 3), (None, Pending.CHANGED), (None, "other")
    )
    for name, state, in_flight, queued, pending, draining in cases:
        inst = Instance(name, settings.models[name])
        inst._state = state
        inst.in_flight = in_flight
        inst.slot_waiters.extend(loop.create_future() for _ in range(queued))
        inst.pending, inst.draining_for = pending, draining
        whole = decide(
            snapshot([inst], settings, memory, engines, with_memory=False), Request(name)
        )
        fast = decide_request(request_snap(inst, settings))
        assert [fast] == whole or (repr(fast) == repr(whole[0])), (name, state, in_flight, queued)
        seen.add(type(fast).__name__)
    loop.close()
    assert seen >= {"Serve", "Queue", "Refuse", "Begin", "Join", "Wait"}
