"""vLLM's `vllm serve`: refuses connections while loading, /health is 200 once the model is ready.

Flags as documented for `vllm serve` (docs.vllm.ai, "vllm serve" CLI reference): the model is the
positional argument, `--port`/`--host` bind the server, `--served-model-name` sets the name the API
answers to, and `--runner pooling` serves embedding and scoring models.
"""

from __future__ import annotations

from vramgate.config import ModelConfig
from vramgate.engines.base import EngineAdapter, LaunchSpec


class VllmEngine(EngineAdapter):
    kind = "vllm"
    default_binary = "vllm"

    def launch(self, name: str, model: ModelConfig, port: int) -> LaunchSpec:
        assert model.source is not None
        argv = [self.binary(), "serve", model.source, "--host", "127.0.0.1", "--port", str(port)]
        argv += ["--served-model-name", self.upstream_model(name, model)]
        if model.task in ("embed", "rerank") and "--runner" not in model.args:
            argv += ["--runner", "pooling"]
        return LaunchSpec(argv=argv + model.args, health_path=model.health)
