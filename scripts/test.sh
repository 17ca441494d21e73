#!/usr/bin/env bash
# Install everything the test suite needs into .venv (CPU only), then run it.
# The first run builds llama-cpp-python from source (~10 minutes on 2 cores); later runs reuse the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
INTENTREC_EXTRAS=test,semantic bash scripts/install.sh
INTENTREC_LLM_MODELS=${INTENTREC_LLM_MODELS:-smollm2} bash scripts/install-llm.sh
exec .venv/bin/python -m pytest "$@"
