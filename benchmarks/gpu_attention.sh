#!/usr/bin/env bash
# Kernel benchmark on the GPU machine: install this package beside the image's torch/triton, run
# benchmarks/attention.py, leave the JSON (and the log) under $OUT.  Usage: gpu_attention.sh [--quick] [--sections ...]
set -euo pipefail
export PYTHONUNBUFFERED=1
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site . 2>&1 | tail -2
export PYTHONPATH=/tmp/site
nvidia-smi --query-gpu=name,memory.total,driver_version,clocks.max.sm --format=csv,noheader | tee $OUT/gpu.txt
REPO=$(pwd); cd /tmp && python3 $REPO/benchmarks/attention.py --out $OUT/attention.json "$@" 2>&1 | tee $OUT/attention.log
