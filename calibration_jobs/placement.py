"""Where calibration workers go: `--num-gpus/--num-workers` -> a per-worker request, checked against
the cluster's resources before anything is scheduled (an impossible request is an error, never a
pending job), and the split of sequences into shards. Pure Python, no Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from oscar_cluster.errors import ConfigError, OscarError

__all__ = ["ClusterResourcesError", "WorkerPlan", "plan_workers", "shard", "fmt_resources"]

MAX_DEFAULT_CPU_WORKERS = 8


class ClusterResourcesError(OscarError):
    """The Ray cluster cannot hold the requested workers."""


@dataclass(frozen=True)
class WorkerPlan:
    """num_workers actors, each requesting gpus_per_worker GPUs (<= 1, may be fractional) and
    cpus_per_worker CPUs (threads for torch: max(1, int(cpus_per_worker)))."""

    num_workers: int
    gpus_per_worker: float
    cpus_per_worker: float

    def bundle(self) -> dict[str, float]:
        b = {"GPU": self.gpus_per_worker, "CPU": self.cpus_per_worker}
        return {k: v for k, v in b.items() if v > 0}


def fmt_resources(resources: dict) -> str:
    return ", ".join(f"{k} {v:g}" for k, v in sorted(resources.items()) if k in ("CPU", "GPU")) or "none"


def plan_workers(num_gpus: float | None, num_workers: int | None, num_sequences: int,
                 cluster: dict[str, float], nodes: list[dict[str, float]]) -> WorkerPlan:
    """Per-worker request for `num_gpus` GPUs in all (None: every GPU of the cluster; 0: CPU
    workers) over `num_workers` actors (None: one per GPU, or one per CPU up to 8 without GPUs).

    cluster: total resources (ray.cluster_resources()); nodes: each alive node's resources.
    Raises ClusterResourcesError when the cluster cannot hold the workers, ConfigError for
    impossible arguments."""
    total_gpus, total_cpus = float(cluster.get("GPU", 0)), float(cluster.get("CPU", 0))
    gpus = total_gpus if num_gpus is None else float(num_gpus)
    if gpus < 0 or (num_workers is not None and num_workers < 1):
        raise ConfigError(f"--num-gpus ({num_gpus}) must be >= 0 and --num-workers ({num_workers}) >= 1")
    if gpus > total_gpus:
        raise ClusterResourcesError(f"asked for {gpus:g} GPUs but the Ray cluster has {total_gpus:g} "
                                    f"(cluster: {fmt_resources(cluster)}); pass --num-gpus {total_gpus:g} or "
                                    "fewer (0 runs CPU workers)")
    if num_workers is not None and num_workers > num_sequences:
        raise ConfigError(f"--num-workers {num_workers} exceeds the {num_sequences} calibration sequences; "
                          "use fewer workers, more text (--max-tokens) or shorter --seq-len")
    if gpus > 0:
        n = num_workers or max(1, math.ceil(gpus))
        g = gpus / n
        if g > 1:
            raise ConfigError(f"{n} workers for {gpus:g} GPUs would give each {g:g}; a worker streams one layer "
                              f"on one GPU: pass --num-workers {math.ceil(gpus)} or more")
        cpus = min(1.0, total_cpus / n)
    else:
        n = num_workers or max(1, min(int(total_cpus), MAX_DEFAULT_CPU_WORKERS))
        g = 0.0
        if n > total_cpus:
            raise ClusterResourcesError(f"{n} CPU workers need {n} CPUs but the Ray cluster has {total_cpus:g} "
                                        f"(cluster: {fmt_resources(cluster)}); pass --num-workers "
                                        f"{int(total_cpus)} or fewer")
        cpus = float(max(1, int(total_cpus // n)))
    n = min(n, num_sequences)
    plan = WorkerPlan(n, g, cpus)
    fits = sum(min(math.floor(node.get(k, 0) / v + 1e-9) for k, v in plan.bundle().items()) for node in nodes)
    if fits < n:
        per_node = "; ".join(fmt_resources(node) for node in nodes)
        raise ClusterResourcesError(f"no room for {n} workers of {fmt_resources(plan.bundle())} each on the "
                                    f"cluster's nodes ({per_node}); ask for fewer GPUs or workers")
    return plan


def shard(seqs: list, num_workers: int) -> list[list]:
    """Contiguous, balanced shards of the sequences, in order."""
    n = len(seqs)
    return [seqs[k * n // num_workers:(k + 1) * n // num_workers] for k in range(num_workers)]


