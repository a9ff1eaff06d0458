"""Helpers shared by the vLLM plugin's tests (imported as `vllm_support`)."""

import importlib.util

import pytest
import torch

from oscar_cluster import codecs
from oscar_cluster.calibration import LayerStatistics

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
    g = torch.Generator().manual_seed(seed)
    inv_freq = 1e4 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    w_o = torch.randn(64, Hq * d, generator=g) / d ** 0.5
    stats = []
    for layer in range(layers):
        k = torch.randn(192, H, d, generator=g)
        k[..., :4] = k[..., :4] * 6 + 4.0
        q = torch.randn(192, Hq, d, generator=g) * torch.linspace(3, 0.2, d)
        v = torch.randn(192, H, d, generator=g) * torch.linspace(2, 0.5, d)
        stats.append(LayerStatistics.from_samples(q, k, v, w_o, layer=layer, sinks=sinks, inv_freq=inv_freq))
    return codecs.get("oscar", sinks=sinks).fit(stats)
