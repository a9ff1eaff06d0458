"""One local Ray cluster for the whole session (each start costs 10-15 s on 2 cores): 2 CPUs and
4 logical GPUs, token auth disabled, no dashboard, a small object store."""

import os

os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # before ray is imported (reference/serving.md)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import pytest  # noqa: E402

from oscar_cluster.corpora import shakespeare_files  # noqa: E402

NUM_CPUS = 2
NUM_GPUS = 4


@pytest.fixture(scope="session")
def ray_cluster():
    """The address of the session's Ray cluster (ray is initialized in this process)."""
    import ray  # pinned in requirements.txt: a missing Ray must fail, not skip
    ray.init(num_cpus=NUM_CPUS, num_gpus=NUM_GPUS, include_dashboard=False, object_store_memory=256 * 2**20,
             log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def calib_files():
    """Two Shakespeare plays: far more than the 1024 tokens the tests calibrate on."""
    return tuple(str(p) for p in shakespeare_files()[:2])
