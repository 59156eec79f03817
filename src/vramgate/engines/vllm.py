"""vLLM's `vllm serve`: refuses connections while loading, /health is 200 once the model is ready.

Flags as documented for `vllm serve` (docs.vllm.ai, "vllm serve" CLI reference): the model is the
positional argument, `--port`/`--host` bind the server, `--served-model-name` sets the name the API
answers to, and `--runner pooling` serves embedding and scoring models. `--gpu-memory-utilization`
is the fraction of the GPU's *total* memory vLLM may use (and that must be free when it starts);
`--kv-cache-memory-bytes` fixes the KV cache instead, so either given by hand wins. `gpus: N`
becomes `--tensor-parallel-size N`; the utilization is then per GPU.
"""

from __future__ import annotations

from typing import ClassVar

from vramgate.config import ModelConfig
from vramgate.engine_keys import arg_key, without_key
from vramgate.engines.base import (
    VLLM_SLEEP,
    EngineAdapter,
    LaunchSpec,
    MemoryBudget,
    NativeRoutes,
    SleepCalls,
    native,
)

NO_CPU_SLEEP = (
    "vLLM cannot sleep on the CPU (its sleep mode frees GPU memory; the CPU build refuses it): "
    "`sleep` is ignored and it is stopped instead when room is needed"
)


class VllmEngine(EngineAdapter):
    kind = "vllm"
    default_binary = "vllm"
    sizes_to_gpu = True
    sleep_levels = frozenset({1, 2})
    # /v1/messages and /v1/messages/count_tokens (vllm/entrypoints/anthropic, on the server
    # `vllm serve` starts).
    native_apis = frozenset({"anthropic"})
    context_flags = ("--max-model-len",)
    # vllm/entrypoints (serve's api_server and its routers) beside the OpenAI routes.
    native_routes: ClassVar[NativeRoutes] = native(
        post=(
            "/tokenize", "/detokenize", "/pooling", "/classify", "/score", "/v1/score", "/rerank",
            "/v2/rerank", "/invocations", "/v1/audio/transcriptions", "/v1/audio/translations",
            "/ping",
        ),
        get=("/version", "/load", "/ping"),
    )  # fmt: skip

    def launch(self, name: str, model: ModelConfig, port: int) -> LaunchSpec:
        assert model.source is not None
        argv = [self.binary(), "serve", model.source, "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--served-model-name", self.upstream_model(name, model)]
        if model.task in ("embed", "rerank") and "--runner" not in model.args:
            argv += ["--runner", "pooling"]
        if model.gpus > 1 and not {"--tensor-parallel-size", "-tp"} & set(model.args):
            argv += ["--tensor-parallel-size", str(model.gpus)]
        # Its key in the environment (VLLM_API_KEY, read where --api-key is not given), out of
        # the process list and the logged command line; the gateway sends it (engine_key).
        key = arg_key(model.args) or model.upstream_api_key
        env = {"VLLM_API_KEY": key} if key else {}
        if self.sleep_calls(model) is not None:
            if "--enable-sleep-mode" not in model.args:
                argv.append("--enable-sleep-mode")
            env["VLLM_SERVER_DEV_MODE"] = "1"  # /sleep and /wake_up are development routes
        return LaunchSpec(argv=argv + without_key(model.args), health_path=model.health, env=env)

    def sleep_calls(self, model: ModelConfig) -> SleepCalls | None:
        # Its sleep mode frees GPU memory: the CPU build refuses --enable-sleep-mode at startup
        # ("not supported on current platform"), so on the CPU it is stopped instead.
        return None if model.device == "cpu" else VLLM_SLEEP.get(model.sleep)

    def notes(self, model: ModelConfig) -> list[str]:
        if model.sleep and model.device == "cpu":
            return [NO_CPU_SLEEP]
        return []

    def memory_args(self, model: ModelConfig, budget: MemoryBudget) -> list[str]:
        if {"--gpu-memory-utilization", "--kv-cache-memory-bytes"} & set(model.args):
            return []
        return ["--gpu-memory-utilization", f"{budget.budget_mib / budget.total_mib:.4f}"]
