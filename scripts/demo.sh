#!/usr/bin/env bash
# The main job: set up .venv if needed, then a real round trip on a clip of the shared corpus
# with the bundled model: wav -> `waveflow mel` -> mel.npy -> `waveflow synthesize` -> out.wav,
# and print the clip's quality figures (mel-L1, PESQ-wb, STOI) against the original.
# Outputs go to $OUT (default: demo_out/).
set -euo pipefail
cd "$(dirname "$0")/.."
WAVEFLOW_EXTRAS=${WAVEFLOW_EXTRAS:-dev,train,eval,export,docs} bash scripts/setup.sh
CLIP=${1:-../shared/data/LJSpeech-1.1-mini/wavs/LJ001-0032.wav}  # held out: the bundled model never trained on it
if [ ! -f "$CLIP" ]; then
    echo "demo: $CLIP not found; pass a 22050 Hz wav, or put the shared LJSpeech mini corpus at ../shared/data" >&2
    exit 1
fi
OUT=${OUT:-demo_out}
mkdir -p "$OUT"
.venv/bin/waveflow mel "$CLIP" -o "$OUT/mel.npy"
.venv/bin/waveflow synthesize "$OUT/mel.npy" -o "$OUT/out.wav" --reference "$CLIP"
