"""A stand-in for `llama-server` that starts vramgate instead: llama.cpp's server tests start it
with their flags, and get a gateway on their port serving one llamacpp model with those flags.

    python -m bench.llama_server_standin --port 8080 --model F.gguf --alias A [flags...]

Documented configuration only, as a user would write it to put vramgate in front of one
llama-server: the model (named by --alias, every name an alias of it: `aliases: ["*"]`, since
llama-server answers to any `model`), its flags as `args`, `task` from --embedding/--reranking,
the engine's own key (--api-key) also as the gateway's key, and llama-server's CORS default
(any origin, or --cors-origins) as `cors_origins`. VRAMGATE_REAL_LLAMA_SERVER is the binary.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

import yaml

# The gateway's flags, not the engine's.
TAKEN = {"--port", "--host", "-m", "--model", "--alias", "-a", "--models-dir"}


def config_for(argv: list[str], state_dir: str) -> dict:
    """The vramgate configuration that stands for `llama-server ARGV`."""
    taken: dict[str, str] = {}
    args: list[str] = []
    i = 0
    while i < len(argv):
        arg = argv[i]
        if arg in TAKEN and i + 1 < len(argv):
            taken[arg] = argv[i + 1]
            i += 2
            continue
        args.append(arg)
        i += 1
    source = taken.get("--model") or taken.get("-m") or ""
    tools = {"--tools", "--mcp-servers-config", "--mcp-servers-json", "--ui-mcp-proxy"}
    if not source and not taken.get("--models-dir") and tools & set(args):
        # Its tools with no model (llama-server's router mode): each of vramgate's engines
        # serves a model, so the one that serves the tools is given the chat model.
        source = os.environ.get("VRAMGATE_CHAT_GGUF", "")
    name = taken.get("--alias") or taken.get("-a") or Path(source).stem or "model"
    task = "generate"
    if {"--embedding", "--embeddings"} & set(args):
        task = "embed"
    if {"--reranking", "--rerank"} & set(args):
        task = "rerank"
    model = {"engine": "llamacpp", "source": source, "args": args, "aliases": ["*"],
             "task": task, "ttl": 0, "pinned": True, "keep_kv": False}  # fmt: skip
    settings: dict = {
        "host": taken.get("--host", "127.0.0.1").split(",")[0],
        "port": int(taken.get("--port", "8080")),
        "state_dir": state_dir,
        "log_level": "warning",
        "defaults": {"stop_timeout": 2},
        "drain_timeout": 0,  # llama-server ends at once at SIGTERM, its requests with it
        "engines": {"llamacpp": {"binary": os.environ["VRAMGATE_REAL_LLAMA_SERVER"]}},
        # No model: llama-server's router mode; vramgate's like of it is models_dir, ad hoc.
        "models": {name: model} if source else {},
    }
    if not source and taken.get("--models-dir"):
        settings.update(models_dir=taken["--models-dir"], allow_adhoc=True)
    # llama-server's CORS default: any origin; with its tools or MCP servers on, localhost only.
    cors = _value(args, "--cors-origins") or ("localhost" if tools & set(args) else "*")
    settings["cors_origins"] = [o.strip() for o in cors.split(",")]
    key = _value(args, "--api-key")
    if key:
        settings["auth"] = {"admin_keys": [k for k in key.split(",") if k]}  # its one kind of key
    return settings


def _value(args: list[str], flag: str) -> str | None:
    for i, arg in enumerate(args[:-1]):
        if arg == flag:
            return args[i + 1]
    return None


def main() -> None:
    state_dir = tempfile.mkdtemp(prefix="vramgate-standin-")
    config = Path(state_dir) / "vramgate.yaml"
    config.write_text(yaml.safe_dump(config_for(sys.argv[1:], state_dir), sort_keys=False))
    os.execv(sys.executable, [sys.executable, "-m", "vramgate", "serve", "--config", str(config)])


if __name__ == "__main__":
    main()
