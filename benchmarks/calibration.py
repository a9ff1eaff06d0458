"""Calibration wall time on CPU: in-process `calibrate` against Ray workers, same data, same run.

    python benchmarks/calibration.py --out benchmarks/results/calibration-smollm2-cpu.json

SmolLM2-135M on 16384 Shakespeare tokens (8 sequences of 2048). The in-process baseline
(oscar_cluster.calibrate: model load, whole-model statistics, fit, artifact) runs first; then a
local Ray cluster starts (timed apart) and calibrate_distributed runs with each worker count
(shards layer-streamed in parallel actors, per-layer fits in tasks). Every artifact is compared
with the baseline's (max abs difference over all tensors). Writes JSON with the host, versions,
date and command.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path

from _record import provenance, write_result  # benchmarks/ is on sys.path when run as a script

import torch


def max_abs_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].double() - b[k].double()).abs().max()) for k in a)


def run(out: str, max_tokens: int = 16384, seq_len: int = 2048, workers: tuple[int, ...] = (2,),
        num_cpus: int | None = None) -> dict:
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from oscar_cluster.artifact import load_artifact
    from oscar_cluster.calibrate import CalibrationConfig, calibrate
    from oscar_cluster.calibration_jobs import ClusterConfig, calibrate_distributed

    tmp = Path(tempfile.mkdtemp(prefix="oscar-bench-"))
    cfg = lambda name: CalibrationConfig(out=str(tmp / name), max_tokens=max_tokens, seq_len=seq_len)  # noqa: E731
    t0 = time.perf_counter()
    base_path, base = calibrate(cfg("in-process"), progress=False)
    t_base = time.perf_counter() - t0
    ref = load_artifact(base_path).state_dict()
    rows = [{"mode": "in-process", "workers": 0, "threads": torch.get_num_threads(), "seconds_wall": round(t_base, 2),
             "seconds_statistics": base["seconds_statistics"], "max_abs_diff_vs_in_process": 0.0}]
    print(f"in-process: {t_base:.1f} s (statistics {base['seconds_statistics']} s)", flush=True)
    t0 = time.perf_counter()
    ray.init(num_cpus=num_cpus or os.cpu_count(), include_dashboard=False, object_store_memory=256 * 2**20,
             log_to_driver=False, configure_logging=False)
    t_init = time.perf_counter() - t0
    try:
        for n in workers:
            t0 = time.perf_counter()
            path, rec = calibrate_distributed(cfg(f"ray-{n}"), ClusterConfig(num_gpus=0, num_workers=n), progress=False)
            wall = time.perf_counter() - t0
            diff = max_abs_diff(load_artifact(path).state_dict(), ref)
            rows.append({"mode": "ray", "workers": n, "threads": [w["threads"] for w in rec["workers"]],
                         "seconds_wall": round(wall, 2), "seconds_wall_with_ray_init": round(wall + t_init, 2),
                         "seconds_workers_ready": rec["seconds_workers_ready"], "seconds_layers": rec["seconds_layers"],
                         "seconds_fit": rec["seconds_fit"], "max_abs_diff_vs_in_process": diff})
            print(f"ray, {n} workers: {wall:.1f} s (+{t_init:.1f} s ray.init; workers ready "
                  f"{rec['seconds_workers_ready']} s, layers {rec['seconds_layers']} s, fit {rec['seconds_fit']} s), "
                  f"max abs diff {diff:.2g}", flush=True)
    finally:
        ray.shutdown()
        shutil.rmtree(tmp, ignore_errors=True)
    result = {
        "benchmark": "calibration wall time, in-process vs Ray workers (CPU)",
        "model": "smollm2-135m", "tokens": base["tokens"], "seq_len": seq_len, "ray_init_seconds": round(t_init, 2),
        "rows": rows,
        "notes": "seconds_wall for in-process includes the model load; for Ray, placement, worker processes, "
                 "one model load per worker, the layer loop and the fits (ray.init apart).",
        **provenance(ray=ray.__version__),
    }
    return write_result(out, result)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/calibration-smollm2-cpu.json")
    p.add_argument("--max-tokens", type=int, default=16384)
    p.add_argument("--seq-len", type=int, default=2048)
    p.add_argument("--workers", type=int, nargs="+", default=[2])
    p.add_argument("--num-cpus", type=int, default=None, help="CPUs of the local Ray cluster (default: all)")
    a = p.parse_args()
    run(a.out, a.max_tokens, a.seq_len, tuple(a.workers), a.num_cpus)
