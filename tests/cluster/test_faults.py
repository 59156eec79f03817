"""Faults on a real Ray cluster of this machine: a node killed mid-stream (SIGKILL to its Ray
processes), a node that joins while the gateway runs, a gateway killed (SIGKILL) and started
again. Nothing hangs, no engine outlives its node or its gateway, every model answers again."""

from __future__ import annotations

import signal
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from tests.cluster.conftest import ask, engine, ray_config
from tests.conftest import pid_alive, wait_until
from vramgate.filenames import file_stem


@pytest.fixture(scope="module")
def cluster(make_cluster):
    return make_cluster({"gpu-a": "10000", "gpu-b": "10000"})


def live_gpus(gw) -> set[str]:
    return {g["node"] for g in gw.status()["gpus"]}


def test_a_node_killed_mid_stream_ends_its_requests_and_its_models_move(gateway, cluster):
    models = {"m": engine(6000, "--tokens-per-s", "20"), "n": engine(6000)}
    gw = gateway(ray_config(cluster, models))
    assert wait_until(lambda: live_gpus(gw) == {"gpu-a", "gpu-b"}, 20)
    ask(gw, "m")
    ask(gw, "n")
    doomed = gw.model("m")["node"]
    pid = gw.model("m")["pid"]
    result: dict = {}

    def stream() -> None:
        got = []
        try:
            chunks = gw.client.completions.create(model="m", prompt="x", max_tokens=400,
                                                  stream=True)  # fmt: skip
            for chunk in chunks:
                got.append(chunk)
            result["ended"] = "complete"
        except Exception as exc:  # the stream is cut, as a dead engine's is
            result["ended"] = repr(exc)
        result["chunks"] = len(got)
        result["at"] = time.monotonic()

    worker = threading.Thread(target=stream)
    worker.start()
    assert wait_until(lambda: gw.model("m")["in_flight"] == 1, 10)
    time.sleep(0.5)
    killed_at = time.monotonic()
    cluster.kill(doomed)
    worker.join(20)
    assert not worker.is_alive(), "the stream hung after its node died"
    assert result["at"] - killed_at < 15, result
    assert result["chunks"] < 400  # it did not run to its end: it was cut
    assert wait_until(lambda: not pid_alive(pid), 15), "an engine outlived its node"
    assert wait_until(lambda: gw.model("m")["state"] == "stopped", 10), gw.model("m")
    nodes = {n["name"]: n for n in gw.status()["nodes"]}
    assert not nodes[doomed]["alive"] and nodes[doomed]["why_dead"]
    assert doomed not in live_gpus(gw)
    # The next request places it on the node that is left (the other model there makes way).
    assert ask(gw, "m") == "tok0 tok1 "
    assert gw.model("m")["node"] != doomed
    assert f"m went with node {doomed}" in gw.log()
    # The node comes back (same label, a new Ray node): its GPUs are used again, no restart.
    cluster.add(doomed, "10000")
    assert wait_until(lambda: doomed in live_gpus(gw), 20)
    for name in ("m", "n"):
        assert ask(gw, name) == "tok0 tok1 "
    assert {gw.model("m")["node"], gw.model("n")["node"]} == {"gpu-a", "gpu-b"}


def test_a_node_that_joins_while_the_gateway_runs_is_used(gateway, cluster):
    gw = gateway(ray_config(cluster, {"big": engine(14000)}))
    refused = gw.http.post("/v1/completions", json={"model": "big", "prompt": "x"})
    assert refused.status_code == 507  # no GPU of the cluster is that large (yet)
    cluster.add("gpu-big", "16000")
    assert wait_until(lambda: "gpu-big" in live_gpus(gw), 20)
    assert ask(gw, "big") == "tok0 tok1 "
    assert gw.model("big")["node"] == "gpu-big"


def test_a_killed_gateway_leaves_no_engine_and_its_next_start_is_clean(gateway, cluster):
    models = {"p": engine(3000), "q": engine(3000, nodes=["gpu-b"])}
    config = ray_config(cluster, models)
    gw = gateway(config)
    ask(gw, "p")
    ask(gw, "q")
    pids = gw.engine_pids()
    assert len(pids) == 2
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    left = [p for p in pids if not wait_until(lambda p=p: not pid_alive(p), 15)]
    assert not left, f"engines outlived their gateway: {left}"
    # An engine its node's agent recorded and no watchdog ended (as if the watchdog had been
    # killed too): the next start of this gateway finds and removes it.
    gateway_id = (gw.state_dir / "instance-id").read_text().strip()
    folder = Path(tempfile.gettempdir()) / "vramgate-agent" / file_stem(gateway_id) / "gpu-b"
    stray = subprocess.Popen(["sleep", "300"], start_new_session=True)
    started = Path(f"/proc/{stray.pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    (folder / "stray.engine").write_text(f"{stray.pid} {started}\n")
    # Started again on the same state_dir: it joins, finds nothing of the last run in its way.
    config["state_dir"] = str(gw.state_dir)
    again = gateway(config)
    assert wait_until(lambda: stray.poll() is not None, 15), "a leftover engine was not removed"
    assert not (folder / "stray.engine").exists()
    assert "removed 1 engines an earlier run left" in again.log()
    assert ask(again, "p") == "tok0 tok1 " and ask(again, "q") == "tok0 tok1 "
