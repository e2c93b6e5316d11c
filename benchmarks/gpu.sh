#!/usr/bin/env bash
# The GPU figures in one run (<= 8 min on one H100 or H200), random weights in the exact Wan2.1
# layout (benchmarks/gpu.py build):
#   speed      the 1.3B framewise one-step student at 832x480, 81 frames, bf16, through the pinned
#              VBench protocol (recipes/vbench_export.yaml, its manifest's speed record): DiT-only
#              and with-VAE-decode frames/s, latency to the first frame, peak memory, the device;
#              once one step for every block, once with first-frame enhancement (the protocol's)
#   train      one One-Forcing framewise training iteration of recipes/one_forcing_framewise.yaml at
#              the real shape (21 latent frames of 60x104), bf16 ZeRO-3, EMA on: time, peak memory
#   attention  flash-attn vs SDPA: max |difference| of one attention call and of the 1.3B's forward
#
#   bash benchmarks/gpu.sh [--work DIR] [--keep] [--real-score-layers N|auto]
#   bash benchmarks/gpu.sh --smoke        # the same code paths at toy sizes on a CPU (the test suite's run)
#
# Record what it prints, with the device it names, in benchmarks/README.md.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python}"
SMOKE="" WORK="" KEEP="" LAYERS="auto"
while [ $# -gt 0 ]; do
  case "$1" in
    --smoke) SMOKE="--smoke" ;;
    --work) WORK="$2"; shift ;;
    --keep) KEEP=1 ;;
    --real-score-layers) LAYERS="$2"; shift ;;
    *) echo "error: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
  esac
  shift
done
if [ -z "$WORK" ]; then
  WORK="$(mktemp -d "${TMPDIR:-/tmp}/oneforcing-gpu.XXXXXX")"
  [ -n "$KEEP" ] || trap 'rm -rf "$WORK"' EXIT   # the 14B folder alone is up to 28 GB
elif [ -e "$WORK" ] && [ -n "$(ls -A "$WORK")" ]; then
  echo "error: --work $WORK is not empty" >&2; exit 2
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" TOKENIZERS_PARALLELISM=false
if [ -n "$SMOKE" ]; then
  export DS_ACCELERATOR=cpu OMP_NUM_THREADS=1
  SIZE=(num_frames=9 height=64 width=64)
else
  SIZE=()
fi
cd "$ROOT"
start=$SECONDS
part() { echo "== $1 ($((SECONDS - start)) s)"; }

part build
"$PY" benchmarks/gpu.py build "$WORK" $SMOKE --real-score-layers "$LAYERS"
W13="$(ls -d "$WORK"/Wan2.1-T2V-1.3B-Diffusers)"

part speed
for sampler in one_step enhanced; do
  extra=()
  [ "$sampler" = one_step ] && extra=('sampler.first_block_steps=[1000]')
  "$PY" -m oneforcing.cli vbench-export recipes/vbench_export.yaml "_paths.wan_1_3b=$W13" "checkpoint=$W13" \
      prompt_set=official names_file=null "prompts_file=$WORK/prompts.txt" samples_per_prompt=1 \
      "out_dir=$WORK/vbench_$sampler" progress=false "${SIZE[@]}" "${extra[@]}" > "$WORK/speed_$sampler.log" 2>&1 \
    || { tail -n 30 "$WORK/speed_$sampler.log"; exit 1; }
done
"$PY" benchmarks/gpu.py speed "$WORK/vbench_one_step/vbench_manifest.json" "$WORK/vbench_enhanced/vbench_manifest.json"

part train
"$PY" benchmarks/gpu.py train "$WORK" $SMOKE 2> "$WORK/train.log" || { tail -n 30 "$WORK/train.log"; exit 1; }

part attention
"$PY" benchmarks/gpu.py attention "$WORK" $SMOKE 2> "$WORK/attention.log" || { tail -n 30 "$WORK/attention.log"; exit 1; }

part "done: total"
