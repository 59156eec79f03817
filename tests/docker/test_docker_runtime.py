"""The docker runtime against a real dockerd: engines in containers with host networking (their
traffic stays on loopback), made from the Debian image scripts/docker-setup.sh builds."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
import sysconfig
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

import vramgate
from tests.conftest import FAKE_RAM, fake_cmd, pid_alive, wait_until
from tests.e2e.test_llama_server import BINARY, GGUF
from vramgate.containers import Container
from vramgate.runtimes.docker import (
    INSTANCE,
    MODEL,
    ContainerEngine,
    container_name,
    create_options,
)
from vramgate.runtimes.local import Watchdog
from vramgate.runtimes.output import EngineOutput

IMAGE = os.environ.get("VRAMGATE_TEST_IMAGE", "")
SRC = str(Path(vramgate.__file__).resolve().parents[1])
SITE = sysconfig.get_paths()["purelib"]  # aiohttp, orjson: built for CPython 3.11, as Debian's


@pytest.fixture(scope="module")
def docker_client() -> Iterator[Any]:
    why = None
    client: Any = None
    try:
        import docker

        client = docker.from_env(timeout=30)
        client.ping()
        if not IMAGE:
            why = "no test image (VRAMGATE_TEST_IMAGE; scripts/docker-setup.sh builds it as root)"
        else:
            client.images.get(IMAGE)
    except Exception as exc:
        why = f"Docker is not usable here ({exc}); scripts/docker-setup.sh starts it as root"
    if why is not None:
        if os.environ.get("VRAMGATE_REQUIRE_DOCKER"):
            pytest.fail(why)
        pytest.skip(why)
    yield client
    client.close()


@pytest.fixture
def docker(docker_client, tmp_path) -> Iterator[Any]:
    """The client; afterwards, no container of this test's gateways is left."""
    yield docker_client
    ids = {p.read_text().strip() for p in tmp_path.glob("*/state/instance-id")}
    leftover = []
    for found in docker_client.containers.list(
        all=True, filters={"label": INSTANCE}, ignore_removed=True
    ):
        if found.labels.get(INSTANCE) in ids:
            leftover.append(found.name)
            found.remove(force=True)
    assert not leftover, f"containers outlived their gateway: {leftover}"


def in_container(name: str, *knobs: str, **container: Any) -> dict[str, Any]:
    """A fake engine model run by Debian's python3 in the test image, this checkout mounted."""
    volumes = [f"{SRC}:{SRC}:ro", f"{SITE}:{SITE}:ro"]
    cmd = fake_cmd("--name", name, *knobs).replace(sys.executable, "python3", 1)
    return {
        "engine": "command",
        "cmd": cmd,
        "env": {"PYTHONPATH": f"{SRC}:{SITE}"},
        "runtime": "docker",
        "container": {"image": IMAGE, "volumes": volumes, **container},
    }


def containers_of(client: Any, gw: Any) -> list[Any]:
    instance = (gw.state_dir / "instance-id").read_text().strip()
    return client.containers.list(
        all=True, filters={"label": f"{INSTANCE}={instance}"}, ignore_removed=True
    )


def ask(gw: Any, model: str) -> str:
    reply = gw.client.chat.completions.create(
        model=model, messages=[{"role": "user", "content": "hi"}], max_tokens=3
    )
    return reply.choices[0].message.content or ""


