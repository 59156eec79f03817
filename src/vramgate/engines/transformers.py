"""Hugging Face Transformers through its own OpenAI-compatible server, `transformers serve`, for
safetensors models on the CPU or a GPU (`pip install vramgate[transformers]`).

Pinned to one model (the positional argument), it loads before its port opens, then /health is
200. Checked against transformers 5.23: it serves chat, completions and responses (streaming
too), no embeddings; a request's `model` must be absent or the pinned path exactly (else 400),
answers name the model `PATH@main`, streams end without `data: [DONE]`, a non-streamed
/v1/responses request is answered as a stream anyway, and errors are FastAPI's `{"detail": ...}`:
`rewrite.AnswerFix` mends all of these. Unknown body fields are a 422, which is why the gateway
strips its own (the `vramgate` object, seed 003's fields) first. Requests run one at a time unless
`--continuous-batching`: on by default on a GPU, off on the CPU, where its preallocated cache
takes ~13.8 GiB for a 135M model (measured here; ~0.7 GiB without).
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import ClassVar

from vramgate.config import ModelConfig
from vramgate.engines.base import (
    CHAT,
    COMPLETIONS,
    GENERATE_ROUTES,
    EngineAdapter,
    LaunchSpec,
    NativeRoutes,
    native,
)
from vramgate.rewrite import AnswerFix


class TransformersEngine(EngineAdapter):
    kind = "transformers"
    default_binary = "transformers"
    # `transformers serve` has no embeddings or rerank route.
    tasks = frozenset({"generate"})
    # `transformers serve` beside the OpenAI generation routes (multipart: through api/native.py's
    # pass-through, routed by a `model` query parameter or the default model).
    native_routes: ClassVar[NativeRoutes] = native(post=("/v1/audio/transcriptions",))

    def binary(self) -> str:
        configured = self.settings.engines.get(self.kind)
        if configured and configured.binary:
            return configured.binary
        # `vramgate[transformers]` puts it beside the gateway's own Python, which may not be on
        # PATH (a virtual environment run by its path).
        beside = Path(sys.executable).parent / self.default_binary
        return str(beside) if beside.exists() else self.default_binary

    def launch(self, name: str, model: ModelConfig, port: int) -> LaunchSpec:
        assert model.source is not None
        argv = [self.binary(), "serve", model.source, "--host", "127.0.0.1", "--port", str(port)]
        # cuda:0 is the first GPU the gateway shows it (CUDA_VISIBLE_DEVICES holds the placed
        # one); auto would spread a model over every GPU it sees.
        if "--device" not in model.args:
            argv += ["--device", "cpu" if model.device == "cpu" else "auto"]
        if model.dtype and "--dtype" not in model.args:
            argv += ["--dtype", model.dtype]
        # Continuous batching preallocates a paged KV cache sized for the device: on the CPU that
        # is ~13.8 GiB of RSS for SmolLM2-135M (0.7 GiB without), so it is a GPU default only.
        batching = {"--continuous-batching", "--no-continuous-batching"} & set(model.args)
        if not batching and model.device != "cpu":
            argv.append("--continuous-batching")
        env = {}
        if Path(model.source).is_dir():
            env["HF_HUB_OFFLINE"] = "1"  # a local folder: nothing to ask the hub
        return LaunchSpec(argv=argv + model.args, health_path=model.health, env=env)

    def routes(self, model: ModelConfig) -> frozenset[str]:
        return GENERATE_ROUTES

    def upstream_model(self, name: str, model: ModelConfig) -> str:
        assert model.source is not None
        return model.upstream_model or model.source  # the pinned model, exactly

    def answer_fix(self, asked: str, path: str) -> AnswerFix | None:
        return AnswerFix(asked, add_done=path in (CHAT, COMPLETIONS))
