#!/usr/bin/env bash
# Prepares this checkout on a fresh machine for everything, serving and every test: what
# setup-serve.sh installs and builds (vramgate, llama-server, the two default models), then the
# test stack (setup-tests.sh: test tools, torch, Ray, Chromium, Docker, vLLM). test.sh sources it.
# Source it to get the paths exported; running it prints them.
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/setup-serve.sh"
source "$(dirname "${BASH_SOURCE[0]}")/setup-tests.sh"
