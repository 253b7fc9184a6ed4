#!/usr/bin/env bash
# Set up .venv if needed, then lint and run the test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
WAVEFLOW_EXTRAS=${WAVEFLOW_EXTRAS:-dev,train,eval,export,docs} bash scripts/setup.sh
.venv/bin/ruff check waveflow tests scripts
.venv/bin/python -m pytest -q "$@"
# The documentation site: --strict fails on a link to a missing page or anchor (no network needed).
# Not --quiet: it drops the warnings before --strict counts them, and the build then always passes.
.venv/bin/mkdocs build --strict --site-dir "$(mktemp -d)"
