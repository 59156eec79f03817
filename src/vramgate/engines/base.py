"""What every engine adapter provides: its command line, readiness probe, the routes it serves."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any, ClassVar

from vramgate import engine_keys as keys
from vramgate.config import ModelConfig, Settings
from vramgate.rewrite import AnswerFix

# The OpenAI routes the gateway relays, by the path a client posts to.
CHAT = "/v1/chat/completions"
COMPLETIONS = "/v1/completions"
EMBEDDINGS = "/v1/embeddings"
RERANK = "/v1/rerank"
RESPONSES = "/v1/responses"
GENERATE_ROUTES = frozenset({CHAT, COMPLETIONS, RESPONSES})
ALL_ROUTES = GENERATE_ROUTES | {EMBEDDINGS, RERANK}
# The same routes as spelled without /v1 (the OpenAI SDK given a base URL without it).
UNVERSIONED = {path.removeprefix("/v1"): path for path in ALL_ROUTES}
# An engine's own routes beside the OpenAI ones: {path: methods}.
NativeRoutes = Mapping[str, frozenset[str]]


def native(
    post: Iterable[str] = (), get: Iterable[str] = (), delete: Iterable[str] = ()
) -> NativeRoutes:
    """The routes an engine serves itself, by method; a `{id}` segment matches any one segment.
    Relayed as they are to the model a request names (api/native.py)."""
    table: dict[str, set[str]] = {}
    for method, paths in (("POST", post), ("GET", get), ("DELETE", delete)):
        for path in paths:
            table.setdefault(path, set()).add(method)
    return MappingProxyType({path: frozenset(methods) for path, methods in table.items()})


# Anthropic's Messages API, which some engines serve themselves (relayed), others not (translated).
MESSAGES = "/v1/messages"
COUNT_TOKENS = "/v1/messages/count_tokens"


@dataclass(frozen=True)
class LaunchSpec:
    """How to start one engine: argv (never through a shell), extra environment, readiness path."""

    argv: list[str]
    health_path: str = "/health"
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SleepCalls:
    """The POSTs (path, JSON body) that put an engine to sleep and wake it, in order."""

    sleep: tuple[tuple[str, dict[str, Any]], ...]
    wake: tuple[tuple[str, dict[str, Any]], ...]


# vLLM's sleep mode (docs.vllm.ai, "Sleep Mode"; served with VLLM_SERVER_DEV_MODE=1): level 1
# keeps the weights in host RAM, level 2 drops them, so its wake reloads them from disk and resets
# the prefix cache, which points at the old ones.
VLLM_SLEEP = {
    1: SleepCalls(sleep=(("/sleep?level=1", {}),), wake=(("/wake_up", {}),)),
    2: SleepCalls(
        sleep=(("/sleep?level=2", {}),),
        wake=(
            ("/wake_up", {}),
            ("/collective_rpc", {"method": "reload_weights"}),
            ("/reset_prefix_cache", {}),
        ),
    ),
}


@dataclass(frozen=True)
class MemoryBudget:
    """The GPU memory an engine may take, for engines that size themselves to what they are told."""

    budget_mib: int  # the model's footprint
    total_mib: int  # its GPU's total
    free_mib: int  # what its GPU reports free just before the load


class EngineAdapter(ABC):
    kind: ClassVar[str]
    default_binary: ClassVar[str]
    tasks: ClassVar[frozenset[str]] = frozenset({"generate", "embed", "rerank"})
    sleep_levels: ClassVar[frozenset[int]] = frozenset()  # the `sleep` levels it supports
    # It takes a share of its GPU's total (vLLM's --gpu-memory-utilization, 0.9 by default;
    # SGLang's --mem-fraction-static): what it was measured to hold holds for GPUs of that size.
    sizes_to_gpu: ClassVar[bool] = False
    # Client APIs it serves itself beside OpenAI's (its routes relayed as they are); a model's
    # `native_apis` overrides it. Any other API is translated to OpenAI's by the gateway.
    native_apis: ClassVar[frozenset[str]] = frozenset()
    context_flags: ClassVar[tuple[str, ...]] = ()  # the flags that set its context length
    native_routes: ClassVar[NativeRoutes] = native()
    # Of those, the ones for the engine's operator, not a model's users ("METHOD /path", as
    # native_routes spells the path): they take an admin key (api/native.py).
    native_admin: ClassVar[frozenset[str]] = frozenset()
    # What makes its binary list its flags, quickly (`vramgate check` reads `args` against it,
    # preflight.py); empty: not read (vLLM's and SGLang's import torch first: seconds).
    help_args: ClassVar[tuple[str, ...]] = ()

    def __init__(self, settings: Settings) -> None:
        self.settings = settings

    def binary(self) -> str:
        configured = self.settings.engines.get(self.kind)
        return (configured.binary if configured else None) or self.default_binary

    @abstractmethod
    def launch(self, name: str, model: ModelConfig, port: int) -> LaunchSpec:
        """The engine's command line for `model` listening on 127.0.0.1:`port`."""

    def memory_args(self, model: ModelConfig, budget: MemoryBudget) -> list[str]:
        """Arguments that hold the engine to `budget`; none for engines that take what they need."""
        return []

    def routes(self, model: ModelConfig) -> frozenset[str]:
        """The OpenAI routes this engine serves for `model`."""
        if model.task == "embed":
            return frozenset({EMBEDDINGS})
        if model.task == "rerank":
            return frozenset({RERANK})
        return GENERATE_ROUTES

    def serves_natively(self, model: ModelConfig, api: str) -> bool:
        """Whether `model`'s engine serves client API `api` (anthropic) itself."""
        apis = self.native_apis if model.native_apis is None else model.native_apis
        return api in apis

    def context_length(self, model: ModelConfig) -> int | None:
        """The context length `model`'s arguments set, if they set one."""
        for i, arg in enumerate(model.args):
            for flag in self.context_flags:
                value = arg.removeprefix(flag + "=") if arg.startswith(flag + "=") else None
                if arg == flag and i + 1 < len(model.args):
                    value = model.args[i + 1]
                if value is not None and value.isdigit() and int(value) > 0:
                    return int(value)
        return None

    def takes_images(self, model: ModelConfig) -> bool | None:
        """Whether `model` takes images: its `vision`, else what the engine kind can tell;
        None: unknown (images go to the engine, which answers for itself)."""
        return model.vision

    def upstream_model(self, name: str, model: ModelConfig) -> str:
        """The `model` value the engine expects in request bodies."""
        return model.upstream_model or name

    def sleep_calls(self, model: ModelConfig) -> SleepCalls | None:
        """How to put `model`'s engine to sleep and wake it; None where it never sleeps."""
        return None

    def kv_args(self, model: ModelConfig, folder: Path) -> list[str] | None:
        """Arguments that let the engine save and restore its KV caches in `folder`; None for
        engines that cannot (kvcache.py says how it is used)."""
        return None

    def keeps_kv(self, model: ModelConfig) -> bool:
        """Whether `model`'s engine keeps its KV caches across swaps: its `keep_kv`, else this
        engine's default (off, where it cannot)."""
        return bool(model.keep_kv)

    def answer_fix(self, asked: str, path: str) -> AnswerFix | None:
        """How this engine's answers on `path` must be mended before the client, who asked for
        model `asked`, sees them; None (the default, and the fast path): as they come."""
        return None

    def notes(self, model: ModelConfig) -> list[str]:
        """What an operator should know about `model` before mistaking its behaviour for a
        gateway fault (read from its files: blocking, called in a thread once per definition)."""
        return []

    def engine_key(self, model: ModelConfig) -> str | None:
        """The key `model`'s engine wants on every request (engine_keys.py), or None."""
        return keys.engine_key(model)

    def is_ready(self, status: int) -> bool:
        """Whether a readiness probe's HTTP status means the model is loaded."""
        return status == 200
