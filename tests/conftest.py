import os

import pytest
import torch

# Triton kernels run on CPU through the interpreter; set before any kernel module is imported.
if not torch.cuda.is_available():
    os.environ.setdefault("TRITON_INTERPRET", "1")


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
