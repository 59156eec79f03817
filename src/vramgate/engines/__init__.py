"""Engine adapters by kind, found by module: adding an engine kind is adding one file here that
defines an EngineAdapter subclass with its `kind`. Config validation and the CLI read REGISTRY."""

from __future__ import annotations

import importlib
import inspect
import pkgutil

from vramgate.config import Settings
from vramgate.engines.base import EngineAdapter, LaunchSpec


def _discover() -> dict[str, type[EngineAdapter]]:
    found: dict[str, type[EngineAdapter]] = {}
    for info in pkgutil.iter_modules(__path__):
        module = importlib.import_module(f"{__name__}.{info.name}")
        for obj in vars(module).values():
            if (
                inspect.isclass(obj)
                and issubclass(obj, EngineAdapter)
                and obj.__module__ == module.__name__
                and not inspect.isabstract(obj)
            ):
                found[obj.kind] = obj
    return dict(sorted(found.items()))


REGISTRY: dict[str, type[EngineAdapter]] = _discover()


def adapters(settings: Settings) -> dict[str, EngineAdapter]:
    return {kind: cls(settings) for kind, cls in REGISTRY.items()}


__all__ = ["REGISTRY", "EngineAdapter", "LaunchSpec", "adapters"]
