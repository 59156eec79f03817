"""The snapshot of a cluster's host RAM: each node's budget in every decision (housekeeping
too), and a start counted on its node from the moment its room is granted."""

from __future__ import annotations

from pathlib import Path

from vramgate.config import Settings
from vramgate.engines import adapters
from vramgate.gpu.cluster import ClusterGpus
from vramgate.instances import Instance
from vramgate.memory import Memory, footprint_store
from vramgate.runtimes.ray_cluster import Cluster, Node
from vramgate.scheduling.decide import Room, Tick, decide
from vramgate.scheduling.snapshot import State
from vramgate.scheduling.steps import Start, Stop
from vramgate.scheduling.view import snapshot

# ttl 0: the clock (time.monotonic, the machine's uptime) must not stop them by TTL.
SLEEPER = {"engine": "command", "cmd": "true ${PORT}", "sleep": 1, "gpus": 1, "ttl": 0}
CPU = {"engine": "command", "cmd": "true ${PORT}", "device": "cpu", "ram_mib": 700}


def cluster_world(tmp_path: Path, models: dict) -> tuple[Settings, Memory, dict[str, Instance]]:
    """Two nodes without GPUs, a and b, each with 1000 MiB of RAM for our engines (the
    gateway's own machine has another budget: host_ram_mib is unset)."""
    settings = Settings.model_validate(
        {
            "state_dir": str(tmp_path),
            "cluster": {"ray": {"address": "127.0.0.1:1"}},
            "models": models,
        }
    )
    assert settings.cluster.ray is not None
    cluster = Cluster(settings.cluster.ray, "gw")
    for number, name in enumerate(("a", "b")):
        cluster.nodes[name] = Node(
            name, name, "127.0.0.1", None, [], 0, "none", number, host_budget_mib=1000,
            reading={"host_available_mib": 1000 + 256},
        )  # fmt: skip
    memory = Memory(settings, ClusterGpus(cluster, 0), footprint_store(settings))
    memory.host.budget_mib = 1000  # the gateway machine's: below the two nodes' sum
    insts = {name: Instance(name, model) for name, model in settings.models.items()}
    return settings, memory, insts


def test_housekeeping_counts_each_sleeper_against_its_own_nodes_ram(tmp_path: Path):
    """700 MiB asleep on a and 700 on b: each fits its node's 1000, so none is stopped, though
    together they exceed a single 1000 MiB budget (issue 24, defect 6)."""
    settings, memory, insts = cluster_world(tmp_path, {"x": SLEEPER, "y": SLEEPER})
    for inst, node in ((insts["x"], "a"), (insts["y"], "b")):
        inst._state, inst.asleep, inst.host_mib, inst.placed_on = State.SLEEPING, True, 700, node
    snap = snapshot(insts.values(), settings, memory, adapters(settings), with_memory=False)
    assert decide(snap, Tick()) == []
    insts["y"].placed_on = "a"  # both on a: 1400 there, the least recently used goes
    insts["x"].last_used = 1.0
    snap = snapshot(insts.values(), settings, memory, adapters(settings), with_memory=False)
    assert decide(snap, Tick()) == [Stop("y", "host_ram", "host RAM over 1000 MiB")]


def test_a_start_holds_its_nodes_ram_from_the_moment_its_room_is_granted(tmp_path: Path):
    """Two CPU engines of 700 MiB asked at once: the first is granted node a's RAM and is
    still spawning (no handle yet); the second goes to b, not on top of it (defect 7)."""
    settings, memory, insts = cluster_world(tmp_path, {"p": CPU, "q": CPU})
    first = insts["p"]
    first._state, first.admitted, first.placed_on = State.STARTING, True, "a"
    snap = snapshot(insts.values(), settings, memory, adapters(settings), with_memory=True)
    assert snap.models["p"].node == "a" and snap.host_used_on("a") == 700
    assert decide(snap, Room("q")) == [Start((), "", "b")]
