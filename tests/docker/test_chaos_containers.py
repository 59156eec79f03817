"""The chaos storm (tests/integration/test_chaos.py) with a container model in the mix: it swaps,
is killed and reloaded like the others, and nothing is left of it after SIGTERM."""

from __future__ import annotations

from tests.docker.test_docker_runtime import containers_of, docker, docker_client, in_container
from tests.integration.test_chaos import config, run_chaos

__all__ = ["docker", "docker_client"]  # fixtures, used by name


def test_chaos_with_a_container_model_every_request_answered(docker, gateway):
    boxed = in_container("boxed", "--vram-mib", "3000", "--tokens-per-s", "200")
    extra = {"boxed": {**boxed, "vram_mib": 3000}}
    gw = gateway(config(extra=extra))
    run_chaos(gw, 20261201, extra)
    assert gw.model("boxed")["starts"] >= 2  # it swapped, or was restarted, with the others
    gw.stop()
    assert not containers_of(docker, gw)
