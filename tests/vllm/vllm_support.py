"""Helpers shared by the vLLM plugin's tests (imported as `vllm_support`)."""

import importlib.util

import pytest

from oscar_cluster.synthetic import synthetic_oscar_codec

_spec = importlib.util.find_spec("vllm")
# tests/vllm itself is importable as a namespace package "vllm" (origin None) when tests/ is on sys.path
HAVE_VLLM = _spec is not None and _spec.origin is not None


def needs_vllm():
    """Module-level guard for test modules that import vLLM."""
    if not HAVE_VLLM:
        pytest.skip("vLLM is not installed in this venv; these tests run in .venv-vllm (make test runs them)",
                    allow_module_level=True)


def fitted_codec(d: int, H: int, Hq: int, layers: int = 1, seed: int = 0, sinks: int = 4):
    """A fitted `oscar` codec on random statistics with key outliers and a RoPE mean."""
    return synthetic_oscar_codec(d, H, Hq, layers=layers, seed=seed, sinks=sinks)
