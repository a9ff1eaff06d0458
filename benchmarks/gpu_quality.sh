#!/usr/bin/env bash
# Issue 4 on the GPU machine (after benchmarks/gpu_setup.sh; the oscar artifact at $ART): oscar-eval on
# Qwen2.5-Coder-1.5B, one process per GPU, each with half of the codecs, resumable under /tmp/quality.
# Stages, in order, until the deadline (seconds from now, first argument):
#   A  attention-output error (4096 tokens of wikitext-2) and wikitext-2 perplexity (32K windows)
#   B  the 8 RULER needle tasks at 8K and 32K (sample-major: every task gets the same count)
#   C  the needle grid (5 depths) at 4K-32K, 1 sample
#   D  the 8 needle tasks at 4K and 16K, and vt/cwe/fwe at 8K and 32K
# Each call merges both GPUs' results into $OUT/quality (summary.json/csv, plots, ppl.json, attn.json).
#   ART=/tmp/cal_inproc bash benchmarks/gpu_quality.sh 540
set -uo pipefail
export PYTHONUNBUFFERED=1 PYTHONPATH=/tmp/site OSCAR_CACHE_DIR=/tmp/oscar TOKENIZERS_PARALLELISM=false
DEADLINE=$(( $(date +%s) + ${1:-540} - 25 ))
ART=${ART:-/tmp/cal_inproc}
M=qwen2.5-coder-1.5b
WIKI=$(pwd)/.gpu/data/wiki.test.raw; [ -f "$WIKI" ] || WIKI=/tmp/gpu/data/wiki.test.raw
NEEDLES=niah_single_1,niah_single_2,niah_single_3,niah_multikey_1,niah_multikey_2,niah_multikey_3,niah_multivalue,niah_multiquery
SAMPLES=${SAMPLES:-50}
cd /tmp
run_gpu() {  # gpu codecs
  local g=$1 codecs=$2 out=/tmp/quality/gpu$1
  local art="oscar=$ART"; [[ $codecs == *oscar,* || $codecs == *oscar ]] || art=""
  local common=(--model $M --codecs $codecs --device cuda --prefill-chunk 2048 --out $out --quiet)
  [ -n "$art" ] && common+=(--artifact $art)
  stage() { local left=$(( DEADLINE - $(date +%s) )); [ $left -gt 30 ] || return 0
    CUDA_VISIBLE_DEVICES=$g timeout -s TERM $left python3 -m oscar_cluster.evaluation.cli "${common[@]}" "$@" \
      >> /tmp/quality/gpu$g.log 2>&1; echo "gpu$g stage $* -> rc $? at $(date +%T)" >> /tmp/quality/gpu$g.log; }
  [ -f $out/ppl.json ] || stage --tasks attn,ppl --ctx 32k --ppl-file $WIKI --ppl-windows 3 --attn-tokens 4096
  stage --tasks $NEEDLES --ctx 8k,32k --samples $SAMPLES
  stage --tasks niah --ctx 4k,8k,16k,32k --samples 1
  stage --tasks $NEEDLES --ctx 4k,16k --samples $SAMPLES
  stage --tasks vt,cwe,fwe --ctx 8k,32k --samples $SAMPLES
}
mkdir -p /tmp/quality
run_gpu 0 bf16,oscar,int2 & p0=$!
run_gpu 1 kivi2,hadamard2,oscar-paper & p1=$!
wait $p0 $p1
tail -n 8 /tmp/quality/gpu0.log /tmp/quality/gpu1.log
python3 -m oscar_cluster.evaluation.cli --merge /tmp/quality/gpu0,/tmp/quality/gpu1 --out $OUT/quality
cp /tmp/quality/gpu*.log $OUT/quality/ 2>/dev/null
mkdir -p $OUT/quality/artifacts && cp -r /tmp/quality/gpu1/artifacts/oscar-paper $OUT/quality/artifacts/ 2>/dev/null
python3 - <<'PY'
import json, os
d = json.load(open(os.environ["OUT"] + "/quality/summary.json"))
for s in d["summary"]:
    if s["task"] == "niah_mean":
        print(f'{s["codec"]:>12} {s["length"]:>6} niah_mean {s["score"]:6.1f} ({s["samples"]} samples/task-ish) {s["bits_per_element"] or 0:.3f} b')
for name in ("ppl.json", "attn.json"):
    p = os.environ["OUT"] + "/quality/" + name
    if os.path.exists(p):
        for c, r in json.load(open(p))["codecs"].items():
            print(name, c, {k: r[k] for k in r if k in ("ppl", "increase_vs_bf16", "geomean", "bits_per_element")})
PY
