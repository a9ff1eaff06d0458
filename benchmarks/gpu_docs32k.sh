#!/usr/bin/env bash
# Issue 4 at 32K: the Python-docs artifact (needle_ablations.py variant 11: `oscar` defaults fitted on
# 32,768 tokens of Python 3.11's library docs) on the 8 RULER needle tasks at 32K, 4 tasks per GPU,
# after benchmarks/gpu_setup.sh. Deadline in seconds (first argument), samples per task (second,
# default 50). Resumable, and the rows committed in quality/python-docs/ruler.jsonl (oscar and bf16 at
# 32K) are seeded, so only missing samples run; the single-needle tasks, never run at 32K, go first.
# The artifact is refitted on the machine: its YAML and layouts repeat, its transforms may differ in
# the last bits (GPU fitting is not bitwise deterministic; quality/python-docs/run.json).
# Then, with the time left, each GPU runs the needle_ablations.py variants in $ABLATE0 / $ABLATE1
# (default 16 and 21: keys weighted x2, and that with 2.1 code bits) at 32K on niah_multikey_2/3,
# $N_ABL samples (default 30), paired with the committed bf16 rows -> /tmp/abl32/gpuN.json. A variant's
# rows committed in quality/ablations-32k/vN/ are seeded (its artifact is refitted: on 2026-11-30 two
# refits of variant 11 on the machine gave identical transforms).
#   bash benchmarks/gpu_docs32k.sh 585 50        # ABLATE0= ABLATE1= to skip the ablations
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site OSCAR_CACHE_DIR=/tmp/oscar TOKENIZERS_PARALLELISM=false
export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True OMP_NUM_THREADS=8
: "${OUT:?set OUT}"
REPO=$(pwd); DEADLINE=$(( $(date +%s) + ${1:-560} - 25 )); N=${2:-50}
M=qwen2.5-coder-1.5b; R=/tmp/ruler-docs32k; mkdir -p $R
left() { echo $(( DEADLINE - $(date +%s) )); }
COMMITTED=$REPO/benchmarks/results/quality/python-docs/ruler.jsonl
seed() {  # dir codec tasks-regex: the committed 32K rows, so that they are not measured again
  mkdir -p $1
  [ -s $1/ruler.jsonl ] || grep "\"codec\": \"$2\"" $COMMITTED | grep '"length": 32768,' | grep -E "\"task\": \"($3)\"" \
    > $1/ruler.jsonl || true
}
G0=niah_single_1,niah_single_2,niah_multikey_3,niah_multikey_2
G1=niah_single_3,niah_multikey_1,niah_multivalue,niah_multiquery
seed $R/gpu0 oscar "${G0//,/|}"
seed $R/gpu1 oscar "${G1//,/|}"
seed $R/bf16 bf16 'niah_[a-z_0-9]+'

[ -d /tmp/pydocs ] || tar -C /tmp -xJf /tmp/gpu/data/pydocs-library.tar.xz
cd /tmp
CUDA_VISIBLE_DEVICES=0 python3 $REPO/benchmarks/needle_ablations.py --model $M --device cuda --ctx 8192 --samples 1 \
  --tasks niah_multikey_3 --python-docs /tmp/pydocs --work /tmp/abl/gpu0 --variants 11 --fit-only > $R/fit.log 2>&1
ART=/tmp/abl/gpu0/artifacts/v11; tail -n 2 $R/fit.log
ABLATE0=${ABLATE0-16}; ABLATE1=${ABLATE1-21}; N_ABL=${N_ABL:-30}
HARD32=niah_multikey_2,niah_multikey_3
for g in 0 1; do  # the ablations' bf16 pairing: the committed 32K rows (not measured again)
  mkdir -p /tmp/abl32/gpu$g/bf16
  [ -s /tmp/abl32/gpu$g/bf16/ruler.jsonl ] || grep '"codec": "bf16"' $COMMITTED | grep '"length": 32768,' \
    | grep -E "\"task\": \"(${HARD32//,/|})\"" > /tmp/abl32/gpu$g/bf16/ruler.jsonl || true
