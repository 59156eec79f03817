"""Config loading: validation messages with file and key path, env overrides, --model flags."""

from __future__ import annotations

from pathlib import Path

import pytest
from pydantic import ValidationError

from vramgate.config import (
    ConfigError,
    ModelConfig,
    engine_kinds,
    guess_engine,
    load_settings,
    parse_model_flag,
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "vramgate.yaml"
    path.write_text(text)
    return path


def error_of(path: Path, **kw) -> str:
    with pytest.raises(ConfigError) as info:
        load_settings(path, environ={}, **kw)
    return str(info.value)


def test_issue_example_config_is_valid(tmp_path):
    """The example from the docs loads, with defaults filled in."""
    path = write(
        tmp_path,
        """
host: 127.0.0.1
port: 8080
state_dir: ./state
defaults: {ttl: 1800, start_timeout: 600, stop_timeout: 10}
engines: {llamacpp: {binary: llama-server}, vllm: {binary: vllm}}
models:
  gemma:
    engine: llamacpp
    source: /models/gemma.gguf
    args: ["--ctx-size", "4096"]
    aliases: [gemma3-270m]
    ttl: 300
  anything:
    engine: command
    cmd: "my-server --port ${PORT} --model foo"
    health: /health
    env: {FOO: bar}
""",
    )
    settings = load_settings(path, environ={})
    assert settings.ttl_s("gemma") == 300
    assert settings.ttl_s("anything") == 1800
    assert settings.resolve("gemma3-270m") == "gemma"
    assert settings.resolve("nope") is None


def test_device_defaults_to_auto():
    """A model placed where the gateway finds GPUs, else on the CPU, unless it says otherwise."""
    assert ModelConfig(engine="llamacpp", source="/m.gguf").device == "auto"
    with pytest.raises(ValidationError, match="'auto', 'cuda' or 'cpu'"):
        ModelConfig(engine="llamacpp", source="/m.gguf", device="gpu")  # type: ignore[arg-type]


def test_negative_ttl_names_file_path_and_value(tmp_path):
    path = write(tmp_path, "models:\n  gemma: {engine: llamacpp, source: /m.gguf, ttl: -5}\n")
    message = error_of(path)
    assert message.startswith(f"{path}: 1 error(s)")
    assert "models.gemma.ttl: Input should be greater than or equal to 0, got -5" in message


def test_unknown_key_is_an_error_listing_the_known_ones(tmp_path):
    path = write(tmp_path, "models:\n  g: {engine: llamacpp, source: /m.gguf, tll: 5}\n")
    message = error_of(path)
    assert "models.g.tll: unknown key; expected one of: engine, source, cmd" in message


def test_unknown_top_level_and_nested_keys(tmp_path):
    path = write(tmp_path, "prot: 1\ndefaults: {ttl: 1, tl: 2}\n")
    message = error_of(path)
    assert "prot: unknown key; expected one of: host, port" in message
    assert "defaults.tl: unknown key; expected one of: ttl, start_timeout" in message


def test_unknown_engine_kind(tmp_path):
    path = write(tmp_path, "models:\n  g: {engine: ollama, source: x}\n")
    expected = "models.g.engine: unknown engine 'ollama'; expected one of: command, llamacpp, "
    assert expected + "sglang, transformers, vllm" in error_of(path)


def test_command_engine_needs_cmd_with_port(tmp_path):
    path = write(tmp_path, "models:\n  a: {engine: command}\n  b: {engine: command, cmd: srv}\n")
    message = error_of(path)
    assert "models.a: engine 'command' needs `cmd`" in message
    assert "models.b: `cmd` must contain ${PORT}" in message


def test_a_cmd_that_cannot_be_split_is_refused(tmp_path):
    """An unclosed quote failed every start (shlex's ValueError, a 500); now the file is refused."""
    path = write(tmp_path, 'models:\n  q: {engine: command, cmd: "foo \'bar ${PORT}"}\n')
    assert "models.q: `cmd` cannot be split into arguments: No closing quotation" in error_of(path)


def test_an_engine_refuses_a_task_it_cannot_serve(tmp_path):
    path = write(tmp_path, "models:\n  e: {engine: transformers, source: /m, task: embed}\n")
    assert "models.e: engine 'transformers' cannot serve task 'embed' (it serves: generate)" in (
        error_of(path)
    )


def test_source_required_for_real_engines(tmp_path):
    path = write(tmp_path, "models:\n  a: {engine: vllm}\n")
    assert "models.a: engine 'vllm' needs `source`" in error_of(path)


def test_alias_colliding_with_another_model(tmp_path):
    path = write(
        tmp_path,
        "models:\n  a: {engine: vllm, source: x}\n  b: {engine: vllm, source: y, aliases: [a]}\n",
    )
    assert "name 'a' is used by both models 'a' and 'b'" in error_of(path)


def test_bad_yaml_and_missing_file(tmp_path):
    path = write(tmp_path, "models: [\n")
    assert f"{path}: not valid YAML" in error_of(path)
    missing = tmp_path / "none.yaml"
    assert f"{missing}: cannot read the config file" in error_of(missing)


def test_top_level_must_be_a_mapping(tmp_path):
    assert "must be a mapping of keys, got list" in error_of(write(tmp_path, "- a\n- b\n"))


def test_environment_overrides_scalars(tmp_path):
    path = write(tmp_path, "port: 8080\nmodels:\n  Gemma: {engine: llamacpp, source: /m.gguf}\n")
    environ = {
        "VRAMGATE_PORT": "9001",
        "VRAMGATE_DEFAULTS__TTL": "60",
        "VRAMGATE_MODELS__GEMMA__TTL": "0",
        "VRAMGATE_ENGINES__LLAMACPP__BINARY": "/opt/llama-server",
        "VRAMGATE_UNRELATED": "ignored",
        "OTHER": "ignored",
    }
    settings = load_settings(path, environ=environ)
    assert settings.port == 9001
    assert settings.defaults.ttl == 60
    assert settings.ttl_s("Gemma") == 0
    assert settings.engines["llamacpp"].binary == "/opt/llama-server"


def test_bad_environment_value_is_reported_with_its_key(tmp_path):
    path = write(tmp_path, "port: 8080\n")
    with pytest.raises(ConfigError, match=r"port: Input should be a valid integer.*'eighty'"):
        load_settings(path, environ={"VRAMGATE_PORT": "eighty"})


def test_model_flag_needs_no_file():
    settings = load_settings(
        None, models=["gemma=/m/gemma.gguf", "qwen=Qwen/Qwen3-0.6B"], environ={}
    )
    assert settings.models["gemma"].engine == "llamacpp"
    assert settings.models["qwen"].engine == "vllm"
    assert settings.models["qwen"].source == "Qwen/Qwen3-0.6B"


def test_model_flag_must_be_name_equals_source():
    with pytest.raises(ConfigError, match=r"expected NAME=\[ENGINE:\]SOURCE"):
        load_settings(None, models=["gemma"], environ={})


def test_flags_override_file_and_environment(tmp_path):
    path = write(tmp_path, "port: 8080\n")
    settings = load_settings(path, environ={"VRAMGATE_PORT": "9001"}, overrides={"port": 9002})
    assert settings.port == 9002


def test_guess_engine():
    assert guess_engine("/x/Model.GGUF") == "llamacpp"
    assert guess_engine("meta-llama/Llama-3.1-8B") == "vllm"


def test_model_flag_may_name_its_engine():
    """`--model NAME=ENGINE:SOURCE`; the choices are the registry's kinds."""
    assert parse_model_flag("q=vllm:Qwen/Qwen3-0.6B") == (
        "q",
        {"engine": "vllm", "source": "Qwen/Qwen3-0.6B"},
    )
    assert parse_model_flag("s=command:srv --port ${PORT}") == (
        "s",
        {"engine": "command", "cmd": "srv --port ${PORT}"},
    )
    assert parse_model_flag("g=/m/g.gguf")[1]["engine"] == "llamacpp"
    assert parse_model_flag("x=nope:thing")[1] == {"engine": "vllm", "source": "nope:thing"}


def test_every_engine_module_registers_its_kind():
    """Adding an engine kind is adding one module to vramgate/engines: config and CLI follow."""
    import pkgutil

    import vramgate.engines as engines

    modules = {f"vramgate.engines.{m.name}" for m in pkgutil.iter_modules(engines.__path__)}
    assert {cls.__module__ for cls in engines.REGISTRY.values()} == modules - {
        "vramgate.engines.base"
    }
    assert engine_kinds() == sorted(engines.REGISTRY)


def test_alias_patterns_exact_names_win_then_the_longest_pattern():
    from vramgate.config import Settings

    cmd = "x --port ${PORT}"
    settings = Settings.model_validate(
        {
            "models": {
                "big": {"engine": "command", "cmd": cmd, "aliases": ["claude-*"]},
                "small": {"engine": "command", "cmd": cmd, "aliases": ["claude-*-haiku-*"]},
                "exact": {
                    "engine": "command",
                    "cmd": cmd,
                    "aliases": ["claude-3-5-haiku-latest"],
                },
            }
        }
    )
    assert settings.resolve("claude-3-5-haiku-20241022") == "small"
    assert settings.resolve("claude-3-5-haiku-latest") == "exact"
    assert settings.resolve("claude-sonnet-4-5") == "big"
    assert settings.resolve("gpt-4") is None
    assert settings.ambiguous_patterns() == []


def test_patterns_of_one_length_that_a_name_matches_both_are_reported():
    from vramgate.config import Settings, patterns_overlap

    cmd = "x --port ${PORT}"
    settings = Settings.model_validate(
        {
            "models": {
                "a": {"engine": "command", "cmd": cmd, "aliases": ["claude-*-4-5"]},
                "b": {"engine": "command", "cmd": cmd, "aliases": ["claude-opus*"]},
                "c": {"engine": "command", "cmd": cmd, "aliases": ["gpt-4o-*-x"]},
            }
        }
    )
    [(first, one, second, other)] = settings.ambiguous_patterns()
    assert {(first, one), (second, other)} == {("claude-*-4-5", "a"), ("claude-opus*", "b")}
    assert not patterns_overlap("a*b", "c*")
    assert patterns_overlap("*-x", "y-*") and patterns_overlap("a?c", "[ab]bc")


def test_native_ollama_is_refused_with_what_happens_instead(tmp_path):
    """Reproduced: `native_apis: [ollama]` was accepted and did nothing (Ollama's requests are
    always translated); it is a config error now that says so."""
    text = "models:\n  m: {engine: llamacpp, source: /m.gguf, native_apis: [anthropic, ollama]}\n"
    message = error_of(write(tmp_path, text))
    assert "models.m.native_apis: 'ollama' is no engine's own API here" in message
    assert "always translated" in message
    ok = "models:\n  m: {engine: llamacpp, source: /m.gguf, native_apis: [anthropic]}\n"
    assert load_settings(write(tmp_path, ok), environ={}).models["m"].native_apis == ["anthropic"]


def test_allowed_hosts_are_names_lowercased(tmp_path):
    settings = load_settings(write(tmp_path, "allowed_hosts: [GW.Lan., '*.corp']\n"), environ={})
    assert settings.allowed_hosts == ["gw.lan", "*.corp"]
    message = error_of(write(tmp_path, "allowed_hosts: ['gw.lan:8080']\n"))
    assert "allowed_hosts.0: Value error" not in message and "without port" in message


@pytest.mark.parametrize("ttl", [".inf", "1e308", ".nan"])
def test_a_ttl_past_the_one_bound_of_durations_is_refused(tmp_path, ttl):
    """An infinite or astronomical ttl broke every expiry computed from it (/api/ps)."""
    message = error_of(write(tmp_path, f"defaults: {{ttl: {ttl}}}\n"))
    assert "defaults.ttl" in message
