#!/usr/bin/env bash
# Sets up a fresh machine (see setup.sh), then runs every test: unit, integration with the fake
# engine, and end to end with the real llama-server and gemma 3 270M. Arguments go to pytest.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup.sh"
cd "$(dirname "${BASH_SOURCE[0]}")/.."
export VRAMGATE_REQUIRE_E2E=1
python -m pytest "$@"
