"""`vramgate check` with the real llama-server: its --help read for the flags of `args`, and
`--start` finding an engine that exits on a bad flag value before any request (issue 25)."""

from __future__ import annotations

import os

from tests.e2e.test_llama_server import BINARY, CHAT_GGUF, _require_e2e
from tests.integration.test_check_command import _check, _config, _pids_named


def _model(*args: str) -> dict:
    return {"engine": "llamacpp", "source": CHAT_GGUF, "args": ["-c", "512", *args]}


def test_real_help_catches_a_misspelt_flag(tmp_path):
    """llama-server's own --help: `--flash-atn` is an error with `--flash-attn` suggested,
    and so is `--no-mmap`, which this build has dropped (`--load-mode`); the flags it has pass."""
    _require_e2e(("chat GGUF", CHAT_GGUF))
    engines = {"llamacpp": {"binary": BINARY}}
    models = {
        "ok": _model("--no-warmup", "-ngl", "0", "--temp", "0.2"),
        "typo": _model("--flash-atn", "--no-mmap"),
    }
    out = _check(str(_config(tmp_path, models, engines=engines)))
    assert out.returncode == 1, out
    assert "models.typo.args[2]" in out.stderr and "did you mean '--flash-attn'?" in out.stderr
    assert "models.typo.args[3]" in out.stderr and "'--no-mmap'" in out.stderr, out.stderr
    assert "models.ok" not in out.stderr, out.stderr


def test_start_finds_an_engine_that_exits_on_a_bad_value(tmp_path):
    """A known flag with a value llama-server refuses: --start reports its failure with the
    engine's own words, a good model starts and stops, and no llama-server is left."""
    _require_e2e(("chat GGUF", CHAT_GGUF))
    engines = {"llamacpp": {"binary": BINARY}}
    good, bad = f"good{os.getpid()}", f"bad{os.getpid()}"  # in the engines' argv (--alias)
    models = {good: _model(), bad: _model("--cache-type-k", "nonsense")}
    out = _check(str(_config(tmp_path, models, engines=engines)), "--start", timeout_s=120)
    assert out.returncode == 1, out
    assert f"models.{good}: started, ready in" in out.stdout, out
    assert f"error: models.{bad}: model '{bad}' failed to start" in out.stderr, out.stderr
    assert "Unsupported cache type: nonsense" in out.stderr, out.stderr
    assert _pids_named(good) == [] and _pids_named(bad) == []
