"""Scalar quantization primitives shared by the codecs (pure functions).

- `minmax_quantize` / `minmax_dequantize`: asymmetric uniform quantization over groups along the
  last dim, fp16 scale and minimum per group (what INT2/INT4/KIVI/Hadamard baselines use).
- `gaussian_levels(bits, kind)`: fixed level tables for a unit-variance source: Lloyd-Max
  (MSE-optimal for a Gaussian) or uniform with the MSE-optimal step; `level_distortion` gives their
  mean squared error on N(0, 1) (used by water-filling).
- `nearest_level`: index of the closest level.
- `pack_bits` / `unpack_bits`: pack b-bit codes into bytes (any b in 1..8, rows of w*b/8 bytes).
"""

from __future__ import annotations

import math
from functools import lru_cache

import torch

__all__ = [
    "minmax_quantize",
    "minmax_dequantize",
    "gaussian_levels",
    "level_distortion",
    "level_midpoints",
    "nearest_level",
    "pack_bits",
    "unpack_bits",
    "MAX_BITS",
]

MAX_BITS = 4


def minmax_quantize(x: torch.Tensor, bits: int, group: int, clip: float = 1.0):
    """x: [..., n] float -> (codes [..., n] uint8, scale [..., n/group] fp16, zero [..., n/group] fp16).

    Groups are consecutive runs of `group` elements of the last dim; `clip` < 1 shrinks the
    [min, max] range toward its centre (clipping the extremes)."""
    n = x.shape[-1]
    if n % group:
        raise ValueError(f"last dim {n} is not a multiple of group {group}")
    xg = x.reshape(*x.shape[:-1], n // group, group).float()
    lo = xg.amin(-1)
    hi = xg.amax(-1)
    if clip < 1.0:
        mid = 0.5 * (lo + hi)
        lo = mid + clip * (lo - mid)
        hi = mid + clip * (hi - mid)
    qmax = (1 << bits) - 1
    scale = ((hi - lo) / qmax).clamp_min(1e-8).half()
    zero = lo.half()
    codes = torch.round((xg - zero.float()[..., None]) / scale.float()[..., None]).clamp_(0, qmax)
    return codes.to(torch.uint8).reshape(x.shape), scale, zero


def minmax_dequantize(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, group: int) -> torch.Tensor:
    """Inverse of `minmax_quantize` (float32 out)."""
    n = codes.shape[-1]
    cg = codes.reshape(*codes.shape[:-1], n // group, group).float()
    x = cg * scale.float()[..., None] + zero.float()[..., None]
    return x.reshape(codes.shape)


def _normal_pdf(x: torch.Tensor) -> torch.Tensor:
    return torch.exp(-0.5 * x * x) / math.sqrt(2 * math.pi)


def _normal_cdf(x: torch.Tensor) -> torch.Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2)))


def _interval_moments(a: torch.Tensor, b: torch.Tensor):
    """P(a<X<b), E[X; a<X<b], E[X^2; a<X<b] for X ~ N(0,1) (float64)."""
    p = _normal_cdf(b) - _normal_cdf(a)
    m1 = _normal_pdf(a) - _normal_pdf(b)
    fa = torch.where(torch.isfinite(a), a * _normal_pdf(a), torch.zeros_like(a))
    fb = torch.where(torch.isfinite(b), b * _normal_pdf(b), torch.zeros_like(b))
    m2 = p + fa - fb
    return p, m1, m2


def _mse(levels: torch.Tensor) -> float:
    """Mean squared error of nearest-level quantization of N(0,1) with sorted `levels`."""
    inf = torch.tensor([math.inf], dtype=torch.float64)
    mids = 0.5 * (levels[1:] + levels[:-1])
    a = torch.cat([-inf, mids])
    b = torch.cat([mids, inf])
    p, m1, m2 = _interval_moments(a, b)
    return float((m2 - 2 * levels * m1 + levels * levels * p).sum())


