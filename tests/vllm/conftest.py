"""The vLLM plugin's tests run in their own venv (.venv-vllm, built by `make test` from
requirements-vllm.txt): vLLM pins numpy < 2.4 through mistral-common while the main venv pins
numpy 2.4.6. `make test` runs this directory there with OSCAR_VLLM_TESTS=1, where a missing vLLM
is an error. In the main venv the modules that need vLLM skip themselves and say where they run.
"""

import importlib.util
import os

import pytest

REQUIRED = os.environ.get("OSCAR_VLLM_TESTS") == "1"
_spec = importlib.util.find_spec("vllm")
# tests/vllm itself is importable as a namespace package "vllm" (origin None) when tests/ is on sys.path
HAVE_VLLM = _spec is not None and _spec.origin is not None
if REQUIRED and not HAVE_VLLM:
    raise RuntimeError("OSCAR_VLLM_TESTS=1 but vLLM is not importable here; build .venv-vllm with `make venv-vllm`")


@pytest.fixture(scope="session")
def smollm2_artifact_8k(tmp_path_factory):
    """An OSCAR artifact for SmolLM2 calibrated on 8192 tokens (about 25 s on 2 cores). The
    1536-token session artifact of tests/conftest.py is too weak to retrieve a needle through
    chunked prefill at 2 bits (it answered 748 for 7418 in 5 of 6 placements), and the engine
    tests compare a needle answer."""
    from oscar_cluster.calibrate_cli import main

    out = tmp_path_factory.mktemp("smollm2-artifact-8k") / "artifact"
    assert main(["--out", str(out), "--max-tokens", "8192", "--seq-len", "1024", "--format", "json", "--quiet"]) == 0
    return out
