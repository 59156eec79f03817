"""Engine adapters: the exact command lines, readiness and routes, per engine kind."""

from __future__ import annotations

from vramgate.config import ModelConfig, Settings
from vramgate.engines import REGISTRY, adapters
from vramgate.engines.base import CHAT, EMBEDDINGS, GENERATE_ROUTES, RERANK, MemoryBudget


def settings(**engines) -> Settings:
    return Settings.model_validate({"engines": engines})


def model(**kw) -> ModelConfig:
    return ModelConfig.model_validate(kw)


def test_registry_has_every_kind():
    assert set(REGISTRY) == {"llamacpp", "vllm", "sglang", "transformers", "command"}


def test_llamacpp_command_line():
    engine = adapters(settings(llamacpp={"binary": "/opt/llama-server"}))["llamacpp"]
    spec = engine.launch(
        "gemma", model(engine="llamacpp", source="/m.gguf", args=["-c", "4096"]), 5
    )
    assert spec.argv == [
        "/opt/llama-server", "-m", "/m.gguf", "--host", "127.0.0.1", "--port", "5",
        "--alias", "gemma", "-c", "4096",
    ]  # fmt: skip
    assert spec.health_path == "/health"


def test_llamacpp_embedding_and_rerank_flags():
    engine = adapters(settings())["llamacpp"]
    emb = engine.launch("e", model(engine="llamacpp", source="/m.gguf", task="embed"), 1)
    assert emb.argv[0] == "llama-server" and emb.argv[-1] == "--embeddings"
    given = model(engine="llamacpp", source="/m.gguf", task="embed", args=["--embedding"])
    assert engine.launch("e", given, 1).argv.count("--embedding") == 1
    assert "--embeddings" not in engine.launch("e", given, 1).argv
    rr = engine.launch("r", model(engine="llamacpp", source="/m.gguf", task="rerank"), 1)
    assert rr.argv[-1] == "--reranking"


def test_vllm_command_line():
    engine = adapters(settings())["vllm"]
    spec = engine.launch("qwen", model(engine="vllm", source="Qwen/Qwen3-0.6B", args=["--x"]), 7)
    assert spec.argv == [
        "vllm", "serve", "Qwen/Qwen3-0.6B", "--host", "127.0.0.1", "--port", "7",
        "--served-model-name", "qwen", "--x",
    ]  # fmt: skip
    pooling = engine.launch("e", model(engine="vllm", source="BAAI/bge-m3", task="embed"), 7)
    assert pooling.argv[-2:] == ["--runner", "pooling"]


def test_sglang_command_line():
    engine = adapters(settings(sglang={"binary": "/venv/bin/python"}))["sglang"]
    spec = engine.launch("q", model(engine="sglang", source="Qwen/Qwen3-0.6B"), 9)
    assert spec.argv == [
        "/venv/bin/python", "-m", "sglang.launch_server", "--model-path", "Qwen/Qwen3-0.6B",
        "--host", "127.0.0.1", "--port", "9", "--served-model-name", "q",
    ]  # fmt: skip
    emb = engine.launch("e", model(engine="sglang", source="x", task="embed"), 9)
    assert emb.argv[-1] == "--is-embedding"


def test_command_line_is_split_without_a_shell_and_port_substituted():
    engine = adapters(settings())["command"]
    cmd = "my-server --port ${PORT} --name 'two words' ; rm -rf /"
    spec = engine.launch("x", model(engine="command", cmd=cmd, health="/ready"), 4242)
    assert spec.argv == [
        "my-server",
        "--port",
        "4242",
        "--name",
        "two words",
        ";",
        "rm",
        "-rf",
        "/",
    ]
    assert spec.health_path == "/ready"


