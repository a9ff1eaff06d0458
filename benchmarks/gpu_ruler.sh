#!/usr/bin/env bash
# Issue 4's RULER runs on a 2-GPU machine (after benchmarks/gpu_setup.sh; the oscar artifact at $ART):
# oscar-eval in left-padded batches, one process per GPU, each working through its own list of
# stages until the deadline (seconds from now, first argument). Resumable: rows are appended per
# batch under /tmp/ruler/gpu<N>, and a re-run skips finished samples. Each call merges both GPUs'
# rows into $OUT/ruler (summary.json/csv, ruler.jsonl, plots).
#   ART=/tmp/cal_inproc bash benchmarks/gpu_ruler.sh 560
# A stage is CODECS|TASKS|CTX|SAMPLES; GPU0_STAGES / GPU1_STAGES override the lists (';'-separated).
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site OSCAR_CACHE_DIR=/tmp/oscar TOKENIZERS_PARALLELISM=false
DEADLINE=$(( $(date +%s) + ${1:-560} - 20 ))
ART=${ART:-/tmp/cal_inproc}
M=qwen2.5-coder-1.5b
N8=niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery
GPU0_STAGES=${GPU0_STAGES:-"bf16|$N8|8k,32k|50;bf16|$N8|4k,16k|50;kivi2|$N8|8k,32k|10;bf16|vt,cwe,fwe|8k,32k|20;kivi2|$N8|4k,16k|5"}
GPU1_STAGES=${GPU1_STAGES:-"oscar|$N8|8k,32k|50;oscar|$N8|4k,16k|50;oscar|vt,cwe,fwe|8k,32k|20;int2,hadamard2,oscar-paper|$N8|8k,32k|2;oscar-paper|$N8|4k,16k|2"}
BATCH=${BATCH:-64}; BATCH_TOKENS=${BATCH_TOKENS:-262144}
cd /tmp
run_gpu() {  # gpu stages
  local g=$1 out=/tmp/ruler/gpu$1
  IFS=';' read -ra stages <<< "$2"
  for st in "${stages[@]}"; do
    IFS='|' read -r codecs tasks ctx samples <<< "$st"
    local left=$(( DEADLINE - $(date +%s) )); [ $left -gt 30 ] || break
    local art=(); [[ ",$codecs," == *,oscar,* ]] && art=(--artifact "oscar=$ART")
    CUDA_VISIBLE_DEVICES=$g timeout -s TERM $left python3 -m oscar_cluster.evaluation.cli --model $M --device cuda \
      --codecs $codecs --tasks $tasks --ctx $ctx --samples $samples --prefill-chunk 2048 --batch $BATCH \
      --batch-tokens $BATCH_TOKENS "${art[@]}" --out $out --quiet >> /tmp/ruler/gpu$g.log 2>&1
    echo "gpu$g stage $st -> rc $? at $(date +%T)" >> /tmp/ruler/gpu$g.log
  done
}
mkdir -p /tmp/ruler
run_gpu 0 "$GPU0_STAGES" & p0=$!
run_gpu 1 "$GPU1_STAGES" & p1=$!
wait $p0 $p1
tail -n 6 /tmp/ruler/gpu0.log /tmp/ruler/gpu1.log
python3 -m oscar_cluster.evaluation.cli --merge /tmp/ruler/gpu0,/tmp/ruler/gpu1 --out $OUT/ruler
cp /tmp/ruler/gpu*.log $OUT/ruler/ 2>/dev/null
python3 - <<'PY'
import json, os, statistics
d = json.load(open(os.environ["OUT"] + "/ruler/summary.json"))
for s in d["summary"]:
    if s["task"] in ("niah_mean", "vt", "cwe", "fwe"):
        print(f'{s["codec"]:>12} {s["length"]:>6} {s["task"]:>10} {s["score"]:6.1f} ({s["samples"]} rows) {s["bits_per_element"] or 0:.3f} b')
rows = [json.loads(l) for l in open(os.environ["OUT"] + "/ruler/ruler.jsonl")]
for c in sorted({r["codec"] for r in rows}):
    for n in sorted({r["length"] for r in rows}):
        sec = [r["seconds"] for r in rows if r["codec"] == c and r["length"] == n]
        if sec:
            print(f"{c:>12} {n:>6} median s/sample {statistics.median(sec):.3f} over {len(sec)}")
PY
