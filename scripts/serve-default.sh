#!/usr/bin/env bash
# Sets up a fresh machine (see setup.sh), then serves gemma 3 270M on llama-server at
# http://127.0.0.1:8080/v1 (override with --host/--port; other `vramgate serve` flags pass through).
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
exec vramgate serve --model "gemma=$VRAMGATE_DEFAULT_GGUF" "$@"
