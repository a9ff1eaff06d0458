#!/usr/bin/env bash
# One call after the parts arrived (benchmarks/README.md): setup, the oscar artifact (in-process
# calibration on 32,768 Shakespeare tokens, as the first quality run), tensor-parallel attention
# with TP=2 (issue 10), and a check that oscar-eval's kernel encoder matches the codec's on the GPU.
set -uo pipefail
export PYTHONUNBUFFERED=1 NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
REPO=$(pwd)
bash benchmarks/gpu_setup.sh || exit 1
export PYTHONPATH=/tmp/site OSCAR_CACHE_DIR=/tmp/oscar
cd /tmp
if [ ! -f /tmp/cal_inproc/oscar.yaml ]; then
  python3 -m oscar_cluster.calibrate_cli --model qwen2.5-coder-1.5b --out /tmp/cal_inproc --device cuda \
    --max-tokens 32768 --format json --quiet > $OUT/cal_inproc.json
fi
timeout 200 python3 $REPO/benchmarks/tp_attention.py --artifact /tmp/cal_inproc --q-heads 12 --world 2 \
  --out $OUT/tp-attention-h200x2.json > $OUT/tp.log 2>&1; echo "tp rc $?"; tail -n 15 $OUT/tp.log
timeout 150 python3 $REPO/benchmarks/encoder_check.py --model qwen2.5-coder-1.5b --artifact /tmp/cal_inproc --device cuda \
  --tokens 4096 --batch 4 --steps 16 --out $OUT/encoder-check-h200.json 2>&1 | grep -v Loading | tail -n 20
