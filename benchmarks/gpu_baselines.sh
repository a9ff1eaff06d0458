#!/usr/bin/env bash
# Issue 4's baselines on Qwen2.5-Coder-1.5B (after benchmarks/gpu_setup.sh): kivi2, hadamard2 and
# oscar-paper on the 8 RULER needle tasks, N samples per task (default 50), at the goal's lengths
# first (32K, then 8K), then 4K and 16K, one process per GPU, until the deadline (seconds from now,
# first argument). Resumable: call it again and it goes on; rows committed in
# quality/python-docs/ruler.jsonl are seeded into each stage's folder, not measured again (kivi2 at
# 32K is complete there, so its stage ends at once). oscar-paper is fitted by oscar-eval on its first
# stage (Shakespeare, --calib-tokens default) and cached in that stage's folder. bf16 rows to pair
# with are all committed (4K-32K, 400 each). Returns $OUT/baselines.tgz (rows per stage, merged, paired).
#   GPU 0: oscar-paper at 32K, then 8K, 4K, 16K.
#   GPU 1: hadamard2 at 32K, then kivi2 and hadamard2 at 8K, then both at 4K and 16K.
#   bash benchmarks/gpu_baselines.sh 585 50
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site OSCAR_CACHE_DIR=/tmp/oscar TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OMP_NUM_THREADS=8
: "${OUT:?set OUT}"
REPO=$(pwd); DEADLINE=$(( $(date +%s) + ${1:-560} - 25 )); N=${2:-50}
M=qwen2.5-coder-1.5b; R=/tmp/ruler-baselines
left() { echo $(( DEADLINE - $(date +%s) )); }
COMMITTED=$REPO/benchmarks/results/quality/python-docs/ruler.jsonl
NEEDLES=niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery
seed() {  # folder codec: that codec's committed rows, once
  mkdir -p $1; [ -s $1/ruler.jsonl ] || grep "\"codec\": \"$2\"" $COMMITTED > $1/ruler.jsonl || true
}
for c in kivi2 hadamard2 oscar-paper bf16; do seed $R/$c $c; done  # bf16: the pairing's base
cd /tmp
stage() {  # gpu codec ctx
  [ $(left) -gt 30 ] || return 0  # (timeout 0 would mean no limit)
  local bt=262144; [[ "$3" == 32k || "$3" == 16k ]] && bt=131072
  CUDA_VISIBLE_DEVICES=$1 timeout -s TERM $(left) python3 -m oscar_cluster.evaluation.cli --model $M --device cuda \
    --codecs $2 --tasks $NEEDLES --ctx $3 --samples $N --prefill-chunk 2048 --batch 64 --batch-tokens $bt \
    --out $R/$2 --quiet >> $R/$2.log 2>&1
  echo "gpu$1 $2 $3 x$N -> rc $? at $(date +%T)" >> $R/$2.log
}
{ for ctx in 32k 8k 4k 16k; do stage 0 oscar-paper $ctx; done; } &
{ stage 1 hadamard2 32k; stage 1 kivi2 8k; stage 1 hadamard2 8k
  for ctx in 4k 16k; do stage 1 kivi2 $ctx; stage 1 hadamard2 $ctx; done; } &
wait
tail -n 3 $R/*.log
python3 -m oscar_cluster.evaluation.cli --merge $R/kivi2,$R/hadamard2,$R/oscar-paper,$R/bf16 --out $R/merged > $R/merge.log 2>&1
python3 $REPO/benchmarks/ruler_table.py $R/merged/ruler.jsonl --out $R/merged/paired.json 2>&1 | grep niah_mean
tar -C /tmp -czf $OUT/baselines.tgz ruler-baselines
