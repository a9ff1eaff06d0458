#!/usr/bin/env bash
# Calibration timing for one model on the GPU machine, after benchmarks/gpu_calibration.sh set up
# /tmp/site (Ray, this package) and the model's GGUF parts were brought to /tmp/gpu/<parts dir>.
#   bash benchmarks/gpu_calibration_model.sh qwen2.5-coder-1.5b /tmp/gpu/qwen
set -euo pipefail
M=$1; PARTS=$2
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=/tmp/site OSCAR_CACHE_DIR=/tmp/oscar
mkdir -p /tmp/oscar/gguf
[ -f "/tmp/oscar/gguf/$M.gguf" ] || { python3 /tmp/gpu/parts.py join "$PARTS" "$M.gguf" "/tmp/oscar/gguf/$M.gguf" && rm -f "$PARTS"/*.part*; }
python3 -m pip install -q --no-index --no-deps --no-build-isolation --no-compile --upgrade --target /tmp/site . 2>&1 | grep -v WARN || true
cd /tmp
python3 -m oscar_cluster.models_cli fetch "$M" --quiet
s=$(date +%s.%N)
python3 -m oscar_cluster.calibrate_cli --model "$M" --out "/tmp/cal_$M" --device cuda --format json --quiet > "$OUT/inproc.json"
m=$(date +%s.%N)
python3 -m oscar_cluster.calibrate_cli --model "$M" --out "/tmp/calray_$M" --address local --num-gpus 1 --format json --quiet > "$OUT/ray.json"
e=$(date +%s.%N)
python3 - "$M" "$s" "$m" "$e" <<'PY'
import json, os, sys, platform, datetime, torch, ray, transformers
from safetensors.torch import load_file
M = sys.argv[1]; s, m, e = map(float, sys.argv[2:])
a = load_file(f"/tmp/cal_{M}/transforms.safetensors"); b = load_file(f"/tmp/calray_{M}/transforms.safetensors")
out = os.environ["OUT"]
inproc = json.load(open(f"{out}/inproc.json")); rayrec = json.load(open(f"{out}/ray.json"))
res = {"benchmark": "calibration wall time on the GPU machine, in-process (cuda) vs Ray (1 GPU worker)",
       "model": M, "tokens": inproc.get("tokens"), "target_context": inproc.get("target_context"),
       "rows": [{"mode": "in-process", "device": "cuda", "seconds_command": round(m - s, 2),
                 "seconds_calibration": inproc.get("seconds_total"), "seconds_statistics": inproc.get("seconds_statistics")},
                {"mode": "ray", "workers": 1, "num_gpus": 1, "seconds_command": round(e - m, 2),
                 "timings": {k: v for k, v in rayrec.items() if "second" in k}}],
       "max_abs_diff_artifact_tensors": max(float((a[k].double() - b[k].double()).abs().max()) for k in a),
       "same_keys": sorted(a) == sorted(b),
       "bits_per_element": json.load(open(f"{out}/inproc.json")).get("bits_per_element"),
       "gpu": torch.cuda.get_device_name(0),
       "versions": {"torch": torch.__version__, "ray": ray.__version__, "transformers": transformers.__version__,
                    "python": platform.python_version()},
       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "command": f"bash benchmarks/gpu_calibration_model.sh {M} (device tool, nvidia-h200)"}
json.dump(res, open(f"{out}/calibration-{M}-h200.json", "w"), indent=2)
print(json.dumps(res, indent=2))
PY
