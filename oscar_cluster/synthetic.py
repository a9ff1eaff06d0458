"""A fitted `oscar` codec from synthetic statistics (no model needed), for tests and benchmarks.

Keys get outlier channels and a large mean, queries and values a decaying channel spread: the
shape of real post-RoPE activations, which is all the kernels' layout and speed depend on.
"""

from __future__ import annotations

import torch

from . import codecs
from .calibration import LayerStatistics

__all__ = ["synthetic_oscar_codec", "offset_key_codec"]


def synthetic_oscar_codec(d: int, H: int, Hq: int, *, layers: int = 1, seed: int = 0, sinks: int = 4,
                          samples: int = 192, w_o_rows: int = 64, key_mean: str = "rope"):
    """An `oscar` codec fitted on `samples` random tokens per layer (head dim d, H KV heads, Hq
    query heads); deterministic in `seed`."""
    g = torch.Generator().manual_seed(seed)
    inv_freq = 1e4 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    w_o = torch.randn(w_o_rows, Hq * d, generator=g) / d ** 0.5
    stats = []
    for layer in range(layers):
        k = torch.randn(samples, H, d, generator=g)
        k[..., :4] = k[..., :4] * 6 + 4.0  # outliers and a large mean, as real keys have
        q = torch.randn(samples, Hq, d, generator=g) * torch.linspace(3, 0.2, d)
        v = torch.randn(samples, H, d, generator=g) * torch.linspace(2, 0.5, d)
        stats.append(LayerStatistics.from_samples(q, k, v, w_o, layer=layer, sinks=sinks, inv_freq=inv_freq))
    return codecs.get("oscar", sinks=sinks, key_mean=key_mean).fit(stats)


def offset_key_codec(d: int, H: int, Hq: int, ratio: float, *, seed: int = 0, samples: int = 384):
    """A one-layer `oscar` codec (RoPE-aware key mean) for keys whose pre-RoPE part carries a constant
    offset `ratio` times their varying part, as Qwen2.5's layer 0 (58x; benchmarks/key_offsets.py).
    Returns (codec, keys) with keys(positions [T]) -> fresh post-RoPE keys [T, H, d] of that kind.
    Queries are small (0.1 per channel), so the offset's logits stay a few units."""
    from .rope import apply_rope

    g = torch.Generator().manual_seed(seed)
    inv = 1e4 ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    m = torch.randn(H, d, generator=g)
    m = m / m.norm(dim=-1, keepdim=True) * ratio * d ** 0.5

    def keys(pos: torch.Tensor) -> torch.Tensor:
        return apply_rope(m + torch.randn(len(pos), H, d, generator=g), pos.cpu(), inv)

    pos = torch.arange(samples)
    q = torch.randn(samples, Hq, d, generator=g) * 0.1
    v = torch.randn(samples, H, d, generator=g)
    st = LayerStatistics.from_samples(q, keys(pos), v, torch.randn(32, Hq * d, generator=g) / d ** 0.5,
                                      layer=0, sinks=4, inv_freq=inv)
    return codecs.get("oscar", key_mean="rope").fit([st]), keys
