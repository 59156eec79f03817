"""llama.cpp's `llama-server`: one GGUF a process; /health is 503 while loading, 200 when ready.

With `gpus: N` it needs no flag: llama-server splits layers over every GPU it sees (its default
`--split-mode layer`), and the gateway shows it exactly the N GPUs it placed it on.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from vramgate.config import ModelConfig
from vramgate.engine_keys import arg_key, without_key
from vramgate.engines.base import EngineAdapter, LaunchSpec, NativeRoutes, native
from vramgate.gpu.estimate import gguf_keeps_kv, read_gguf_header, slides

NO_CHAT_TEMPLATE = (
    "its GGUF has no chat template (a base model?): llama-server formats chat requests as "
    "ChatML, so chat answers may run on past the reply ('<|im_start|>...'); use "
    "/v1/completions, pass --chat-template in args, or serve an instruction-tuned model"
)


class LlamaCppEngine(EngineAdapter):
    kind = "llamacpp"
    default_binary = "llama-server"
    # /v1/messages and /v1/messages/count_tokens (tools/server/README.md); tool use with its
    # jinja templates, on by default.
    native_apis = frozenset({"anthropic"})
    context_flags = ("-c", "--ctx-size")
    help_args = ("--help",)
    # tools/server/server.cpp's routes (llama-cpp-python 0.3.36's llama.cpp) but the gateway's
    # own (/health, /metrics, /v1/models: the engine's through /upstream/MODEL/...) and the
    # OpenAI and Anthropic routes relayed already. /completions is its own format, not /v1's.
    native_routes: ClassVar[NativeRoutes] = native(
        post=(
            "/completion", "/completions", "/chat/completions", "/responses", "/infill",
            "/embedding", "/embeddings", "/rerank", "/reranking", "/v1/reranking", "/tokenize",
            "/detokenize", "/apply-template", "/chat/completions/input_tokens",
            "/v1/chat/completions/input_tokens", "/responses/input_tokens",
            "/v1/responses/input_tokens", "/v1/chat/completions/control",
            "/audio/transcriptions", "/v1/audio/transcriptions", "/slots/{id}",
            "/v1/streams/lookup", "/props", "/lora-adapters", "/tools", "/cors-proxy",
        ),
        get=(
            "/props", "/lora-adapters", "/tools", "/cors-proxy", "/models", "/slots",
            "/v1/stream",
        ),
        delete=("/v1/stream",),
    )  # fmt: skip
    # Slot files are written where the gateway keeps its own KV caches (--slot-save-path, for
    # keep_kv) and restored into every user's next answer; POST /props and /lora-adapters change
    # the engine for everyone; GET /slots shows what other users' requests are doing; the tools
    # and the CORS proxy act on the server's files and network (where --tools or the web UI's
    # proxy is on); the web UI's streams are read, looked up and stopped by conversation id,
    # which is no secret between the users of one engine.
    native_admin: ClassVar[frozenset[str]] = frozenset(
        {"POST /slots/{id}", "GET /slots", "POST /props", "POST /lora-adapters", "GET /tools",
         "POST /tools", "GET /cors-proxy", "POST /cors-proxy", "GET /v1/stream",
         "DELETE /v1/stream", "POST /v1/streams/lookup", "POST /v1/chat/completions/control"}
    )  # fmt: skip

    def takes_images(self, model: ModelConfig) -> bool | None:
        """It sees images only with a multimodal projector (--mmproj)."""
        if model.vision is not None:
            return model.vision
        return bool({"-mm", "--mmproj", "-mmu", "--mmproj-url"} & set(model.args))

    def launch(self, name: str, model: ModelConfig, port: int) -> LaunchSpec:
        assert model.source is not None
        argv = [self.binary(), "-m", model.source, "--host", "127.0.0.1", "--port", str(port)]
        # --alias makes /v1/models and responses carry the gateway's name for the model.
        argv += ["--alias", self.upstream_model(name, model)]
        # llama-server serves embeddings only with --embeddings, which also turns generation off;
        # --reranking implies it and sets rank pooling (tools/server, common/arg.cpp).
        if model.task == "embed" and not {"--embedding", "--embeddings"} & set(model.args):
            argv.append("--embeddings")
        if model.task == "rerank" and not {"--rerank", "--reranking"} & set(model.args):
            argv.append("--reranking")
        # Its key goes in the environment (LLAMA_API_KEY, which --api-key reads too), out of
        # the process list and the logged command line; the gateway sends it (engine_key).
        key = arg_key(model.args) or model.upstream_api_key
        env = {"LLAMA_API_KEY": key} if key else {}
        return LaunchSpec(argv=argv + without_key(model.args), health_path=model.health, env=env)

    def keeps_kv(self, model: ModelConfig) -> bool:
        """On unless `keep_kv: false`. A sliding-window model needs --swa-full for a restored
        cache to be reused: the full cache, in memory and in time (llama-server zeroes it at
        every start: gemma 3 270M at 32k, +442 MiB and 1.40 s against 1.08 s to a first token),
        so its caches are kept by default only where that adds at most 5% to its footprint
        (a context of up to ~5.5k for gemma 3 270M); `keep_kv: true` keeps them at any cost."""
        source = Path(model.source) if model.source else None
        if source is not None and source.is_file():
            return gguf_keeps_kv(model, source)
        return bool(model.keep_kv)  # not a file (yet): only when asked

    def kv_args(self, model: ModelConfig, folder: Path) -> list[str] | None:
        args = ["--slot-save-path", str(folder)]
        # A sliding-window model keeps only the window's cells: a restored cache would not be
        # reused (the prefix is evaluated again), so it runs with the full cache (estimate.py
        # counts it).
        if "--swa-full" not in model.args and model.source and slides(Path(model.source)):
            args.append("--swa-full")
        return args

    def notes(self, model: ModelConfig) -> list[str]:
        explicit = {"--chat-template", "--chat-template-file", "--jinja"} & set(model.args)
        if model.task != "generate" or explicit or model.source is None:
            return []
        try:
            meta, _ = read_gguf_header(Path(model.source))
        except Exception:  # unreadable here: llama-server will say so itself when it starts
            return []
        return [] if "tokenizer.chat_template" in meta else [NO_CHAT_TEMPLATE]
