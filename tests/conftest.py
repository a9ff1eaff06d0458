import pytest
import torch


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
