"""Bounded load on `oscar-serve` (transformers engine, SmolLM2 + OSCAR artifact) over loopback.

    python benchmarks/serve_load.py --artifact runs/demo/artifact --out benchmarks/results/serve-load-cpu.json

Starts a local Ray cluster and the Serve app on 127.0.0.1, runs `--clients` concurrent clients for
`--requests` completions (`--max-tokens` each), and records latency percentiles, throughput,
errors (by status) and the replica's `oscar:` metrics after the run.
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import provenance, write_result  # noqa: E402


def _post(url: str, body: dict, timeout: float = 300) -> int:
    req = urllib.request.Request(url, data=json.dumps(body).encode(), headers={"content-type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            r.read()
            return r.status
    except urllib.error.HTTPError as e:
        return e.code
    except OSError:
        return 599


def _replica_rss() -> int:
    """Resident memory of the Serve replica processes (bytes), summed."""
    import psutil

    total = 0
    for p in psutil.process_iter(["cmdline", "memory_info"]):
        cmd = " ".join(p.info.get("cmdline") or [])
        if "ServeReplica" in cmd and p.info.get("memory_info"):
            total += p.info["memory_info"].rss
    return total


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--requests", type=int, default=64)
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--replicas", type=int, default=1)
    ap.add_argument("--duration", type=float, default=None,
                    help="soak: keep the clients busy for this many seconds instead of a fixed request count")
    args = ap.parse_args()
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray
    from ray import serve

    from oscar_cluster.serving.app import app_builder, serve_config
    from oscar_cluster.serving.config import parse_serve_config

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cfg = parse_serve_config({"http": {"host": "127.0.0.1", "port": port},
                              "model": {"name": "smollm2-135m", "artifact": args.artifact, "num_cpus": 1,
                                        "limits": {"max_tokens": args.max_tokens, "max_context": 1024},
                                        "autoscaling": {"min_replicas": args.replicas, "max_replicas": args.replicas,
                                                        "target_ongoing_requests": 4, "max_ongoing_requests": 32}}})
    doc = serve_config(cfg)
    ray.init(include_dashboard=False, log_to_driver=False)
    serve.start(http_options=doc["http_options"])
    serve.run(app_builder(doc["applications"][0]["args"]), name="oscar-load", route_prefix="/")
    base = f"http://127.0.0.1:{port}"
    lat, statuses = [], []
    lock = threading.Lock()
    todo = iter(range(args.requests)) if args.duration is None else iter(range(10**9))
    stop_at = None if args.duration is None else time.time() + args.duration

    def client():
        while stop_at is None or time.time() < stop_at:
            with lock:
                i = next(todo, None)
            if i is None:
                return
            t0 = time.perf_counter()
            st = _post(f"{base}/v1/completions", {"model": "smollm2-135m", "prompt": f"Write a sentence about {i}.",
                                                 "max_tokens": args.max_tokens, "temperature": 0.7, "seed": i})
            with lock:
                statuses.append(st)
                if st == 200:
                    lat.append(time.perf_counter() - t0)

    rss_before = _replica_rss()
    t0 = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(args.clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    rss_after = _replica_rss()
    with urllib.request.urlopen(f"{base}/metrics", timeout=30) as r:
        metrics = [ln for ln in r.read().decode().splitlines() if ln.startswith("oscar:") and "_bucket" not in ln]
    serve.shutdown()
    ray.shutdown()
    q = statistics.quantiles(lat, n=100) if len(lat) >= 2 else [float("nan")] * 99
    errors = {str(s): statuses.count(s) for s in set(statuses) if s != 200}
    result = {"benchmark": "oscar-serve bounded load, transformers engine, loopback", **provenance(),
              "model": "smollm2-135m", "codec": "oscar", "clients": args.clients, "requests": args.requests,
              "max_tokens": args.max_tokens, "replicas": args.replicas, "wall_s": wall,
              "duration_s": args.duration, "attempted": len(statuses), "completed": len(lat), "errors": errors,
              "server_5xx": sum(1 for st in statuses if 500 <= st < 600),
              "replica_rss_bytes_before": rss_before, "replica_rss_bytes_after": rss_after, "p50_s": q[49], "p90_s": q[89], "p99_s": q[98],
              "requests_per_s": len(lat) / wall, "metrics_after": metrics}
    write_result(args.out, result)
    print(f"{len(lat)}/{len(statuses)} ok in {wall:.1f} s, p50 {q[49]:.2f} s, p99 {q[98]:.2f} s, errors {errors or 0}, "
          f"replica RSS {rss_before / 2**20:.0f} -> {rss_after / 2**20:.0f} MiB")


if __name__ == "__main__":
    main()
