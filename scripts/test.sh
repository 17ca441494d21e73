#!/usr/bin/env bash
# Install everything the test suite needs into .venv (CPU only), check lint and format, then run the tests.
# The first run builds llama-cpp-python from source (~10 minutes on 2 cores); later runs reuse the wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
INTENTREC_EXTRAS=test,semantic,serve,tune,lm bash scripts/install.sh
INTENTREC_LLM_MODELS=${INTENTREC_LLM_MODELS:-smollm2} bash scripts/install-llm.sh
# Lint and format checks first (configured in pyproject.toml): CI enforces them.
.venv/bin/ruff check .
.venv/bin/ruff format --check .
exec .venv/bin/python -m pytest "$@"