def test_transformers_command_line(tmp_path):
    """`transformers serve` pinned to one folder, offline, on the device asked for, batching."""
    adapter = adapters(settings(transformers={"binary": "/opt/tf"}))["transformers"]
    spec = adapter.launch("smol", model(engine="transformers", source=str(tmp_path)), 9000)
    assert spec.argv == ["/opt/tf", "serve", str(tmp_path), "--host", "127.0.0.1", "--port",
                         "9000", "--device", "auto", "--continuous-batching"]  # fmt: skip
    assert spec.env == {"HF_HUB_OFFLINE": "1"}
    cpu = model(engine="transformers", source="org/repo", device="cpu", dtype="bfloat16",
                args=["--no-continuous-batching"])  # fmt: skip
    spec = adapter.launch("smol", cpu, 9000)
    assert spec.argv[7:] == ["--device", "cpu", "--dtype", "bfloat16", "--no-continuous-batching"]
    assert spec.env == {}  # a hub id: the hub may be asked
    # On the CPU no batching unless asked: its preallocated cache is ~13.8 GiB for a 135M model.
    plain = adapter.launch("smol", model(engine="transformers", source="o/r", device="cpu"), 9000)
    assert plain.argv[7:] == ["--device", "cpu"]
    # Requests must name the pinned model exactly; answers are renamed back (rewrite.py).
    assert adapter.upstream_model("smol", cpu) == "org/repo"
    assert adapter.answer_fix("smol", CHAT) is not None
    assert adapters(settings())["llamacpp"].answer_fix("g", CHAT) is None  # the fast path


def test_routes_by_task():
    engine = adapters(settings())["llamacpp"]
    assert engine.routes(model(engine="llamacpp", source="x")) == GENERATE_ROUTES
    assert engine.routes(model(engine="llamacpp", source="x", task="embed")) == {EMBEDDINGS}
    assert engine.routes(model(engine="llamacpp", source="x", task="rerank")) == {RERANK}
    command = adapters(settings())["command"]
    assert CHAT in command.routes(model(engine="command", cmd="s ${PORT}"))
    assert EMBEDDINGS in command.routes(model(engine="command", cmd="s ${PORT}"))


def test_readiness_is_http_200_only():
    engine = adapters(settings())["llamacpp"]
    assert engine.is_ready(200)
    assert not engine.is_ready(503)


def test_upstream_model_name():
    engine = adapters(settings())["command"]
    assert engine.upstream_model("a", model(engine="command", cmd="s ${PORT}")) == "a"
    named = model(engine="command", cmd="s ${PORT}", upstream_model="b")
    assert engine.upstream_model("a", named) == "b"


def test_vllm_and_sglang_are_told_their_memory_budget():
    """vLLM: a fraction of the GPU's total; SGLang: a fraction of what is free before the load."""
    budget = MemoryBudget(budget_mib=20_000, total_mib=80_000, free_mib=50_000)
    engines = adapters(settings())
    vllm = model(engine="vllm", source="x")
    assert engines["vllm"].memory_args(vllm, budget) == ["--gpu-memory-utilization", "0.2500"]
    sglang = model(engine="sglang", source="x")
    assert engines["sglang"].memory_args(sglang, budget) == ["--mem-fraction-static", "0.4000"]
    assert engines["llamacpp"].memory_args(model(engine="llamacpp", source="x"), budget) == []


def test_memory_flags_given_by_hand_win():
    budget = MemoryBudget(20_000, 80_000, 50_000)
    engines = adapters(settings())
    for args in (["--gpu-memory-utilization", "0.5"], ["--kv-cache-memory-bytes", "1000"]):
        assert (
            engines["vllm"].memory_args(model(engine="vllm", source="x", args=args), budget) == []
        )
    hand = model(engine="sglang", source="x", args=["--mem-fraction-static", "0.3"])
    assert engines["sglang"].memory_args(hand, budget) == []


def test_tensor_parallel_flags():
    engines = adapters(settings())
    vllm = engines["vllm"].launch("q", model(engine="vllm", source="q", gpus=2), 7).argv
    assert vllm[-2:] == ["--tensor-parallel-size", "2"]
    sglang = engines["sglang"].launch("q", model(engine="sglang", source="q", gpus=4), 7).argv
    assert sglang[-2:] == ["--tp-size", "4"]
    by_hand = model(engine="vllm", source="q", gpus=2, args=["-tp", "2"])
    assert "--tensor-parallel-size" not in engines["vllm"].launch("q", by_hand, 7).argv
    one = engines["vllm"].launch("q", model(engine="vllm", source="q"), 7).argv
    assert "--tensor-parallel-size" not in one


def test_a_gguf_without_a_chat_template_gets_a_note(tmp_path):
    """So that nobody takes a base model's run-on chat answer for a gateway fault."""
    from tests.unit.test_estimate import make_gguf

    engine = adapters(settings())["llamacpp"]
    base = str(make_gguf(tmp_path / "base.gguf"))
    tuned = str(make_gguf(tmp_path / "it.gguf", chat_template="{{ messages }}"))
    [note] = engine.notes(model(engine="llamacpp", source=base))
    assert "no chat template" in note
    assert engine.notes(model(engine="llamacpp", source=tuned)) == []
    given = model(engine="llamacpp", source=base, args=["--chat-template", "chatml"])
    assert engine.notes(given) == []
    assert engine.notes(model(engine="llamacpp", source=base, task="embed")) == []
    assert engine.notes(model(engine="llamacpp", source=str(tmp_path / "missing.gguf"))) == []


