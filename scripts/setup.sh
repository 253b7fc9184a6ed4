#!/usr/bin/env bash
# Create the virtual environment .venv in the repository root (reused when present) and
# install waveflow into it, editable, with the extras named in $WAVEFLOW_EXTRAS.
#
# torch is installed first, pinned by $TORCH_SPEC (default torch==2.13.0: on the project's
# CPU machines that is a local CPU wheel; an unpinned torch would pull a multi-GB CUDA build).
# The package metadata itself only asks for torch>=2.1, so an existing torch is kept.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
EXTRAS=${WAVEFLOW_EXTRAS:-dev,train,eval,export,docs}
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}

retry() {  # package registries occasionally hand back a truncated index page
    local n
    for n in 1 2 3; do
        "$@" && return 0
        echo "setup: '$*' failed (attempt $n), retrying" >&2
        sleep $((n * 5))
    done
    return 1
}

if [ ! -x .venv/bin/python ]; then
    echo "setup: creating .venv with $($PYTHON --version 2>&1)"
    "$PYTHON" -m venv .venv
fi
VPY=.venv/bin/python

if ! "$VPY" -c "import torch" 2>/dev/null; then
    echo "setup: installing $TORCH_SPEC"
    retry "$VPY" -m pip install -q --disable-pip-version-check "$TORCH_SPEC"
fi

stamp=.venv/.waveflow-setup
want="$(cat pyproject.toml | sha1sum | cut -c1-16) $EXTRAS"
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing waveflow[$EXTRAS] (editable) and its dependencies"
    retry "$VPY" -m pip install -q --disable-pip-version-check -e ".[$EXTRAS]"
    echo "$want" > "$stamp"
fi