def test_gemma_through_llama_server_in_a_container(docker, gateway):
    if not (GGUF and BINARY):
        pytest.skip("needs the gemma GGUF and llama-server (scripts/setup.sh)")
    binary_dir, models_dir = str(Path(BINARY).parent), str(Path(GGUF).parent)
    container = {"image": IMAGE, "volumes": [f"{binary_dir}:{binary_dir}:ro",
                                             f"{models_dir}:{models_dir}:ro"]}  # fmt: skip
    gw = gateway(
        {
            "engines": {"llamacpp": {"binary": BINARY}},
            "models": {
                "gemma": {
                    "engine": "llamacpp",
                    "source": GGUF,
                    "runtime": "docker",
                    "container": container,
                }
            },
        }
    )
    reply = gw.client.chat.completions.create(
        model="gemma", messages=[{"role": "user", "content": "Say hello."}], max_tokens=8
    )
    assert reply.choices[0].message.content and reply.model == "gemma"
    stream = gw.client.chat.completions.create(
        model="gemma", messages=[{"role": "user", "content": "Count."}], max_tokens=8, stream=True
    )
    assert "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
    [found] = containers_of(docker, gw)
    assert found.labels[MODEL] == "gemma" and found.attrs["HostConfig"]["NetworkMode"] == "host"
    status = gw.model("gemma")
    assert status["pid"] and pid_alive(status["pid"])  # the container's init, seen from the host
    log = gw.engine_log("gemma")
    assert (
        f"container {found.name} ({IMAGE})" in log
        and "llama_server: listening on http://127.0.0.1" in log
    )


def test_container_and_local_engines_side_by_side(docker, gateway):
    # sized: both run at once (device: auto runs an unsized engine alone, as a discovery run)
    local = {"engine": "command", "cmd": fake_cmd("--name", "local"), **FAKE_RAM}
    gw = gateway({"models": {"boxed": in_container("boxed") | FAKE_RAM, "local": local}})
    assert ask(gw, "boxed") and ask(gw, "local")
    [found] = containers_of(docker, gw)
    assert found.labels[MODEL] == "boxed"
    boxed, local = gw.model("boxed"), gw.model("local")
    assert boxed["state"] == local["state"] == "ready" and boxed["pid"] != local["pid"]
    assert (boxed["runtime"], local["runtime"]) == ("docker", "local")
    gw.http.post("/v1/models/unload", json={"model": "boxed"})
    assert wait_until(lambda: not containers_of(docker, gw), 15)  # stopped, then removed
    assert ask(gw, "boxed")  # and started again on the next request


def test_gateway_killed_with_sigkill_leaves_no_container(docker, gateway):
    # sized: both run at once (device: auto runs an unsized engine alone, as a discovery run)
    gw = gateway({"models": {"a": in_container("a") | FAKE_RAM, "b": in_container("b") | FAKE_RAM}})
    assert ask(gw, "a") and ask(gw, "b")
    assert len(containers_of(docker, gw)) == 2
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    assert wait_until(lambda: not containers_of(docker, gw), 10)


def _children(pid: int) -> list[int]:
    found = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            found.append(int(stat.parent.name))
    return found


def test_leftovers_of_a_killed_gateway_go_at_its_next_start(docker, gateway, tmp_path):
    """Gateway and watchdog both killed (a power cut, an OOM kill of the group): its container
    stays; the next start with the same state_dir removes it, and leaves another gateway's alone."""
    state = str(tmp_path / "shared-state")
    gw = gateway({"state_dir": state, "models": {"a": in_container("a")}})
    assert ask(gw, "a")
    [leftover] = containers_of(docker, gw)
    for child in _children(gw.proc.pid):  # the watchdog (and the engines' watchers)
        os.kill(child, signal.SIGKILL)
    gw.proc.send_signal(signal.SIGKILL)
    gw.proc.wait(10)
    other = docker.containers.create(
        IMAGE, ["sleep", "60"], labels={INSTANCE: "someone-else", MODEL: "theirs"},
        network_mode="host",
    )  # fmt: skip
    try:
        assert leftover.reload() is None and leftover.status == "running"
        again = gateway({"state_dir": state, "models": {"a": in_container("a")}})
        assert wait_until(lambda: not containers_of(docker, again), 10)
        log = again.log()
        assert f"removing container {leftover.name} of model 'a'" in log
        assert f"container {other.name} (model 'theirs') belongs to another vramgate" in log
        other.reload()  # still there: not ours
        assert ask(again, "a")
    finally:
        other.remove(force=True)


def test_a_missing_image_is_a_clear_503(docker, gateway):
    gw = gateway({"models": {"m": in_container("m", image="vramgate-no-such-image:1")}})
    resp = gw.http.post("/v1/chat/completions", json={"model": "m", "messages": []})
    message = resp.json()["error"]["message"]
    assert resp.status_code == 503 and "image 'vramgate-no-such-image:1'" in message, message
    assert "not on this Docker host" in message


