"""SGLang's `python -m sglang.launch_server`: /health is 200 once the model is loaded.

Flags as documented in SGLang's server arguments (docs.sglang.ai, "Server Arguments"):
`--model-path`, `--host`, `--port`, `--served-model-name`, and `--is-embedding` for embedding
models. `--mem-fraction-static` is the fraction of the memory free before the load that SGLang
takes for weights and its KV pool, per GPU; `gpus: N` becomes `--tp-size N`.
"""

from __future__ import annotations

from typing import ClassVar

from vramgate.config import ModelConfig
from vramgate.engines.base import (
    EngineAdapter,
    LaunchSpec,
    MemoryBudget,
    NativeRoutes,
    SleepCalls,
    native,
)

# SGLang's memory saver (server arguments): release and resume memory occupation, with the
# weights backed up in host RAM.
SLEEP_FLAGS = ("--enable-memory-saver", "--enable-weights-cpu-backup")


class SglangEngine(EngineAdapter):
    kind = "sglang"
    default_binary = "python3"
    sizes_to_gpu = True
    sleep_levels = frozenset({1})
    # /v1/messages and /v1/messages/count_tokens (sglang/srt/entrypoints/anthropic).
    native_apis = frozenset({"anthropic"})
    context_flags = ("--context-length",)
    # sglang/srt/entrypoints/http_server.py beside the OpenAI routes (its admin routes, such as
    # /flush_cache or /update_weights_from_disk, through /upstream/MODEL/...).
    native_routes: ClassVar[NativeRoutes] = native(
        post=("/generate", "/encode", "/classify", "/tokenize", "/detokenize", "/v1/score"),
        get=("/get_model_info", "/model_info", "/get_server_info", "/server_info"),
    )

    def launch(self, name: str, model: ModelConfig, port: int) -> LaunchSpec:
        assert model.source is not None
        argv = [self.binary(), "-m", "sglang.launch_server", "--model-path", model.source]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        argv += ["--served-model-name", self.upstream_model(name, model)]
        if model.task in ("embed", "rerank") and "--is-embedding" not in model.args:
            argv.append("--is-embedding")
        if model.gpus > 1 and not {"--tp-size", "--tp"} & set(model.args):
            argv += ["--tp-size", str(model.gpus)]
        if model.sleep:  # released weights need their host copy, else resume finds garbage
            argv += [f for f in SLEEP_FLAGS if f not in model.args]
        return LaunchSpec(argv=argv + model.args, health_path=model.health)

    def sleep_calls(self, model: ModelConfig) -> SleepCalls | None:
        if not model.sleep:
            return None
        return SleepCalls(
            sleep=(("/release_memory_occupation", {}),), wake=(("/resume_memory_occupation", {}),)
        )

    def memory_args(self, model: ModelConfig, budget: MemoryBudget) -> list[str]:
        if "--mem-fraction-static" in model.args:
            return []
        fraction = min(1.0, budget.budget_mib / max(budget.free_mib, 1))
        return ["--mem-fraction-static", f"{fraction:.4f}"]
