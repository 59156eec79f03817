"""The docker runtime: each engine in a container of its own, made through the Docker API.

The `docker` SDK (docker-py, maintained by Docker) is called in threads: it is synchronous, and
its calls are short (create, start, stop, remove), except the two that last as long as the
container (its log stream and its exit), which get a daemon thread each rather than a place in
the event loop's small thread pool. aiodocker would spare the threads but lags the Docker API
(device requests are raw dicts there) and has one maintainer; the SDK has `DeviceRequest`.

Every container carries this gateway's instance id, its model and a config hash as labels. A
process-group kill does not reach a container, so the watchdog removes ours when the gateway dies
(SIGKILL included), and a gateway starting up removes leftovers of its own instance id and reports
other vramgate containers without touching them.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import logging
import math
import re
import threading
import time
import uuid
from pathlib import Path
from typing import Any

import aiohttp

from vramgate.containers import Container
from vramgate.engine_keys import redacted
from vramgate.errors import EngineStartFailed
from vramgate.events import Fanout
from vramgate.gpu.proctree import tree_rss_mib
from vramgate.hostram import tree_pss_mib
from vramgate.runtimes import readiness
from vramgate.runtimes.base import IsReady, SpecForPort
from vramgate.runtimes.local import KILL_WAIT_S, Watchdog, free_port
from vramgate.runtimes.output import EngineOutput

logger = logging.getLogger("vramgate.runtime")
INSTANCE = "io.vramgate.instance"
MODEL = "io.vramgate.model"
CONFIG = "io.vramgate.config-hash"
SIM_USAGE = "VRAMGATE_SIM_USAGE_FILE"
API_TIMEOUT_S = 30.0  # one Docker API call (create, start, inspect); pulls are not ours to make


def instance_id(state_dir: Path) -> str:
    """This gateway's id, kept in state_dir so that its next start finds its own leftovers."""
    path = state_dir / "instance-id"
    with contextlib.suppress(OSError):
        if found := path.read_text().strip():
            return found
    made = uuid.uuid4().hex[:12]
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(made + "\n")
    return made


def container_name(instance: str, model: str) -> str:
    """A Docker-valid, unique name that says whose it is: vramgate-<instance>-<model>-<random>."""
    safe = re.sub(r"[^a-zA-Z0-9_.-]+", "-", model).strip("-.") or "model"
    return f"vramgate-{instance}-{safe[:60]}-{uuid.uuid4().hex[:6]}"


def create_options(
    *,
    name: str,
    model: str,
    instance: str,
    argv: list[str],
    env: dict[str, str],
    gpus: tuple[int, ...],
    port: int,
    container: Container,
) -> dict[str, Any]:
    """The keyword arguments of `containers.create` for one engine (pure: tested as is)."""
    from docker.types import DeviceRequest

    network = container.network or "host"
    env = dict(env)
    volumes = list(container.volumes or ())
    if gpus:
        # The container sees exactly its GPUs, numbered from 0: the host's numbers mean nothing
        # in there, and "all" would let it take memory placed for others.
        env.pop("CUDA_VISIBLE_DEVICES", None)
    if SIM_USAGE in env:  # the simulated GPU's contract: the engine writes its use to this file
        folder = str(Path(env[SIM_USAGE]).parent)
        volumes.append(f"{folder}:{folder}")
    if network != "host":
        # Reached by name on its network, not on the host's loopback: listen on all of its own.
        argv = ["0.0.0.0" if i and argv[i - 1] == "--host" else a for i, a in enumerate(argv)]
    spec_hash = hashlib.sha256(repr((argv, sorted(env.items()), container)).encode())
    options: dict[str, Any] = {
        "image": container.image,
        # The engine's argv exactly, whatever ENTRYPOINT the image sets (vllm/vllm-openai's is
        # `vllm serve`, llama.cpp's `llama-server`).
        "entrypoint": argv[:1],
        "command": argv[1:],
        "name": name,
        "labels": {INSTANCE: instance, MODEL: model, CONFIG: spec_hash.hexdigest()[:16]},
        "environment": env,
        "volumes": volumes,
        "detach": True,
    }
    if network == "host":
        options["network_mode"] = "host"
    else:
        options["network"] = network
        options["hostname"] = name
    if gpus:
        ids = [str(g) for g in gpus]
        options["device_requests"] = [
            DeviceRequest(driver="nvidia", device_ids=ids, capabilities=[["gpu"]])
        ]
    if container.shm_size:
        options["shm_size"] = container.shm_size
    if container.ipc:
        options["ipc_mode"] = container.ipc
    options.update(container.extra or {})
    return options


