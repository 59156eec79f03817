#!/usr/bin/env bash
# Prepares this checkout to serve (Python 3.11, gcc, cmake): a virtual environment with vramgate
# and its serving dependencies only (`pip install -e .`: no test tools, torch, Ray or browser),
# llama-server built from source (cached), the gemma 3 270M GGUF (a base model, for completions)
# and SmolLM2-135M-Instruct (the chat model), both cached. It installs no system package and
# starts no daemon: the test stack is setup-tests.sh's.
# Source it to get the paths exported; running it prints them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${VRAMGATE_CACHE:-$HOME/.cache/vramgate}"

if [ ! -x "$root/.venv/bin/python" ]; then
  python3 -m venv "$root/.venv"
fi
# Installed again only when pyproject.toml changed (an editable install: the code is read from
# the checkout). --no-compile: byte-compiling every dependency took about a third of the install;
# Python compiles what it imports when it first does.
stamp="$root/.venv/.vramgate-serve"
want="$(sha256sum "$root/pyproject.toml" | cut -c1-16)"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
  "$root/.venv/bin/python" -m pip install --quiet --upgrade pip >&2
  "$root/.venv/bin/python" -m pip install --quiet --no-compile -e "$root" >&2
  echo "$want" >"$stamp"
fi

llama_server="$("$root/scripts/build-llama-server.sh" | tail -n 1)"
gguf="$("$root/.venv/bin/python" "$root/scripts/fetch-model.py" gemma "$cache/models")"
chat_gguf="$("$root/.venv/bin/python" "$root/scripts/fetch-model.py" smollm2 "$cache/models")"

# VRAMGATE_ENGINES__LLAMACPP__BINARY is the config key engines.llamacpp.binary, set from the
# environment, so `vramgate serve` finds the llama-server built here without a config file.
export VRAMGATE_ENGINES__LLAMACPP__BINARY="$llama_server"
export VRAMGATE_DEFAULT_GGUF="$gguf"
export VRAMGATE_CHAT_GGUF="$chat_gguf"
export PATH="$root/.venv/bin:$PATH"
echo "llama-server: $llama_server" >&2
echo "default models: $gguf (completions), $chat_gguf (chat)" >&2
