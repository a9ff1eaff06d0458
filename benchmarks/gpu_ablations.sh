#!/usr/bin/env bash
# Issue 4's oscar ablations on Qwen2.5-Coder-1.5B at 8K (after benchmarks/gpu_setup.sh), one
# process per GPU, each through its own variant list (benchmarks/needle_ablations.py --list) until
# the deadline (seconds from now, first argument). The hard needle tasks only (multikey_2/3,
# multivalue), 50 samples each, every variant paired with bf16 on the same prompts. Resumable:
# artifacts and rows stay under /tmp/abl/gpu<N>; results land in /tmp/abl/gpu<N>.json and $OUT/ablations.
# Artifacts are fitted first, in a process of their own that prints each fit's seconds: in the
# 2026-11-30 run, fitting inside the process that had just run the harness took about 5 min per
# variant, against 13.5 s for oscar-calibrate on a fresh process the day before (not diagnosed).
#   bash benchmarks/gpu_ablations.sh 480
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site OSCAR_CACHE_DIR=/tmp/oscar TOKENIZERS_PARALLELISM=false OMP_NUM_THREADS=8  # two processes share the cores (gpu_combined.sh)
REPO=$(pwd)
DEADLINE=$(( $(date +%s) + ${1:-480} - 15 ))
if [ ! -d /tmp/pydocs ]; then tar -C /tmp -xJf /tmp/gpu/data/pydocs-library.tar.xz || exit 1; fi
COMMON=(--model qwen2.5-coder-1.5b --device cuda --ctx 8192 --samples 50 --batch 64 --prefill-chunk 2048
        --tasks niah_multikey_2,niah_multikey_3,niah_multivalue --encoder ${ENCODER:-codec} --python-docs /tmp/pydocs)
# 2 and 11 ran on 2026-11-30 (quality/ablations-qwen-8k-h200.json); next: the knobs on Python-docs text
GPU0_VARIANTS=${GPU0_VARIANTS:-17,18,16,9,13}
GPU1_VARIANTS=${GPU1_VARIANTS:-12,15,8,10,6}
mkdir -p /tmp/abl $OUT/ablations
cd /tmp
for g in 0 1; do
  v=GPU${g}_VARIANTS
  ( left=$(( DEADLINE - $(date +%s) )); [ $left -gt 30 ] || exit 0  # (timeout 0 would mean no limit)
    CUDA_VISIBLE_DEVICES=$g timeout -s TERM $left python3 $REPO/benchmarks/needle_ablations.py \
      "${COMMON[@]}" --variants ${!v} --work /tmp/abl/gpu$g --fit-only > /tmp/abl/fit$g.log 2>&1
    left=$(( DEADLINE - $(date +%s) )); [ $left -gt 30 ] || exit 0
    CUDA_VISIBLE_DEVICES=$g timeout -s TERM $left python3 $REPO/benchmarks/needle_ablations.py \
      "${COMMON[@]}" --variants ${!v} --work /tmp/abl/gpu$g --out /tmp/abl/gpu$g.json \
      > /tmp/abl/gpu$g.log 2>&1 ) &
done
wait
for g in 0 1; do
  echo "== gpu$g"; grep -E "^v|Error|error" /tmp/abl/fit$g.log /tmp/abl/gpu$g.log | tail -n 20
  cp /tmp/abl/gpu$g.json /tmp/abl/gpu$g.log /tmp/abl/fit$g.log $OUT/ablations/ 2>/dev/null
done
