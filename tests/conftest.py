import os

import pytest
import torch

# Triton kernels run on CPU through the interpreter; set before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")
os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # before ray is imported (reference/serving.md)
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

RAY_CPUS = 2
RAY_GPUS = 4  # logical GPUs for scheduling tests


@pytest.fixture(scope="session")
def ray_cluster():
    """One local Ray cluster for the whole session (each start costs 10-15 s on 2 cores): 2 CPUs and
    4 logical GPUs, no dashboard, a small object store. Returns its address."""
    import ray  # pinned in requirements.txt: a missing Ray must fail, not skip

    ray.init(num_cpus=RAY_CPUS, num_gpus=RAY_GPUS, include_dashboard=False, object_store_memory=256 * 2**20,
             log_to_driver=False, configure_logging=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture(scope="session")
def smollm2_artifact(tmp_path_factory):
    """An OSCAR artifact for SmolLM2, calibrated in-process on 1536 tokens (about 8 s)."""
    from oscar_cluster.calibrate_cli import main

    out = tmp_path_factory.mktemp("smollm2-artifact") / "artifact"
    assert main(["--out", str(out), "--max-tokens", "1536", "--seq-len", "768", "--format", "json", "--quiet"]) == 0
    return out


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model (float32 on CPU); `make test` fetches it first."""
    from oscar_cluster.models import load

    torch.set_num_threads(max(1, torch.get_num_threads()))
    return load("smollm2-135m")


@pytest.fixture(scope="session")
def smollm2_bf16():
    from oscar_cluster.models import load

    return load("smollm2-135m", dtype=torch.bfloat16)
