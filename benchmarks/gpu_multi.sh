#!/usr/bin/env bash
# Issue 10 on a 2-GPU machine (after benchmarks/gpu_setup.sh): oscar-calibrate on Qwen2.5-Coder-1.5B
# in-process on one GPU, on Ray with 1 GPU and on Ray with 2 GPUs (same tokens); the artifacts are
# compared tensor by tensor. Then tensor-parallel attention (TP=2) with the calibrated artifact.
# Writes $OUT/multigpu-calibration-h200x2.json and $OUT/tp-attention-h200x2.json.
#   TOKENS=65536 bash benchmarks/gpu_multi.sh
set -euo pipefail
export PYTHONUNBUFFERED=1 RAY_AUTH_MODE=disabled NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
export PYTHONPATH=/tmp/site OSCAR_CACHE_DIR=/tmp/oscar
M=qwen2.5-coder-1.5b; TOKENS=${TOKENS:-65536}
REPO=$(pwd)
cd /tmp
rm -rf /tmp/cal_inproc /tmp/cal_ray1 /tmp/cal_ray2
t0=$(date +%s.%N)
python3 -m oscar_cluster.calibrate_cli --model $M --out /tmp/cal_inproc --device cuda --max-tokens $TOKENS --format json --quiet > $OUT/cal_inproc.json
t1=$(date +%s.%N)
python3 -m oscar_cluster.calibrate_cli --model $M --out /tmp/cal_ray1 --address local --num-gpus 1 --max-tokens $TOKENS --format json --quiet > $OUT/cal_ray1.json
t2=$(date +%s.%N)
python3 -m oscar_cluster.calibrate_cli --model $M --out /tmp/cal_ray2 --address local --num-gpus 2 --max-tokens $TOKENS --format json --quiet > $OUT/cal_ray2.json
t3=$(date +%s.%N)
python3 - "$M" "$TOKENS" "$t0" "$t1" "$t2" "$t3" <<'PY'
import datetime, json, os, platform, sys
import torch, ray, transformers
from safetensors.torch import load_file
M, tokens = sys.argv[1], int(sys.argv[2]); t = list(map(float, sys.argv[3:]))
out = os.environ["OUT"]
arts = {k: load_file(f"/tmp/cal_{k}/transforms.safetensors") for k in ("inproc", "ray1", "ray2")}
def diff(a, b):
    return {"same_keys": sorted(a) == sorted(b),
            "max_abs_diff": max(float((a[k].double() - b[k].double()).abs().max()) for k in a),
            "max_rel_diff": max(float((a[k].double() - b[k].double()).abs().max() / b[k].double().abs().max().clamp_min(1e-30)) for k in a),
            "bitwise_equal_tensors": sum(bool(torch.equal(a[k], b[k])) for k in a), "tensors": len(a)}
recs = {k: json.load(open(f"{out}/cal_{k}.json")) for k in arts}
rows = []
for (k, mode, gpus), (s, e) in zip((("inproc", "in-process", 1), ("ray1", "ray", 1), ("ray2", "ray", 2)),
                                   ((t[0], t[1]), (t[1], t[2]), (t[2], t[3]))):
    r = recs[k]
    rows.append({"mode": mode, "num_gpus": gpus, "seconds_command": round(e - s, 2),
                 "timings": {x: r[x] for x in r if "second" in x}, "workers": r.get("workers"),
                 "bits_per_element": r.get("bits_per_element")})
res = {"benchmark": "oscar-calibrate wall time on 1 vs 2 GPUs of one machine, and artifact equality",
       "model": M, "tokens": tokens, "rows": rows,
       "speedup_ray2_vs_ray1_command": round(rows[1]["seconds_command"] / rows[2]["seconds_command"], 3),
       "artifact_ray2_vs_ray1": diff(arts["ray2"], arts["ray1"]),
       "artifact_ray2_vs_inproc": diff(arts["ray2"], arts["inproc"]),
       "artifact_ray1_vs_inproc": diff(arts["ray1"], arts["inproc"]),
       "gpu": [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())],
       "versions": {"torch": torch.__version__, "ray": ray.__version__, "transformers": transformers.__version__,
                    "python": platform.python_version()},
       "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
       "command": f"TOKENS={tokens} bash benchmarks/gpu_multi.sh (device tool, nvidia-h200-x2)"}
json.dump(res, open(f"{out}/multigpu-calibration-h200x2.json", "w"), indent=2)
print(json.dumps({k: res[k] for k in ("rows", "speedup_ray2_vs_ray1_command", "artifact_ray2_vs_ray1", "artifact_ray2_vs_inproc")}, indent=1))
PY
python3 $REPO/benchmarks/tp_attention.py --artifact /tmp/cal_inproc --q-heads 12 --world 2 --out $OUT/tp-attention-h200x2.json 2>&1 | tail -5
