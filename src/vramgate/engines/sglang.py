"""SGLang's `python -m sglang.launch_server`: /health is 200 once the model is loaded.

Flags as documented in SGLang's server arguments (docs.sglang.ai, "Server Arguments"):
`--model-path`, `--host`, `--port`, `--served-model-name`, and `--is-embedding` for embedding
models.
"""

from __future__ import annotations

from vramgate.config import ModelConfig
from vramgate.engines.base import EngineAdapter, LaunchSpec


class SglangEngine(EngineAdapter):
    kind = "sglang"
    default_binary = "python3"

    def launch(self, name: str, model: ModelConfig, port: int) -> LaunchSpec:
        assert model.source is not None
        argv = [self.binary(), "-m", "sglang.launch_server", "--model-path", model.source]
        argv += ["--host", "127.0.0.1", "--port", str(port)]
        argv += ["--served-model-name", self.upstream_model(name, model)]
        if model.task in ("embed", "rerank") and "--is-embedding" not in model.args:
            argv.append("--is-embedding")
        return LaunchSpec(argv=argv + model.args, health_path=model.health)
