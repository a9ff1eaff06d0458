#!/usr/bin/env bash
# One-time setup of a fresh GPU machine (device tool) for the Qwen2.5-Coder-1.5B runs, after the
# parts were brought to /tmp/gpu by back-to-back calls (benchmarks/README.md says how):
#   /tmp/gpu/q62/qwen2.5-coder-1.5b.gguf.part*  /tmp/gpu/small/*.whl  /tmp/gpu/parts.py
#   (and /tmp/gpu/r62/ray-*.whl.part* when Ray jobs will run)
# Joins and checks (sha256) the parts, installs the small wheels (and Ray) and this package into /tmp/site,
# and registers the model under OSCAR_CACHE_DIR=/tmp/oscar. Idempotent; re-installs this package.
set -euo pipefail
G=/tmp/gpu
export PYTHONPATH=/tmp/site OSCAR_CACHE_DIR=/tmp/oscar
mkdir -p /tmp/oscar/gguf /tmp/site
M=qwen2.5-coder-1.5b
if [ ! -f /tmp/oscar/gguf/$M.gguf ]; then
  python3 $G/parts.py join $G/q62 $M.gguf /tmp/oscar/gguf/$M.gguf && rm -f $G/q62/*.part*
fi
RAY=ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
if [ ! -f /tmp/site/.small-wheels ]; then  # the small wheels, and Ray when its parts came along (calibration jobs)
  WHEELS=("$G"/small/*.whl)
  if ls $G/r62/$RAY.part* >/dev/null 2>&1; then
    python3 $G/parts.py join $G/r62 $RAY $G/$RAY && WHEELS+=("$G/$RAY")
  else
    echo "gpu_setup: no Ray parts in $G/r62; installing without Ray (Ray jobs will not run)"
  fi
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site "${WHEELS[@]}" 2>&1 | grep -v WARN || true
  touch /tmp/site/.small-wheels
fi
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target /tmp/site . 2>&1 | grep -v WARN || true
(cd /tmp && python3 -m oscar_cluster.models_cli fetch $M --quiet)
nvidia-smi --query-gpu=index,name,memory.total,driver_version --format=csv,noheader
