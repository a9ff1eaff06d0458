#!/usr/bin/env bash
# Calibration timing on the GPU machine (H200): in-process vs Ray (1 GPU worker), SmolLM2-135M.
# Expects /tmp/gpu to hold the parts brought by earlier calls (Ray wheel, SmolLM2 GGUF) and .gpu/
# (carried) to hold the rest. Writes JSON under $OUT.
set -euo pipefail
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
G=/tmp/gpu
mkdir -p $G && cp -r .gpu/* $G/
python3 $G/parts.py join $G ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl $G/ray-2.60.0-cp312-cp312-manylinux2014_x86_64.whl
python3 $G/parts.py join $G SmolLM2-135M-Instruct.Q4_1.gguf $G/smollm2.gguf
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site $G/ray-*.whl $G/small/*.whl
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --target /tmp/site .
export PYTHONPATH=/tmp/site OSCAR_CACHE_DIR=/tmp/oscar
mkdir -p /tmp/oscar/gguf && mv $G/smollm2.gguf /tmp/oscar/gguf/smollm2-135m.gguf
cd /tmp
python3 -m oscar_cluster.models_cli fetch smollm2-135m --quiet
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader > $OUT/gpu.txt
start=$(date +%s.%N)
python3 -m oscar_cluster.calibrate_cli --model smollm2-135m --out /tmp/a_inproc --device cuda --format json --quiet > $OUT/inproc.json
mid=$(date +%s.%N)
python3 -m oscar_cluster.calibrate_cli --model smollm2-135m --out /tmp/a_ray --address local --num-gpus 1 --format json --quiet > $OUT/ray.json
end=$(date +%s.%N)
python3 - "$start" "$mid" "$end" <<'PY'
import json, os, sys, platform, datetime, torch, ray, transformers
from safetensors.torch import load_file
a = load_file("/tmp/a_inproc/transforms.safetensors"); b = load_file("/tmp/a_ray/transforms.safetensors")
diff = max(float((a[k].double() - b[k].double()).abs().max()) for k in a)
out = os.environ["OUT"]
inproc = json.load(open(f"{out}/inproc.json")); rayrec = json.load(open(f"{out}/ray.json"))
start, mid, end = map(float, sys.argv[1:])
res = {
  "benchmark": "calibration wall time on the GPU machine, in-process (cuda) vs Ray (1 GPU worker)",
  "model": "smollm2-135m", "tokens": inproc.get("tokens"),
  "rows": [
    {"mode": "in-process", "device": "cuda", "seconds_command": round(mid - start, 2),
     "seconds_calibration": inproc.get("seconds_total"), "seconds_statistics": inproc.get("seconds_statistics")},
    {"mode": "ray", "workers": 1, "num_gpus": 1, "seconds_command": round(end - mid, 2),
     "timings": {k: v for k, v in rayrec.items() if "second" in k or k == "timings"}},
  ],
  "max_abs_diff_artifact_tensors": diff, "same_keys": sorted(a) == sorted(b),
  "gpu": open(f"{out}/gpu.txt").read().strip(),
  "versions": {"torch": torch.__version__, "ray": ray.__version__, "transformers": transformers.__version__,
               "python": platform.python_version()},
  "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
  "command": "bash benchmarks/gpu_calibration.sh (device tool, nvidia-h200)",
}
json.dump(res, open(f"{out}/calibration-smollm2-h200.json", "w"), indent=2)
print(json.dumps(res, indent=2))
PY
