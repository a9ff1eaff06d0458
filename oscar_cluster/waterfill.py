"""Reverse water-filling of integer bits over channel segments (DESIGN.md section 3). Pure maths.

Channel j with importance imp_j and b_j bits costs imp_j * D(b_j), D decreasing and convex
(the quantizer's distortion on a unit-variance source). Minimising sum_j imp_j D(b_j) subject to
sum_j b_j = budget with b_j in {0..max_bits} is a separable convex integer programme: giving the
next bit to the channel with the largest gain imp_j (D(b_j) - D(b_j + 1)) is optimal. Channels are
allocated in segments of `width` consecutive channels that share one bit width, so a layout is a
short tuple of (width, bits) runs the kernels specialize on.
"""

from __future__ import annotations

import heapq
import math
from typing import Sequence

__all__ = ["allocate_bits", "analytic_reverse_waterfill", "runs"]


def allocate_bits(importance: Sequence[float], budget_bits: int, distortion: Sequence[float], width: int = 1) -> list[int]:
    """Bits per channel (len(importance)), constant over segments of `width` channels.

    importance: >= 0 per channel; budget_bits: total bits, a multiple of `width`;
    distortion: D(0..max_bits), decreasing and convex."""
    n = len(importance)
    if n % width:
        raise ValueError(f"{n} channels are not a multiple of segment width {width}")
    if budget_bits % width:
        raise ValueError(f"budget {budget_bits} bits is not a multiple of segment width {width}")
    max_bits = len(distortion) - 1
    seg_imp = [sum(importance[s:s + width]) for s in range(0, n, width)]
    bits = [0] * len(seg_imp)
    units = budget_bits // width
    if units > max_bits * len(seg_imp):
        raise ValueError(f"budget {budget_bits} exceeds {max_bits} bits on every channel")
    heap = [(-(imp * (distortion[0] - distortion[1])), i) for i, imp in enumerate(seg_imp)]
    heapq.heapify(heap)
    for _ in range(units):
        _, i = heapq.heappop(heap)
        bits[i] += 1
        if bits[i] < max_bits:
            gain = seg_imp[i] * (distortion[bits[i]] - distortion[bits[i] + 1])
            heapq.heappush(heap, (-gain, i))
    return [b for b in bits for _ in range(width)]


def analytic_reverse_waterfill(variances: Sequence[float], mean_bits: float) -> tuple[list[float], float]:
    """Continuous optimum for Gaussian sources with D_j = var_j 2^(-2 b_j), b_j >= 0:
    D_j = min(theta, var_j), b_j = max(0, log2(var_j / theta) / 2). Returns (bits, total distortion)."""
    total = mean_bits * len(variances)
    lo, hi = 1e-300, max(variances)
    for _ in range(200):  # bisection on log theta
        theta = math.sqrt(lo * hi)
        r = sum(max(0.0, 0.5 * math.log2(v / theta)) for v in variances if v > 0)
        lo, hi = (theta, hi) if r > total else (lo, theta)
    bits = [max(0.0, 0.5 * math.log2(v / theta)) if v > 0 else 0.0 for v in variances]
    return bits, sum(min(theta, v) for v in variances)


def runs(bits: Sequence[int]) -> list[tuple[int, int]]:
    """Run-length form [(width, bits), ...] of a per-channel bit list."""
    out: list[list[int]] = []
    for b in bits:
        if out and out[-1][1] == b:
            out[-1][0] += 1
        else:
            out.append([1, b])
    return [(w, b) for w, b in out]
