"""The gateway's runtime: local processes, and Docker containers for the models that ask for them
(`runtime: docker`); one watchdog for both, so that nothing outlives the gateway."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from vramgate.config import Settings
from vramgate.containers import Container
from vramgate.errors import GatewayError
from vramgate.events import Fanout
from vramgate.runtimes.base import EngineHandle, SpecForPort
from vramgate.runtimes.docker import DockerRuntime, instance_id
from vramgate.runtimes.local import LocalRuntime
from vramgate.runtimes.ray_cluster import Cluster
from vramgate.runtimes.ray_runtime import RayRuntime

USED_DOCKER = "docker-used"  # in state_dir: look for leftovers at the next start


class Runtimes:
    def __init__(self, settings: Settings, cluster: Cluster | None = None) -> None:
        """`cluster`: for `cluster.ray`, another cluster than Ray's (a simulated one)."""
        self.state_dir = Path(settings.state_dir)
        self.local = LocalRuntime()
        # On a cluster, engines run on its nodes (containers are refused by the config).
        self.ray = RayRuntime(settings, cluster) if settings.ray is not None else None
        self.kind = "ray" if self.ray is not None else "local+docker"
        self.docker: DockerRuntime | None = None
        self._docker_wanted = any(
            settings.runtime_of(m) == "docker" for m in settings.models.values()
        )

    async def start(self) -> None:
        await self.local.start()
        if self.ray is not None:
            await self.ray.start()
        # Leftovers of this gateway's containers are removed at startup, when it uses Docker now
        # or did before (a reload may have dropped its last container model since).
        if self._docker_wanted or (self.state_dir / USED_DOCKER).exists():
            await self._docker()

    def unavailable(self) -> GatewayError | None:
        return self.ray.unavailable() if self.ray is not None else None

    def nodes(self) -> list[dict[str, Any]]:
        """A cluster's nodes, for status; none on one machine."""
        return self.ray.nodes() if self.ray is not None else []

    async def _docker(self) -> DockerRuntime:
        if self.docker is None:
            self.state_dir.mkdir(parents=True, exist_ok=True)
            (self.state_dir / USED_DOCKER).touch()
            self.docker = DockerRuntime(instance_id(self.state_dir), self.local.watchdog)
            await self.docker.start()
        return self.docker

    async def close(self) -> None:
        if self.docker is not None:
            await self.docker.close()
        if self.ray is not None:
            await self.ray.close()
        await self.local.close()

    async def spawn(
        self,
        name: str,
        spec_for_port: SpecForPort,
        env: dict[str, str],
        gpus: tuple[int, ...],
        log_path: Path,
        output: Fanout[str],
        container: Container | None = None,
        nodes: tuple[str, ...] = (),
    ) -> EngineHandle:
        if self.ray is not None:
            return await self.ray.spawn(
                name, spec_for_port, env, gpus, log_path, output, container, nodes
            )
        if container is None:
            return await self.local.spawn(name, spec_for_port, env, gpus, log_path, output)
        docker = await self._docker()
        return await docker.spawn(name, spec_for_port, env, gpus, log_path, output, container)