class DockerRuntime:
    """Engines as containers on the local Docker daemon (DOCKER_HOST honoured)."""

    kind = "docker"

    def __init__(self, instance: str, watchdog: Watchdog) -> None:
        self.instance = instance
        self.watchdog = watchdog
        self.client: Any = None
        self.error: str | None = None

    async def start(self) -> None:
        """Connects and removes this instance's leftovers; a daemon that is not there is an
        error for the models that run in containers, not for the gateway."""
        try:
            self.client = await asyncio.to_thread(self._connect)
        except Exception as exc:
            self.error = f"Docker is not reachable ({exc})"
            logger.error("%s: models with runtime docker cannot start", self.error)
            return
        self.watchdog.containers(self.instance)
        await asyncio.to_thread(self._reap)

    def _connect(self) -> Any:
        import docker

        client = docker.from_env(timeout=int(API_TIMEOUT_S))
        client.ping()
        return client

    def _reap(self) -> None:
        listed = self.client.containers.list(
            all=True, filters={"label": INSTANCE}, ignore_removed=True
        )
        for found in listed:
            labels = found.labels
            if labels.get(INSTANCE) == self.instance:
                logger.warning(
                    "removing container %s of model '%s', left by an earlier run of this gateway",
                    found.name, labels.get(MODEL),
                )  # fmt: skip
                with contextlib.suppress(Exception):
                    found.remove(force=True)
            else:
                logger.warning(
                    "container %s (model '%s') belongs to another vramgate (instance %s): "
                    "left alone", found.name, labels.get(MODEL), labels.get(INSTANCE),
                )  # fmt: skip

    async def close(self) -> None:
        if self.client is not None:
            with contextlib.suppress(Exception):
                self.client.close()

    async def spawn(
        self,
        name: str,
        spec_for_port: SpecForPort,
        env: dict[str, str],
        gpus: tuple[int, ...],
        log_path: Path,
        output: Fanout[str],
        container: Container,
    ) -> ContainerEngine:
        if self.client is None:
            await self.start()  # the daemon may have come up since: try again
        if self.client is None:
            raise EngineStartFailed(f"model '{name}': {self.error or 'Docker is not connected'}")
        port = free_port()
        spec = spec_for_port(port)
        cname = container_name(self.instance, name)
        options = create_options(
            name=cname, model=name, instance=self.instance, argv=spec.argv,
            env={**env, **spec.env}, gpus=gpus, port=port, container=container,
        )  # fmt: skip
        host = "127.0.0.1" if options.get("network_mode") == "host" else cname
        engine = ContainerEngine(name, f"http://{host}:{port}", port, spec.health_path)
        engine.out = EngineOutput(name, log_path, output)
        await engine.create(self.client, options, self.watchdog)
        return engine


