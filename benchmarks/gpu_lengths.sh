#!/usr/bin/env bash
# Issue 4's remaining lengths and the needle grid on Qwen2.5-Coder-1.5B, after benchmarks/gpu_setup.sh:
# the Python-docs artifact (needle_ablations.py variant 11, refitted on the machine as gpu_docs32k.sh does)
# and bf16 on the 8 RULER needle tasks at 4K and 16K (N samples per task, default 50), then the
# depth x length needle grid at 8K and 32K (GRID_N samples per cell, default 5). Deadline in seconds
# (first argument). Resumable (call it again and it goes on), and rows committed in
# quality/python-docs/ruler.jsonl are seeded, not measured again. Returns $OUT/lengths.tgz.
#   GPU 0: oscar at 4K, then 16K, then kivi2 at 32K on 4 of the 8 tasks.
#   GPU 1: bf16 at 4K and 16K, the bf16 grid, then the oscar grid (bf16 runs about twice as fast),
#          then kivi2 at 32K on the other 4 tasks.
# Committed rows are seeded into each stage's folder, and stages whose rows are all there finish at
# once: after the fourth session's run, a call goes straight to oscar's last 84 samples at 16K and
# to kivi2.
#   bash benchmarks/gpu_lengths.sh 585 50 5
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site OSCAR_CACHE_DIR=/tmp/oscar TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OMP_NUM_THREADS=8
: "${OUT:?set OUT}"
REPO=$(pwd); DEADLINE=$(( $(date +%s) + ${1:-560} - 25 )); N=${2:-50}; GRID_N=${3:-5}
M=qwen2.5-coder-1.5b; R=/tmp/ruler-lengths; mkdir -p $R/gpu0 $R/gpu1
left() { echo $(( DEADLINE - $(date +%s) )); }
COMMITTED=$REPO/benchmarks/results/quality/python-docs/ruler.jsonl
NEEDLES=niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery
seed() {  # file codec pattern: that codec's committed rows that match the pattern (grep -E)
  [ -s $1 ] || grep "\"codec\": \"$2\"" $COMMITTED | grep -E "$3" > $1 || true
}
mkdir -p $R/grid-oscar $R/kivi0 $R/kivi1
seed $R/gpu0/ruler.jsonl oscar '"length": (4096|16384),'
seed $R/gpu1/ruler.jsonl bf16 '"length": (4096|16384),|"task": "niah_grid"'
seed $R/grid-oscar/ruler.jsonl oscar '"task": "niah_grid"'
seed $R/kivi0/ruler.jsonl kivi2 '"length": 32768,'
seed $R/kivi1/ruler.jsonl kivi2 '"length": 32768,'

[ -d /tmp/pydocs ] || tar -C /tmp -xJf /tmp/gpu/data/pydocs-library.tar.xz
cd /tmp
ART=/tmp/abl/gpu0/artifacts/v11
[ -f $ART/oscar.yaml ] || CUDA_VISIBLE_DEVICES=0 python3 $REPO/benchmarks/needle_ablations.py --model $M --device cuda \
  --ctx 8192 --samples 1 --tasks niah_multikey_3 --python-docs /tmp/pydocs --work /tmp/abl/gpu0 --variants 11 \
  --fit-only > $R/fit.log 2>&1
tail -n 1 $R/fit.log 2>/dev/null
stage() {  # gpu out-dir codec tasks ctx samples
  [ $(left) -gt 30 ] || return 0  # (timeout 0 would mean no limit)
  local art=(); [ "$3" = oscar ] && art=(--artifact "oscar=$ART" --encoder kernels)
  local bt=262144; [[ "$5" == *32k* || "$5" == *16k* ]] && bt=131072
  CUDA_VISIBLE_DEVICES=$1 timeout -s TERM $(left) python3 -m oscar_cluster.evaluation.cli --model $M --device cuda \
    --codecs $3 "${art[@]}" --tasks $4 --ctx $5 --samples $6 --prefill-chunk 2048 --batch 64 --batch-tokens $bt \
    --out $2 --quiet >> $2.log 2>&1
  echo "gpu$1 $3 $4 $5 x$6 -> rc $? at $(date +%T)" >> $2.log
}
# then the kivi2 baseline at 32K (the goal's comparison at 32K), its 8 tasks split over the GPUs
KIVI0=niah_single_1,niah_multikey_1,niah_multikey_3,niah_multiquery
KIVI1=niah_single_2,niah_single_3,niah_multikey_2,niah_multivalue
{ stage 0 $R/gpu0 oscar $NEEDLES 4k $N; stage 0 $R/gpu0 oscar $NEEDLES 16k $N; stage 0 $R/kivi0 kivi2 $KIVI0 32k $N; } &
{ stage 1 $R/gpu1 bf16 $NEEDLES 4k,16k $N; stage 1 $R/gpu1 bf16 niah 8k,32k $GRID_N
  stage 1 $R/grid-oscar oscar niah 8k,32k $GRID_N; stage 1 $R/kivi1 kivi2 $KIVI1 32k $N; } &
wait
tail -n 2 $R/gpu0.log $R/gpu1.log $R/grid-oscar.log $R/kivi0.log $R/kivi1.log 2>/dev/null
MERGE=; for d in $R/gpu0 $R/gpu1 $R/grid-oscar $R/kivi0 $R/kivi1; do [ -s $d/ruler.jsonl ] && MERGE=$MERGE${MERGE:+,}$d; done
[ -n "$MERGE" ] && python3 -m oscar_cluster.evaluation.cli --merge $MERGE --out $R/merged > $R/merge.log 2>&1
[ -f $R/merged/ruler.jsonl ] && python3 $REPO/benchmarks/ruler_table.py $R/merged/ruler.jsonl --out $R/merged/paired.json 2>&1 | tail -n 20
tar -C /tmp -czf $OUT/lengths.tgz ruler-lengths