done
ablate() {  # gpu variants: fit in a fresh process (as gpu_combined.sh does), then run
  [ -n "$2" ] && [ $(left) -gt 60 ] || return 0
  local v; for v in ${2//,/ }; do  # a variant's committed rows (an earlier session) are not measured again
    local c=$REPO/benchmarks/results/quality/ablations-32k/v$v/ruler.jsonl
    [ -s $c ] && [ ! -s /tmp/abl32/gpu$1/v$v/ruler.jsonl ] && mkdir -p /tmp/abl32/gpu$1/v$v && cp $c /tmp/abl32/gpu$1/v$v/
  done
  local a=(--model $M --device cuda --ctx 32768 --samples $N_ABL --batch 64 --batch-tokens 131072 --prefill-chunk 2048
           --encoder kernels --tasks $HARD32 --python-docs /tmp/pydocs --work /tmp/abl32/gpu$1 --variants $2)
  CUDA_VISIBLE_DEVICES=$1 timeout -s TERM $(left) python3 $REPO/benchmarks/needle_ablations.py "${a[@]}" --fit-only \
    >> /tmp/abl32/gpu$1.log 2>&1
  [ $(left) -gt 60 ] || return 0
  CUDA_VISIBLE_DEVICES=$1 timeout -s TERM $(left) python3 $REPO/benchmarks/needle_ablations.py "${a[@]}" \
    --out /tmp/abl32/gpu$1.json >> /tmp/abl32/gpu$1.log 2>&1
  echo "gpu$1 ablate $2 -> rc $? at $(date +%T)" >> /tmp/abl32/gpu$1.log
}
run() {  # gpu tasks
  [ $(left) -gt 30 ] || return 0  # (timeout 0 would mean no limit)
  CUDA_VISIBLE_DEVICES=$1 timeout -s TERM $(left) python3 -m oscar_cluster.evaluation.cli --model $M --device cuda \
    --codecs oscar --artifact "oscar=$ART" --encoder kernels --tasks $2 --ctx 32k --samples $N --prefill-chunk 2048 \
    --batch 64 --batch-tokens 131072 --out $R/gpu$1 --quiet >> $R/gpu$1.log 2>&1
  echo "gpu$1 $2 -> rc $? at $(date +%T)" >> $R/gpu$1.log
}
{ run 0 $G0; ablate 0 "$ABLATE0"; } &
{ run 1 $G1; ablate 1 "$ABLATE1"; } &
wait
tail -n 3 $R/gpu0.log $R/gpu1.log
grep -hE "^v[0-9]|Error" /tmp/abl32/gpu*.log 2>/dev/null | tail -n 8
mkdir -p $R/ablations && cp /tmp/abl32/*.json /tmp/abl32/*.log $R/ablations/ 2>/dev/null
for g in 0 1; do for v in /tmp/abl32/gpu$g/v[0-9]*; do  # the variants' rows and artifacts' YAML
  [ -d $v ] && mkdir -p $R/ablations/gpu$g && cp -r $v $R/ablations/gpu$g/ \
    && cp /tmp/abl32/gpu$g/artifacts/$(basename $v)/oscar.yaml $R/ablations/gpu$g/$(basename $v)/ 2>/dev/null
done; done
MERGE=; for d in $R/gpu0 $R/gpu1 $R/bf16 /tmp/ruler-combined/gpu1; do [ -d $d ] && MERGE=$MERGE${MERGE:+,}$d; done
[ -n "$MERGE" ] && python3 -m oscar_cluster.evaluation.cli --merge $MERGE --out $R/merged > $R/merge.log 2>&1
python3 $REPO/benchmarks/ruler_table.py $R/merged/ruler.jsonl --out $R/merged/paired.json 2>&1 | tail -n 14
cp $ART/oscar.yaml $R/artifact-oscar.yaml 2>/dev/null
tar -C /tmp -czf $OUT/docs32k.tgz ruler-docs32k
