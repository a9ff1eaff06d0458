"""Worker placement: --num-gpus/--num-workers against the cluster's resources, decided before
anything is scheduled (an impossible request is an error at once, never a pending job)."""

import pytest

from oscar_cluster.calibration_jobs.placement import ClusterResourcesError, WorkerPlan, plan_workers, shard
from oscar_cluster.errors import ConfigError

CLUSTER = {"CPU": 2.0, "GPU": 4.0, "memory": 1e9}
NODES = [CLUSTER]
TWO_NODES = [{"CPU": 16.0, "GPU": 2.0}, {"CPU": 16.0, "GPU": 2.0}]

CASES = [  # (num_gpus, num_workers, sequences, cluster, nodes) -> plan
    ((None, None, 8, CLUSTER, NODES), WorkerPlan(4, 1.0, 0.5)),  # every GPU, one worker each
    ((2, None, 8, CLUSTER, NODES), WorkerPlan(2, 1.0, 1.0)),
    ((1, 4, 8, CLUSTER, NODES), WorkerPlan(4, 0.25, 0.5)),  # fractional GPUs
    ((0.5, None, 8, CLUSTER, NODES), WorkerPlan(1, 0.5, 1.0)),
    ((4, None, 2, CLUSTER, NODES), WorkerPlan(2, 1.0, 0.5)),  # default capped by the sequences
    ((0, None, 8, CLUSTER, NODES), WorkerPlan(2, 0.0, 1.0)),  # CPU workers, one per CPU
    ((0, 1, 8, CLUSTER, NODES), WorkerPlan(1, 0.0, 2.0)),
    ((None, None, 8, {"CPU": 32.0, "GPU": 4.0}, TWO_NODES), WorkerPlan(4, 1.0, 1.0)),
]


@pytest.mark.parametrize("args, plan", CASES)
def test_plans(args, plan):
    assert plan_workers(*args) == plan


def test_impossible_requests_fail_at_once():
    with pytest.raises(ClusterResourcesError, match="asked for 8 GPUs but the Ray cluster has 4"):
        plan_workers(8, None, 8, CLUSTER, NODES)
    with pytest.raises(ClusterResourcesError, match="asked for 1 GPUs but the Ray cluster has 0"):
        plan_workers(1, None, 8, {"CPU": 2.0}, [{"CPU": 2.0}])
    with pytest.raises(ClusterResourcesError, match="3 CPU workers need 3 CPUs"):
        plan_workers(0, 3, 8, CLUSTER, NODES)
    with pytest.raises(ConfigError, match="--num-workers 2 or more"):
        plan_workers(2, 1, 8, CLUSTER, NODES)  # 2 GPUs on one worker
    with pytest.raises(ConfigError, match="exceeds the 4 calibration sequences"):
        plan_workers(4, 8, 4, {"CPU": 8.0, "GPU": 8.0}, [{"CPU": 8.0, "GPU": 8.0}])
    # enough GPUs and CPUs in total, but one GPU sits on a node without a CPU for its worker
    nodes = [{"CPU": 1.0, "GPU": 1.0}, {"GPU": 1.0}]
    with pytest.raises(ClusterResourcesError, match="no room for 2 workers of CPU 0.5, GPU 1 each"):
        plan_workers(2, None, 8, {"CPU": 1.0, "GPU": 2.0}, nodes)


def test_shards_are_contiguous_and_balanced():
    seqs = list(range(7))
    assert shard(seqs, 3) == [[0, 1], [2, 3], [4, 5, 6]]
    assert sum(shard(seqs, 7), []) == seqs
