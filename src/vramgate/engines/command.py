"""Any OpenAI-compatible server started from a command line; ${PORT} is replaced by its port."""

from __future__ import annotations

import shlex

from vramgate.config import ModelConfig
from vramgate.engines.base import ALL_ROUTES, EngineAdapter, LaunchSpec


class CommandEngine(EngineAdapter):
    kind = "command"
    default_binary = ""

    def launch(self, name: str, model: ModelConfig, port: int) -> LaunchSpec:
        assert model.cmd is not None
        # Split like a shell but run without one: the engine is our child, not a shell's, so
        # signals reach it directly and no quoting in `cmd` can run other commands.
        argv = [part.replace("${PORT}", str(port)) for part in shlex.split(model.cmd)]
        return LaunchSpec(argv=argv + model.args, health_path=model.health)

    def routes(self, model: ModelConfig) -> frozenset[str]:
        # We cannot know what an arbitrary server offers; it answers 404 itself where it has none.
        return ALL_ROUTES if model.task == "generate" else super().routes(model)
