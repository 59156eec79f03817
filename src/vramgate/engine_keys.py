"""An engine's own API key: read from a model's `--api-key` argument (or `upstream_api_key`),
sent to the engine on every relayed request, and kept out of argv, logs and status."""

from __future__ import annotations

from pathlib import Path

from vramgate.config import ModelConfig

KEY_FLAGS = ("--api-key",)
KEY_FILE_FLAGS = ("--api-key-file",)
HIDDEN = "***"


def _flag_value(args: list[str], flags: tuple[str, ...]) -> str | None:
    for i, arg in enumerate(args):
        for flag in flags:
            if arg == flag and i + 1 < len(args):
                return args[i + 1]
            if arg.startswith(flag + "="):
                return arg.split("=", 1)[1]
    return None


def arg_key(args: list[str]) -> str | None:
    """The value of `--api-key` in `args` as given (llama-server: a comma-separated list)."""
    return _flag_value(args, KEY_FLAGS)


def engine_key(model: ModelConfig) -> str | None:
    """The key the gateway presents to `model`'s engine: `upstream_api_key`, else the first of
    the comma-separated `--api-key` list (llama-server's syntax; vLLM and SGLang take one), else
    the first key line of an `--api-key-file` (llama-server: `#` starts a comment)."""
    if model.upstream_api_key:
        return model.upstream_api_key
    listed = arg_key(model.args)
    if listed is not None:
        return next((k for k in listed.split(",") if k), None)
    path = _flag_value(model.args, KEY_FILE_FLAGS)
    if path is None:
        return None
    try:
        lines = Path(path).read_text().splitlines()
    except OSError:  # the engine itself fails to start on it, and says so in its log
        return None
    return next((line for line in lines if line and not line.startswith("#")), None)


def without_key(args: list[str]) -> list[str]:
    """`args` without `--api-key K` / `--api-key=K` (the key then goes in the environment,
    where `ps` does not show it)."""
    out: list[str] = []
    skip = False
    for arg in args:
        if skip:
            skip = False
            continue
        if arg in KEY_FLAGS:
            skip = True
            continue
        if any(arg.startswith(flag + "=") for flag in KEY_FLAGS):
            continue
        out.append(arg)
    return out


def redacted(argv: list[str]) -> list[str]:
    """`argv` as it may be shown: the value of every key flag hidden."""
    out: list[str] = []
    hide = False
    for arg in argv:
        if hide:
            out.append(HIDDEN)
            hide = False
        elif arg in KEY_FLAGS:
            out.append(arg)
            hide = True
        elif any(arg.startswith(flag + "=") for flag in KEY_FLAGS):
            out.append(arg.split("=", 1)[0] + "=" + HIDDEN)
        else:
            out.append(arg)
    return out