def test_container_create_options_host_network_and_gpus():
    """What the docker runtime asks Docker for: labels, host network, exactly the placed GPUs."""
    from vramgate.containers import Container
    from vramgate.runtimes.docker import CONFIG, INSTANCE, MODEL, create_options

    container = Container(image="vllm/vllm-openai:v0.11.0", volumes=["/srv/m:/models:ro"],
                          shm_size="8g", ipc="host", extra={"cpuset_cpus": "0-3"})  # fmt: skip
    options = create_options(
        name="vramgate-i1-qwen-abc", model="qwen", instance="i1",
        argv=["vllm", "serve", "/models/q", "--host", "127.0.0.1", "--port", "9000"],
        env={"CUDA_VISIBLE_DEVICES": "1", "HF_HOME": "/hf"}, gpus=(1,), port=9000,
        container=container,
    )  # fmt: skip
    assert options["network_mode"] == "host" and "network" not in options
    assert options["entrypoint"] == ["vllm"]  # the image's own ENTRYPOINT does not apply
    assert options["command"][2:4] == ["--host", "127.0.0.1"]  # the host's loopback
    assert options["labels"][INSTANCE] == "i1" and options["labels"][MODEL] == "qwen"
    assert len(options["labels"][CONFIG]) == 16
    [request] = options["device_requests"]
    assert (request["Driver"], request["DeviceIDs"], request["Capabilities"]) == (
        "nvidia", ["1"], [["gpu"]],
    )  # fmt: skip
    # Inside, its one GPU is device 0: the host's number would hide it.
    assert options["environment"] == {"HF_HOME": "/hf"}
    assert (options["shm_size"], options["ipc_mode"], options["cpuset_cpus"]) == (
        "8g",
        "host",
        "0-3",
    )
    assert options["volumes"] == ["/srv/m:/models:ro"]


def test_container_create_options_named_network_and_simulated_gpu():
    """Seed 000's shape: the gateway reaches the engine by container name on a named network, so
    the engine listens on all of its container's addresses; the simulated GPU's file is mounted."""
    from vramgate.containers import Container
    from vramgate.runtimes.docker import create_options

    options = create_options(
        name="vramgate-i1-g-abc", model="g", instance="i1",
        argv=["llama-server", "-m", "/m.gguf", "--host", "127.0.0.1", "--port", "9000"],
        env={"VRAMGATE_SIM_USAGE_FILE": "/state/simulated-gpu/g.mib"}, gpus=(), port=9000,
        container=Container(image="img", network="llm"),
    )  # fmt: skip
    assert options["network"] == "llm" and options["hostname"] == "vramgate-i1-g-abc"
    assert "network_mode" not in options and "device_requests" not in options
    assert options["command"][2:4] == ["--host", "0.0.0.0"]
    assert options["volumes"] == ["/state/simulated-gpu:/state/simulated-gpu"]


def test_container_settings_merge_over_the_defaults_and_need_an_image():
    import pytest

    from vramgate.config import Settings

    cmd = {"engine": "command", "cmd": "srv ${PORT}"}
    settings = Settings.model_validate(
        {
            "defaults": {"runtime": "docker", "container": {"image": "base", "ipc": "host",
                                                            "volumes": ["/m:/m:ro"]}},
            "models": {"a": cmd | {"container": {"image": "own", "ipc": "private"}},
                       "b": cmd, "c": cmd | {"runtime": "local"}},
        }
    )  # fmt: skip
    a = settings.container_of(settings.models["a"])
    assert (a.image, a.ipc, a.volumes) == ("own", "private", ["/m:/m:ro"])
    assert settings.container_of(settings.models["b"]).image == "base"
    assert settings.runtime_of(settings.models["c"]) == "local"
    with pytest.raises(ValueError, match=r"names no image: set models.x.container.image"):
        Settings.model_validate({"models": {"x": cmd | {"runtime": "docker"}}})
    with pytest.raises(ValueError, match="is not HOST:CONTAINER"):
        Settings.model_validate({"defaults": {"container": {"volumes": ["models"]}}})
