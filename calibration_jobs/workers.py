"""Ray pieces of distributed calibration: placement groups, shard actors, per-layer fit tasks.

`reserve` holds the workers' resources in a placement group, with a timeout (the request was
checked against the cluster first: `placement.plan_workers`). `ShardWorker` is an actor streaming
one shard of calibration sequences through a `LayerStreamer`; it restarts after a crash
(`max_restarts`, `max_task_retries`) and catches up by replaying earlier layers. `fit_layer` fits
one layer's transforms (every KV head's eigendecompositions) in its own task.
"""

from __future__ import annotations

import os
from pathlib import Path

import ray
import torch
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from oscar_cluster import codecs
from oscar_cluster.calibration import LayerStatistics
from oscar_cluster.errors import ConfigError

from .placement import ClusterResourcesError, WorkerPlan, fmt_resources as _fmt
from .streaming import LayerStreamer

__all__ = ["reserve", "release", "ShardWorker", "start_workers", "fit_layer"]


def reserve(plan: WorkerPlan, timeout_s: float):
    """A placement group of one bundle per worker, ready within `timeout_s` or an error."""
    pg = placement_group([plan.bundle()] * plan.num_workers, strategy="PACK")
    try:
        ray.get(pg.ready(), timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        remove_placement_group(pg)
        raise ClusterResourcesError(
            f"could not reserve {plan.num_workers} workers of {_fmt(plan.bundle())} within {timeout_s:g} s: other "
            f"jobs hold the resources (available now: {_fmt(ray.available_resources())}); retry later or ask for "
            "fewer") from None
    return pg


def release(workers: list, pg) -> None:
    for w in workers:
        ray.kill(w, no_restart=True)
    if pg is not None:
        remove_placement_group(pg)


@ray.remote
class ShardWorker:
    """Streams one shard of sequences layer by layer through the model, on this actor's GPU (or CPU).

    model: name or path for `oscar_cluster.models.load` (each node needs it installed). The shard
    comes with every `statistics` call (an object-store reference the driver holds), so a
    restarted incarnation rebuilds its streamer from it and replays to the asked layer; the
    constructor takes no object-store arguments, which Ray could lose before a restart.
    fault: test hook, {"layer": L, "marker": path}: the process exits at layer L unless `marker`
    exists, which it creates first (a crash that happens once)."""

    def __init__(self, model: str, sinks: int, query_stride: int, dtype: str | None, threads: int,
                 fault: dict | None = None):
        from transformers.utils import logging as hf_logging

        from oscar_cluster.models import load

        hf_logging.disable_progress_bar()
        torch.set_num_threads(max(1, threads))
        self.gpu_ids = [str(i) for i in ray.get_gpu_ids()]
        self.device = torch.device("cuda:0" if self.gpu_ids and torch.cuda.is_available() else "cpu")
        self.dtype = dtype or ("bfloat16" if self.device.type == "cuda" else "float32")
        self.model, _ = load(model, dtype=self.dtype, device="cpu")
        self.sinks, self.query_stride, self.fault = sinks, query_stride, fault
        self.streamer: LayerStreamer | None = None

    def info(self) -> dict:
        ctx = ray.get_runtime_context()
        return {"node": ctx.get_node_id()[:12], "pid": os.getpid(), "gpu_ids": self.gpu_ids,
                "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES"), "device": str(self.device),
                "dtype": self.dtype, "threads": torch.get_num_threads()}

    def statistics(self, layer: int, seqs: list[torch.Tensor]) -> tuple[LayerStatistics, int]:
        """(this shard's sums for `layer`, layers replayed so far by this incarnation)."""
        f = self.fault
        if f and f["layer"] == layer and not Path(f["marker"]).exists():
            Path(f["marker"]).touch()
            os._exit(1)
        if self.streamer is None:
            self.streamer = LayerStreamer(self.model, seqs, sinks=self.sinks, query_stride=self.query_stride,
                                          device=self.device, offload=True)
        return self.streamer.statistics(layer), self.streamer.replayed


def start_workers(plan: WorkerPlan, pg, model: str, *, sinks: int, query_stride: int, dtype: str | None,
                  max_restarts: int, fault: dict | None = None) -> list:
    """plan.num_workers ShardWorkers, one in each bundle of the placement group."""
    workers = []
    for rank in range(plan.num_workers):
        strategy = PlacementGroupSchedulingStrategy(pg, placement_group_bundle_index=rank)
        opts = dict(num_gpus=plan.gpus_per_worker, num_cpus=plan.cpus_per_worker, max_restarts=max_restarts,
                    max_task_retries=max_restarts, scheduling_strategy=strategy)
        workers.append(ShardWorker.options(**opts).remote(
            model, sinks, query_stride, dtype, int(plan.cpus_per_worker), fault if rank == 0 else None))
    return workers


@ray.remote(num_cpus=1, max_retries=3)
def fit_layer(codec_name: str, options: dict, st: LayerStatistics, threads: int) -> dict[str, torch.Tensor]:
    """One layer's share of `codec.state_dict()`, fitted on that layer's statistics alone.

    threads: torch threads for the fit. LAPACK/BLAS results depend on the thread count in the last
    bit, so the driver passes its own: the assembled codec is then bitwise the one `fit(stats)`
    gives in the driver's process (each layer's fit is independent of the others)."""
    if st is None:
        raise ConfigError("fit_layer needs statistics")
    torch.set_num_threads(max(1, threads))
    return codecs.get(codec_name, **options).fit([st]).state_dict()
