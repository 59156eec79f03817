"""Review of issue 23 (guards): an engine whose start fails with an unexpected exception.

The README promises "engine failed to start ... 503" and "no exception text in any answer (it
goes to the log)". A `command` model whose cmd had an unclosed quote was accepted by the config,
then failed at every start with shlex's ValueError: the request that started it got a 500
"internal error" (a bug's answer, not the start failure's 503), and /gateway/status,
/v1/models/loaded... showed `last_error: "ValueError('No closing quotation')"`: the exception's
repr, put there by scheduling/driver.py (`repr(exc)`). The config now refuses such a cmd
(tests/unit/test_config.py); the driver's own rule is tested here on the real driver, with a
model whose cmd is changed after validation, as no file can now give it.
"""

from __future__ import annotations

import asyncio

import pytest

from tests.harness import ask, driver, fake
from vramgate.errors import EngineStartFailed
from vramgate.scheduling.snapshot import State


def test_an_unexpected_start_error_is_the_start_failure_and_shows_no_exception_text(tmp_path):
    """A start that raises what no start path expects (ValueError from shlex) fails its request
    with the start failure (503), and last_error names no exception; the model stays usable."""

    async def run() -> None:
        async with driver(tmp_path, {"q": fake(), "ok": fake()}) as s:
            inst = s.instances["q"]
            inst.model = inst.model.model_copy(update={"cmd": "foo 'bar ${PORT}"})
            with pytest.raises(EngineStartFailed, match="failed to start"):
                await ask(s, "q")
            assert inst.state is State.FAILED and inst.last_error is not None
            assert "ValueError" not in inst.last_error and "quotation" not in inst.last_error
            assert await ask(s, "ok") == "tok0 "

    asyncio.run(run())
