"""Distributed calibration as Ray jobs (installed as `oscar_cluster.calibration_jobs`; DESIGN.md section 5).

    from oscar_cluster.calibrate import CalibrationConfig
    from oscar_cluster.calibration_jobs import ClusterConfig, calibrate_distributed
    path, record = calibrate_distributed(CalibrationConfig(model=..., data=(...), out=...),
                                         ClusterConfig(address="auto", num_gpus=4))

Modules: `streaming` (one shard through the decoder one layer at a time, no Ray), `checkpoints`
(per-layer merged statistics on disk, resume), `placement` (worker requests checked against the
cluster, shards; no Ray), `workers` (Ray actors and tasks), `job` (the driver), `summary`
(per-layer layouts and error estimates). The maths lives in
`oscar_cluster` (statistics, codecs); this package only distributes it. The in-process path is
`oscar_cluster.calibrate`; `oscar-calibrate --address ...` runs this one.
"""

from .checkpoints import CheckpointMismatchError, CheckpointStore
from .job import ClusterConfig, calibrate_distributed, codec_options
from .streaming import LayerStreamer, calibration_sequences, decoder_parts
from .summary import layer_rows, render
from .placement import ClusterResourcesError, WorkerPlan, plan_workers

__all__ = [
    "ClusterConfig", "calibrate_distributed", "codec_options", "CheckpointStore", "CheckpointMismatchError",
    "LayerStreamer", "calibration_sequences", "decoder_parts", "layer_rows", "render", "ClusterResourcesError",
    "WorkerPlan", "plan_workers",
]
