"""Any OpenAI-compatible server started from a command line; ${PORT} is replaced by its port."""

from __future__ import annotations

import shlex

from vramgate.config import ModelConfig
from vramgate.engines.base import ALL_ROUTES, VLLM_SLEEP, EngineAdapter, LaunchSpec, SleepCalls


class CommandEngine(EngineAdapter):
    kind = "command"
    default_binary = ""
    # Any server speaking vLLM's sleep routes (the fake engine does): `sleep: 1` or `2`.
    sleep_levels = frozenset({1, 2})
    # Commands are mostly engines started by hand: their context flags, where `args` has one.
    context_flags = ("-c", "--ctx-size", "--max-model-len", "--context-length")

    def launch(self, name: str, model: ModelConfig, port: int) -> LaunchSpec:
        assert model.cmd is not None
        # Split like a shell but run without one: the engine is our child, not a shell's, so
        # signals reach it directly and no quoting in `cmd` can run other commands.
        argv = [part.replace("${PORT}", str(port)) for part in shlex.split(model.cmd)]
        return LaunchSpec(argv=argv + model.args, health_path=model.health)

    def sleep_calls(self, model: ModelConfig) -> SleepCalls | None:
        return VLLM_SLEEP.get(model.sleep)

    def routes(self, model: ModelConfig) -> frozenset[str]:
        # We cannot know what an arbitrary server offers; it answers 404 itself where it has none.
        return ALL_ROUTES if model.task == "generate" else super().routes(model)
