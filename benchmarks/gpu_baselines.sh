#!/usr/bin/env bash
# Issue 4's baselines on Qwen2.5-Coder-1.5B (after benchmarks/gpu_setup.sh): kivi2, hadamard2 and
# oscar-paper on the 8 RULER needle tasks, N samples per task (default 50), at the lengths in ORDER
# (default 32k 8k 4k 16k), PROCS processes per GPU (default 2, each with every PROCS-th task),
# until the deadline (seconds from now, first argument). Resumable: call it again and it goes on;
# rows committed in quality/python-docs/ruler.jsonl are seeded into each process's folder, not
# measured again (kivi2 at 8K and 32K is complete there, so those stages end at once). oscar-paper is
# fitted by oscar-eval in process 0's first stage (Shakespeare, --calib-tokens default) and cached in
# that folder; the other processes wait for it and load it (--artifact). bf16 rows to pair with are
# all committed (4K-32K, 400 each). Returns $OUT/baselines.tgz (rows per process, merged, paired).
#   GPU 0: oscar-paper, length by length.       GPU 1: kivi2 then hadamard2, length by length.
#   bash benchmarks/gpu_baselines.sh 585 50
#   ORDER="4k 16k 32k" PROCS=3 bash benchmarks/gpu_baselines.sh 585 50
# Why several processes per GPU: the collapsed codecs never stop early (their answers never hold the
# reference), and one process ran about 0.15 samples/s at 32K end to end (the codecs' PyTorch path at
# 4 sequences per batch, GPU use not measured); whether PROCS=2 doubles that is measured by the next run.
# Keep PROCS the same across calls on one machine: the folders p0..p(PROCS-1) hold the resumable rows.
# GPU0_AFTER_PID=PID: GPU 0's stages wait until that process has ended (the kernel benchmark timing
# on GPU 0 must not share it), while GPU 1's start at once.
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site OSCAR_CACHE_DIR=/tmp/oscar TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OMP_NUM_THREADS=4
: "${OUT:?set OUT}"
REPO=$(pwd); DEADLINE=$(( $(date +%s) + ${1:-560} - 25 )); N=${2:-50}
ORDER=${ORDER:-32k 8k 4k 16k}; PROCS=${PROCS:-2}
[[ "$PROCS" =~ ^[1-8]$ ]] || { echo "gpu_baselines: PROCS must be 1-8 (processes per GPU, each with every PROCS-th of the 8 tasks), got '$PROCS'" >&2; exit 2; }
M=qwen2.5-coder-1.5b; R=/tmp/ruler-baselines
left() { echo $(( DEADLINE - $(date +%s) )); }
COMMITTED=$REPO/benchmarks/results/quality/python-docs/ruler.jsonl
NEEDLES=(niah_single_1 niah_single_2 niah_single_3 niah_multikey_1 niah_multikey_2 niah_multikey_3 niah_multivalue niah_multiquery)
tasks_of() {  # process index -> its comma-separated share of the tasks
  local out=() i; for i in "${!NEEDLES[@]}"; do (( i % PROCS == $1 )) && out+=("${NEEDLES[$i]}"); done
  local IFS=,; echo "${out[*]}"
}
seed() {  # folder codec: that codec's committed rows, once
  mkdir -p $1; [ -s $1/ruler.jsonl ] || grep "\"codec\": \"$2\"" $COMMITTED > $1/ruler.jsonl || true
}
for c in kivi2 hadamard2 oscar-paper; do for p in $(seq 0 $((PROCS - 1))); do seed $R/$c/p$p $c; done; done
seed $R/bf16 bf16  # the pairing's base
PAPER=$R/oscar-paper/p0/artifacts/oscar-paper
cd /tmp
stage() {  # gpu codec ctx proc
  [ $(left) -gt 30 ] || return 0  # (timeout 0 would mean no limit)
  local bt=262144 extra=(); [[ "$3" == 32k || "$3" == 16k ]] && bt=131072
  if [[ "$1" == 0 && -n "${GPU0_AFTER_PID:-}" ]]; then
    while kill -0 "$GPU0_AFTER_PID" 2>/dev/null && [ $(left) -gt 30 ]; do sleep 5; done
    [ $(left) -gt 30 ] || return 0
  fi
  if [[ "$2" == oscar-paper && "$4" != 0 ]]; then  # wait for process 0's fit, then load it
    while [ ! -f $PAPER/oscar.yaml ] && [ $(left) -gt 30 ]; do sleep 5; done
    [ -f $PAPER/oscar.yaml ] || return 0
    extra=(--artifact oscar-paper=$PAPER)
  fi
  CUDA_VISIBLE_DEVICES=$1 timeout -s TERM $(left) python3 -m oscar_cluster.evaluation.cli --model $M --device cuda \
    --codecs $2 --tasks $(tasks_of $4) --ctx $3 --samples $N --prefill-chunk 2048 --batch 64 --batch-tokens $bt \
    "${extra[@]}" --out $R/$2/p$4 --quiet >> $R/$2.p$4.log 2>&1
  echo "gpu$1 $2 $3 p$4 x$N -> rc $? at $(date +%T), $(cat $R/$2/p$4/ruler.jsonl | wc -l) rows" >> $R/$2.p$4.log
}
for p in $(seq 0 $((PROCS - 1))); do
  { for ctx in $ORDER; do stage 0 oscar-paper $ctx $p; done; } &
  { for ctx in $ORDER; do stage 1 kivi2 $ctx $p; stage 1 hadamard2 $ctx $p; done; } &
done
wait
tail -n 3 $R/*.log
FOLDERS=$(ls -d $R/kivi2/p* $R/hadamard2/p* $R/oscar-paper/p* | paste -sd,)
python3 -m oscar_cluster.evaluation.cli --merge $FOLDERS,$R/bf16 --out $R/merged > $R/merge.log 2>&1
python3 $REPO/benchmarks/ruler_table.py $R/merged/ruler.jsonl --out $R/merged/paired.json 2>&1 | grep niah_mean
tar -C /tmp -czf $OUT/baselines.tgz ruler-baselines
