#!/usr/bin/env bash
# The mutation check (scripts/mutants.py), two mutants at a time with the repository's .venv:
# every planted bug must be caught. Not part of every CI run; 13-22 minutes measured on 2 cores
# shared with other jobs (load 6-12), less on idle ones.
# Extra arguments go to mutants.py (--only NAME, --list, -j N, --tree DIR, --whole-files).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/setup.sh
exec .venv/bin/python scripts/mutants.py -j 2 "$@"
