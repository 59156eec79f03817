"""Engine adapters by kind; adding an engine means adding a module and a line here."""

from __future__ import annotations

from vramgate.config import Settings
from vramgate.engines.base import EngineAdapter, LaunchSpec
from vramgate.engines.command import CommandEngine
from vramgate.engines.llamacpp import LlamaCppEngine
from vramgate.engines.sglang import SglangEngine
from vramgate.engines.vllm import VllmEngine

REGISTRY: dict[str, type[EngineAdapter]] = {
    "llamacpp": LlamaCppEngine,
    "vllm": VllmEngine,
    "sglang": SglangEngine,
    "command": CommandEngine,
}


def adapters(settings: Settings) -> dict[str, EngineAdapter]:
    return {kind: cls(settings) for kind, cls in REGISTRY.items()}


__all__ = ["REGISTRY", "EngineAdapter", "LaunchSpec", "adapters"]
