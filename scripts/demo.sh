#!/usr/bin/env bash
# The main job: set up .venv if needed, then run waveflow on a clip of the shared corpus.
set -euo pipefail
cd "$(dirname "$0")/.."
WAVEFLOW_EXTRAS=${WAVEFLOW_EXTRAS:-dev,eval} bash scripts/setup.sh
CLIP=${1:-../shared/data/LJSpeech-1.1-mini/wavs/LJ001-0001.wav}
.venv/bin/waveflow check "$CLIP"
