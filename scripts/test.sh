#!/usr/bin/env bash
# Set up .venv if needed, then lint and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
WAVEFLOW_EXTRAS=${WAVEFLOW_EXTRAS:-dev,train,eval,export} bash scripts/setup.sh
.venv/bin/ruff check waveflow tests scripts
.venv/bin/python -m pytest -q "$@"