class ContainerEngine:
    """One engine container: its id, host pid, port, output and exit."""

    def __init__(self, name: str, base_url: str, port: int, health_path: str) -> None:
        self.name = name
        self.base_url = base_url
        self.headers: dict[str, str] = {}
        self.where = ""
        self.lost_reason: str | None = None
        self.port = port
        self.health_path = health_path
        self.started_at = 0.0
        self.container: Any = None
        self.image = ""
        self._pid: int | None = None
        self._exit_code: int | None = None
        self._exited: asyncio.Future[int] | None = None
        self._logs_done = threading.Event()
        self.watchdog: Watchdog | None = None
        self.out: EngineOutput

    @property
    def pid(self) -> int | None:
        return self._pid

    def pids(self) -> list[int]:
        """The container's init process as the host sees it; GPU accounting follows its tree."""
        return [self._pid] if self._pid else []

    def host_ram(self, kind: str) -> int:
        return tree_pss_mib(self.pids()) if kind == "pss" else tree_rss_mib(self.pids())

    @property
    def returncode(self) -> int | None:
        return self._exit_code

    @property
    def lines(self) -> Any:
        return self.out.lines

    def tail(self, n: int = 20) -> list[str]:
        return self.out.tail(n)

    async def create(self, client: Any, options: dict[str, Any], watchdog: Watchdog) -> None:
        """Creates and starts the container. Whatever ends this early (a Docker error, a timeout,
        an unload that cancels the start while the API call runs in its thread), the container
        is removed by its name once that call is over: every container made is tracked or gone."""
        import docker.errors

        self.image = options["image"]
        self.started_at = time.time()
        made = asyncio.ensure_future(asyncio.to_thread(self._make, client, options))
        try:
            self.container = await asyncio.shield(made)
        except BaseException as exc:
            await asyncio.shield(self._discard(made, client, options["name"]))
            if isinstance(exc, docker.errors.ImageNotFound):
                raise EngineStartFailed(
                    f"model '{self.name}': image '{self.image}' is not on this Docker host; "
                    f"build or pull it first (docker pull {self.image})"
                ) from None
            if isinstance(exc, docker.errors.APIError):
                hint = ""
                if "device driver" in str(exc):
                    hint = " (GPUs in containers need the NVIDIA Container Toolkit on the host)"
                raise EngineStartFailed(
                    f"model '{self.name}': its container (image '{self.image}') did not start: "
                    f"{exc.explanation or exc}{hint}"
                ) from None
            raise
        self.watchdog = watchdog
        watchdog.watch_container(self.container.id)
        self._pid = self.container.attrs["State"].get("Pid") or None
        argv = " ".join(redacted(options["entrypoint"] + options["command"]))
        self.out.open(f"container {self.container.name} ({self.image}): {argv}")
        loop = asyncio.get_running_loop()
        self._exited = loop.create_future()
        threading.Thread(target=self._follow_logs, args=(loop,), daemon=True).start()
        threading.Thread(target=self._wait_exit, args=(loop,), daemon=True).start()

    @staticmethod
    def _make(client: Any, options: dict[str, Any]) -> Any:
        container = client.containers.create(**options)
        container.start()
        container.reload()  # its host pid, for GPU accounting
        return container

    async def _discard(self, made: asyncio.Future[Any], client: Any, name: str) -> None:
        """Waits (bounded) for the create call to end, then removes what it may have made."""
        with contextlib.suppress(BaseException):
            await asyncio.wait_for(made, 3 * API_TIMEOUT_S)
        try:
            await asyncio.wait_for(
                asyncio.to_thread(client.api.remove_container, name, force=True), API_TIMEOUT_S
            )
        except Exception as exc:
            if "No such container" not in str(exc) and "404" not in str(exc):
                logger.error("model '%s': removing container %s failed: %r", self.name, name, exc)

    def _follow_logs(self, loop: asyncio.AbstractEventLoop) -> None:
        pending = b""
        try:
            for chunk in self.container.logs(stream=True, follow=True):
                pending += chunk
                *complete, pending = pending.split(b"\n")
                for raw in complete:
                    line = raw.decode("utf-8", errors="replace").rstrip("\r")
                    loop.call_soon_threadsafe(self.out.add, line)
        except Exception as exc:  # the container was removed under us: nothing more to read
            logger.debug("model '%s': log stream ended: %r", self.name, exc)
        if pending:
            line = pending.decode("utf-8", errors="replace")
            loop.call_soon_threadsafe(self.out.add, line)
        self._logs_done.set()

    def _wait_exit(self, loop: asyncio.AbstractEventLoop) -> None:
        code = -1
        while True:
            try:
                code = int(self.container.wait()["StatusCode"])
                break
            except Exception as exc:  # removed, or the daemon went away: gone either way
                if "timed out" in str(exc).lower():
                    continue  # a long-lived container outlasts the client's read timeout
                break
        loop.call_soon_threadsafe(self._set_exit, code)

    def _set_exit(self, code: int) -> None:
        self._exit_code = code
        if self._exited is not None and not self._exited.done():
            self._exited.set_result(code)

    async def wait(self) -> int | None:
        assert self._exited is not None
        return await asyncio.shield(self._exited)

    async def probe(self, http: aiohttp.ClientSession, timeout_s: float, is_ready: IsReady) -> bool:
        return await readiness.probe(http, self.base_url + self.health_path, is_ready, timeout_s)

    async def wait_ready(
        self, http: aiohttp.ClientSession, timeout_s: float, is_ready: IsReady
    ) -> None:
        assert self._exited is not None

        async def exited_error() -> Exception:
            await asyncio.to_thread(self._logs_done.wait, 1.0)  # its last words explain it
            await asyncio.sleep(0)
            return self._start_error(f"exited with code {self._exit_code} while starting")

        await readiness.poll_until_ready(
            http, self.base_url + self.health_path, timeout_s, is_ready, self._exited,
            exited_error, lambda: self._start_error(f"was not ready after {timeout_s:g} s"),
        )  # fmt: skip

    def _start_error(self, what: str) -> EngineStartFailed:
        where = f": its container (image '{self.image}') {what}"
        return readiness.start_failed(self.name, where, self.tail(15))

    async def stop(self, timeout_s: float) -> int | None:
        """Docker's stop (SIGTERM, SIGKILL after `timeout_s`), then removal; bounded."""
        if self.container is None:
            return None
        if self._exit_code is None:
            seconds = max(0, math.ceil(timeout_s))
            try:
                await asyncio.wait_for(
                    asyncio.to_thread(self.container.stop, timeout=seconds),
                    seconds + KILL_WAIT_S + API_TIMEOUT_S,
                )
            except Exception as exc:
                logger.error("model '%s': stopping its container failed: %r", self.name, exc)
        await self._remove()
        if self._exited is not None:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exited), KILL_WAIT_S)
        await asyncio.to_thread(self._logs_done.wait, 1.0)
        self.out.close()
        return self._exit_code

    async def _remove(self) -> None:
        try:
            await asyncio.wait_for(
                asyncio.to_thread(self.container.remove, force=True), API_TIMEOUT_S
            )
        except Exception as exc:
            if "No such container" not in str(exc):
                logger.error("model '%s': removing its container failed: %r", self.name, exc)
        if self.watchdog is not None:
            self.watchdog.forget_container(self.container.id)