@lru_cache(maxsize=None)
def _levels(bits: int, kind: str) -> tuple[float, ...]:
    n = 1 << bits
    if kind == "lloyd":
        # Lloyd's algorithm on the exact Gaussian: centroids of the nearest-level cells.
        lv = torch.linspace(-2.5, 2.5, n, dtype=torch.float64) * (1 if n > 2 else 0.4)
        inf = torch.tensor([math.inf], dtype=torch.float64)
        for _ in range(2000):
            mids = 0.5 * (lv[1:] + lv[:-1])
            p, m1, _ = _interval_moments(torch.cat([-inf, mids]), torch.cat([mids, inf]))
            new = m1 / p
            if torch.max(torch.abs(new - lv)) < 1e-12:
                lv = new
                break
            lv = new
        return tuple(lv.tolist())
    if kind == "uniform":
        # Symmetric uniform grid (step * (i - (n-1)/2)); step chosen to minimise MSE on N(0,1).
        idx = torch.arange(n, dtype=torch.float64) - (n - 1) / 2
        best = min((_mse(idx * s), s) for s in torch.linspace(0.05, 2.5, 2000, dtype=torch.float64).tolist())
        return tuple((idx * best[1]).tolist())
    raise ValueError(f"level kind must be 'lloyd' or 'uniform', got {kind!r}")


def gaussian_levels(bits: int, kind: str = "lloyd") -> torch.Tensor:
    """Sorted level table [2**bits] float32 for a unit-variance source."""
    if not 1 <= bits <= 8:
        raise ValueError(f"bits must be in 1..8, got {bits}")
    return torch.tensor(_levels(bits, kind), dtype=torch.float32)


def level_distortion(bits: int, kind: str = "lloyd") -> float:
    """MSE of the level table on N(0,1); 1.0 for 0 bits (channel dropped, mean kept)."""
    if bits == 0:
        return 1.0
    return _mse(torch.tensor(_levels(bits, kind), dtype=torch.float64))


def level_midpoints(levels: torch.Tensor) -> torch.Tensor:
    """Decision thresholds between consecutive entries of sorted `levels` (in their dtype)."""
    return 0.5 * (levels[1:] + levels[:-1])


def nearest_level(z: torch.Tensor, levels: torch.Tensor, mids: torch.Tensor | None = None) -> torch.Tensor:
    """Index (uint8) of the closest entry of sorted `levels` for every element of z; `mids`:
    `level_midpoints(levels)` on z's device and dtype, when the caller keeps them."""
    if mids is None:
        mids = level_midpoints(levels).to(z.device, z.dtype)
    return torch.bucketize(z.contiguous(), mids).to(torch.uint8)


def pack_bits(codes: torch.Tensor, bits: int) -> torch.Tensor:
    """codes: [rows, w] uint8 < 2**bits -> [rows, w*bits/8] uint8, little-endian bit order."""
    rows, w = codes.shape
    if (w * bits) % 8:
        raise ValueError(f"{w} codes of {bits} bits do not fill whole bytes")
    shifts = torch.arange(bits, device=codes.device, dtype=torch.uint8)
    bitplanes = (codes[..., None] >> shifts) & 1  # [rows, w, bits]
    flat = bitplanes.reshape(rows, -1, 8).to(torch.int32)
    weights = (1 << torch.arange(8, device=codes.device, dtype=torch.int32))
    return (flat * weights).sum(-1).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, bits: int, w: int) -> torch.Tensor:
    """Inverse of `pack_bits`: [rows, w*bits/8] uint8 -> [rows, w] uint8."""
    rows = packed.shape[0]
    shifts = torch.arange(8, device=packed.device, dtype=torch.uint8)
    bitstream = ((packed[..., None] >> shifts) & 1).reshape(rows, w, bits).to(torch.int32)
    weights = (1 << torch.arange(bits, device=packed.device, dtype=torch.int32))
    return (bitstream * weights).sum(-1).to(torch.uint8)