def test_a_container_that_exits_while_starting_quotes_its_output(docker, gateway):
    gw = gateway({"models": {"m": in_container("m", "--fail-start")}})
    resp = gw.http.post("/v1/chat/completions", json={"model": "m", "messages": []})
    message = resp.json()["error"]["message"]
    assert resp.status_code == 503 and f"its container (image '{IMAGE}') exited" in message
    assert "fake engine: error: failed to load model" in message, message  # its last output
    assert wait_until(lambda: not containers_of(docker, gw), 10)


def test_two_models_on_two_simulated_gpus_get_their_own_gpu_only(docker, gateway):
    gw = gateway(
        {
            "gpus": {"simulate_mib": [4096, 4096], "reserve_mib": 0},
            "models": {
                "a": in_container("a", "--vram-mib", "3000") | {"vram_mib": 3000},
                "b": in_container("b", "--vram-mib", "3000") | {"vram_mib": 3000},
            },
        }
    )
    try:
        assert ask(gw, "a") and ask(gw, "b")
    except Exception:
        if "could not select device driver" in gw.log():
            pytest.skip(
                "this dockerd has no GPU driver (scripts/docker-setup.sh starts one that does)"
            )
        raise
    by_model = {c.labels[MODEL]: c for c in containers_of(docker, gw)}
    gpus = {m["name"]: m["gpus"] for m in gw.status()["models"]}
    assert sorted(gpus.values()) == [[0], [1]]
    for name, found in by_model.items():
        [request] = found.attrs["HostConfig"]["DeviceRequests"]
        assert request["Driver"] == "nvidia" and request["Capabilities"] == [["gpu"]]
        assert request["DeviceIDs"] == [str(gpus[name][0])]  # its own GPU, never "all"
        env = found.attrs["Config"]["Env"]
        assert not any(e.startswith("CUDA_VISIBLE_DEVICES=") for e in env)
    # The simulated GPU's contract works from inside: each engine's use is seen on its GPU.
    assert wait_until(lambda: [g["used_mib"] for g in gw.status()["gpus"]] == [3000, 3000], 10)


def test_a_second_gateway_on_the_same_state_dir_refuses_to_start(docker, gateway, tmp_path):
    """Reproduced: two gateways on one state_dir shared an instance id, and the second one's
    start removed the first one's live containers as its own leftovers."""
    state = str(tmp_path / "one-state")
    first = gateway({"state_dir": state, "models": {"a": in_container("a")}})
    assert ask(first, "a")
    with pytest.raises(RuntimeError, match="is in use by another vramgate") as refused:
        gateway({"state_dir": state, "models": {"a": in_container("a")}})
    assert f"pid {first.proc.pid}" in str(refused.value)
    [kept] = containers_of(docker, first)
    assert kept.status == "running" and ask(first, "a")


def test_a_start_cancelled_while_its_container_is_made_leaves_none(docker, tmp_path):
    """Reproduced: an unload during a container's create/start cancelled the call while the
    Docker API made it in its thread; the container lived on, untracked, until the gateway
    exited (often running, holding GPU memory nobody counted)."""
    instance = f"cancel-test-{uuid.uuid4().hex[:8]}"

    async def run() -> None:
        watchdog = Watchdog()
        await watchdog.start()
        for delay in (0.0, 0.01, 0.05):
            engine = ContainerEngine("m", "http://127.0.0.1:1", 1, "/health")
            engine.out = EngineOutput("m", tmp_path / "m.log", None)
            options = create_options(
                name=container_name(instance, "m"), model="m", instance=instance,
                argv=["sleep", "60"], env={}, gpus=(), port=1, container=Container(image=IMAGE),
            )  # fmt: skip
            start = asyncio.ensure_future(engine.create(docker, options, watchdog))
            await asyncio.sleep(delay)  # the create or start call is under way in its thread
            start.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await start
        await watchdog.close()

    asyncio.run(run())
    left = docker.containers.list(all=True, filters={"label": f"{INSTANCE}={instance}"})
    for found in left:
        found.remove(force=True)
    assert not left, [c.name for c in left]
