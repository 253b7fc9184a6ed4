#!/usr/bin/env bash
# LJSpeech recipe: prepare -> train (-> resume). Run from anywhere:
#
#   recipes/ljspeech/run.sh --corpus /data/LJSpeech-1.1 --config conf/paper.yaml --exp exp/paper
#   recipes/ljspeech/run.sh --corpus ../shared/data/LJSpeech-1.1-mini --config conf/mini.yaml --exp exp/mini
#   recipes/ljspeech/run.sh ... --stage 2            # resume training in an existing --exp
#   NPROC=4 recipes/ljspeech/run.sh ...              # 4 GPUs on this node (torchrun)
#
# Stages: 0 prepare (check clips, write filelists), 1 train, 2 resume training.
# Extra arguments after -- go to `waveflow train` (e.g. -- --set train.max_steps=200).
set -euo pipefail

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
corpus=${LJSPEECH:-}
config=$here/conf/paper.yaml
exp=exp/ljspeech
stage=0
stop_stage=1
nproc=${NPROC:-1}
extra=()

usage() { sed -n '2,12p' "$0"; exit "${1:-0}"; }
while [ $# -gt 0 ]; do
  case $1 in
    --corpus) corpus=$2; shift 2 ;;
    --config) config=$2; shift 2 ;;
    --exp) exp=$2; shift 2 ;;
    --stage) stage=$2; shift 2 ;;
    --stop-stage) stop_stage=$2; shift 2 ;;
    -h|--help) usage 0 ;;
    --) shift; extra=("$@"); break ;;
    *) echo "run.sh: unknown argument $1" >&2; usage 1 ;;
  esac
done
[ "$stop_stage" -ge "$stage" ] || stop_stage=$stage
[ -f "$config" ] || { [ -f "$here/$config" ] && config=$here/$config; }
[ -f "$config" ] || { echo "run.sh: no config file $config" >&2; exit 1; }

# Use the repository's environment when there is one, else whatever `waveflow` is on PATH.
if [ -x "$repo/.venv/bin/waveflow" ]; then bin=$repo/.venv/bin; else bin=$(dirname "$(command -v waveflow)"); fi

if [ "$stage" -le 0 ] && [ "$stop_stage" -ge 0 ]; then
  if [ -z "$corpus" ]; then
    echo "run.sh: stage 0 needs the corpus: --corpus /path/to/LJSpeech-1.1 (or LJSPEECH=...)" >&2
    exit 1
  fi
  "$bin/waveflow" prepare --data "$corpus" --out "$exp/data"
fi

train() {
  if [ "$nproc" -gt 1 ]; then
    "$bin/torchrun" --standalone --nproc_per_node "$nproc" -m waveflow.cli.main train "$@"
  else
    "$bin/waveflow" train "$@"
  fi
}

if [ "$stage" -le 1 ] && [ "$stop_stage" -ge 1 ]; then
  train --config "$config" --data "$exp/data" --out "$exp/train" "${extra[@]}"
fi

if [ "$stage" -le 2 ] && [ "$stop_stage" -ge 2 ]; then
  train --config "$config" --data "$exp/data" --out "$exp/train" --resume "${extra[@]}"
fi
