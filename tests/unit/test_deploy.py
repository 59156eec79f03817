"""The deployment files agree with the code: their settings exist and their paths match."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import yaml

from vramgate.config import load_settings

ROOT = Path(__file__).resolve().parents[2]


def dockerfile_env() -> dict[str, str]:
    text = (ROOT / "Dockerfile").read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(re.findall(r"(\w+)=(\S+)", line))
    return env


def test_the_image_environment_sets_real_settings():
    env = {k: v for k, v in dockerfile_env().items() if k.startswith("VRAMGATE_")}
    assert len(env) == 4
    settings = load_settings(None, environ=env)
    assert settings.host == "0.0.0.0"
    assert str(settings.state_dir) == "/var/lib/vramgate"
    assert str(settings.models_dir) == "/models"
    assert settings.engines["llamacpp"].binary == "/usr/local/bin/llama-server"


def test_the_example_config_is_valid(monkeypatch):
    monkeypatch.setenv("VRAMGATE_ADMIN_KEY", "k")
    settings = load_settings(ROOT / "deploy" / "vramgate.yaml", environ={})
    assert settings.auth.admin_keys == ["k"] and "gemma" in settings.models


def test_compose_and_unit_use_the_image_paths():
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    service = compose["services"]["vramgate"]
    targets = {v.split(":")[1] for v in service["volumes"]}
    assert {"/models", "/etc/vramgate/config.yaml", "/var/lib/vramgate"} <= targets
    assert '"/etc/vramgate/config.yaml"' in (ROOT / "Dockerfile").read_text()
    unit = (ROOT / "deploy" / "vramgate.service").read_text()
    assert "--config /etc/vramgate/config.yaml" in unit
    assert "ExecReload=/bin/kill -HUP $MAINPID" in unit  # reload is SIGHUP


def test_the_containers_example_is_valid_and_its_compose_matches(monkeypatch):
    """deploy/compose-containers.yml (seed 000's shape) and the config it mounts agree: the
    socket is mounted, the gateway is on the network the engines are put on, paths line up."""
    monkeypatch.setenv("VRAMGATE_ADMIN_KEY", "k")
    settings = load_settings(ROOT / "deploy" / "vramgate-containers.yaml", environ={})
    compose = yaml.safe_load((ROOT / "deploy" / "compose-containers.yml").read_text())
    service = compose["services"]["vramgate"]
    assert "/var/run/docker.sock:/var/run/docker.sock" in service["volumes"]
    assert "./vramgate-containers.yaml:/etc/vramgate/config.yaml:ro" in service["volumes"]
    for model in settings.models.values():
        container = settings.container_of(model)
        assert settings.runtime_of(model) == "docker" and container.image
        assert container.network in service["networks"]
        assert compose["networks"][container.network]["name"] == container.network


def _scripts_run_by(name: str) -> dict[str, str]:
    """`scripts/NAME` and every script it sources or runs from scripts/, by name: their text."""
    found: dict[str, str] = {}
    todo = [name]
    while todo:
        script = todo.pop()
        if script in found:
            continue
        found[script] = text = (ROOT / "scripts" / script).read_text()
        todo += re.findall(r"/(?:scripts/)?([\w-]+\.(?:sh|py))\"", text)
    return found


def test_serving_sets_up_only_what_serving_needs():
    """serve-default.sh and what it runs install vramgate without extras, build llama-server
    and fetch the models: no test stack, no system package, no daemon."""
    scripts = _scripts_run_by("serve-default.sh")
    assert {"setup-serve.sh", "build-llama-server.sh", "fetch-model.py"} <= set(scripts)
    for script, text in scripts.items():
        code = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
        for word in ("apt-get", "docker", "chromium", "debootstrap", "torch", "vllm", "ray"):
            assert not re.search(rf"\b{word}\b", code), f"{script} sets up {word}"
        assert not re.search(r"pip install[^\n]*\[", code), f"{script} installs extras"
    with (ROOT / "pyproject.toml").open("rb") as f:
        base = tomllib.load(f)["project"]["dependencies"]
    names = {re.split(r"[\[<>=~ ]", d, maxsplit=1)[0].lower() for d in base}
    assert not names & {"torch", "transformers", "ray", "vllm", "playwright", "pytest"}, names


def test_the_tests_set_up_serving_and_then_the_test_stack():
    """test.sh sources setup.sh, which is setup-serve.sh then setup-tests.sh: the README's test
    command still sets up everything."""
    assert (
        'source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"'
        in (ROOT / "scripts" / "test.sh").read_text()
    )
    sourced = re.findall(r"source .*/([\w-]+\.sh)\"", (ROOT / "scripts" / "setup.sh").read_text())
    assert sourced == ["setup-serve.sh", "setup-tests.sh"]
    assert "[dev,transformers,ray]" in (ROOT / "scripts" / "setup-tests.sh").read_text()
