#!/usr/bin/env bash
# Sets up what serving needs (setup-serve.sh: vramgate, llama-server, two models; nothing for the
# tests, no system package, no daemon), then serves two models on llama-server at
# http://127.0.0.1:8080/v1, each started by its first request: `smollm2` (SmolLM2-135M-Instruct,
# for chat) and `gemma` (gemma 3 270M, a base model: completions). Override with --host/--port;
# other `vramgate serve` flags pass through.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup-serve.sh"
exec vramgate serve --model "smollm2=$VRAMGATE_CHAT_GGUF" --model "gemma=$VRAMGATE_DEFAULT_GGUF" "$@"
