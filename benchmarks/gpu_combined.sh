#!/usr/bin/env bash
# After gpu_ablations.sh: GPU 0 fits the combined oscar variant (the best calibration text with every
# knob that beat the knob-free variant of its text, within 2.25 true bits at 8K, from this machine's
# rows and the committed quality/ablations-qwen-8k-h200.json; needle_ablations.py --combine) and runs
# it on the hard tasks; GPU 1 meanwhile runs bf16 on all 8 needle tasks at 32K. Then both run the
# combined artifact on the 8 needle tasks at 8K and 32K (50 samples), split by task, until the
# deadline (seconds from now). Resumable, like gpu_ruler.sh; rows under /tmp/ruler-combined (apart from
# gpu_ruler.sh's rows of another artifact), merged into $OUT/ruler. 8K bf16 rows to pair with are the
# committed ones (quality/ruler.jsonl, same prompts): benchmarks/ruler_table.py on both files.
#   bash benchmarks/gpu_combined.sh 560
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site OSCAR_CACHE_DIR=/tmp/oscar TOKENIZERS_PARALLELISM=false
REPO=$(pwd)
DEADLINE=$(( $(date +%s) + ${1:-560} - 20 ))
M=qwen2.5-coder-1.5b
ART=/tmp/abl/gpu0/artifacts/vcombined
A=niah_single_1,niah_single_2,niah_single_3,niah_multikey_1
B=niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery
ENC=${ENCODER:-codec}
R=/tmp/ruler-combined
mkdir -p $R $OUT/ablations
cd /tmp
stage() {  # gpu codecs tasks ctx samples
  local left=$(( DEADLINE - $(date +%s) )); [ $left -gt 30 ] || return 0
  local art=(); [[ ",$2," == *,oscar,* ]] && art=(--artifact "oscar=$ART")
  CUDA_VISIBLE_DEVICES=$1 timeout -s TERM $left python3 -m oscar_cluster.evaluation.cli --model $M --device cuda \
    --codecs $2 --tasks $3 --ctx $4 --samples $5 --prefill-chunk 2048 --batch 64 --batch-tokens 262144 \
    --encoder $ENC "${art[@]}" --out $R/gpu$1 --quiet >> $R/gpu$1.log 2>&1
  echo "gpu$1 stage $2|$3|$4|$5 -> rc $? at $(date +%T)" >> $R/gpu$1.log
}
( stage 1 bf16 $A,$B 32k 50
  while [ ! -f $ART/variant.json ] && [ ! -f /tmp/abl/combine.done ] && [ $(date +%s) -lt $DEADLINE ]; do sleep 5; done
  [ -f $ART/variant.json ] && stage 1 oscar $B 32k 50 ) &
p1=$!
rm -f /tmp/abl/combine.done
EARLIER=$REPO/benchmarks/results/quality/ablations-qwen-8k-h200.json
for f in /tmp/abl/gpu0.json /tmp/abl/gpu1.json; do [ -f $f ] && EARLIER=$EARLIER,$f; done
if [ ! -f /tmp/abl/combined.json ]; then
  CUDA_VISIBLE_DEVICES=0 timeout -s TERM $(( DEADLINE - $(date +%s) )) python3 $REPO/benchmarks/needle_ablations.py \
    --model $M --device cuda --ctx 8192 --samples 50 --batch 64 --prefill-chunk 2048 --encoder $ENC \
    --tasks niah_multikey_2,niah_multikey_3,niah_multivalue --python-docs /tmp/pydocs --variants "" \
    --combine $EARLIER --work /tmp/abl/gpu0 --out /tmp/abl/combined.json \
    > /tmp/abl/combined.log 2>&1
fi
touch /tmp/abl/combine.done
grep -E "^v|Error|error" /tmp/abl/combined.log | tail -n 5
cp /tmp/abl/combined.json /tmp/abl/combined.log $ART/variant.json $OUT/ablations/ 2>/dev/null
if [ -f $ART/variant.json ]; then stage 0 oscar $A,$B 8k 50; stage 0 oscar $A 32k 50; fi
wait $p1
tail -n 4 $R/gpu0.log $R/gpu1.log
python3 -m oscar_cluster.evaluation.cli --merge $R/gpu0,$R/gpu1 --out $OUT/ruler
python3 $REPO/benchmarks/ruler_table.py $OUT/ruler/ruler.jsonl --out $OUT/ruler/paired-new.json 2>&1 | tail -n 30
