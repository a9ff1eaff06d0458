"""`hadamard2`: random Hadamard rotation, then per-token INT2 (as `int2`).

The rotation of layer l is R_l = diag(s_l) H / sqrt(d): H the Sylvester Hadamard matrix [d, d],
s_l a ±1 vector drawn from a torch.Generator seeded from (seed, layer), shared by all heads.
R_l is orthogonal, so encode quantizes y = x R_l and decode returns y_hat R_l^T in the input space.
Spreading outlier channels over all channels narrows each token's min/max range. The head dim
must be a power of two. Nothing is stored: the rotation is rebuilt lazily from seed and head dim.

Cost: 2 + 32 / min(64, d) bits (2.5 at d >= 64). payload: as `int2`, in the rotated basis.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from . import register
from .int2 import Int2Codec

__all__ = ["HadamardCodec", "sylvester_hadamard", "random_signs", "check_power_of_two"]


@register("hadamard2")
class HadamardCodec(Int2Codec):
    """Random-sign Hadamard rotation per layer, then INT2 per token over groups of min(64, d)."""

    def __init__(self, sinks: int = 0, recent: int = 0, head_dim: int | None = None, seed: int = 0):
        if head_dim is not None:
            check_power_of_two(head_dim, self.name)
        super().__init__(sinks=sinks, recent=recent, head_dim=head_dim)
        self.seed = int(seed)
        self._hadamard: torch.Tensor | None = None  # [d, d] float32, H / sqrt(d), built lazily
        self._signs: dict[int, torch.Tensor] = {}  # layer -> [d] float32 ±1

    def options(self) -> dict[str, Any]:
        return {**super().options(), "seed": self.seed}

    def rotation(self, layer: int) -> torch.Tensor:
        """R_l: [d, d] float32, orthogonal (R R^T = I); y = x @ R_l."""
        h, s = self._factors(layer)
        return s[:, None] * h

    def _factors(self, layer: int) -> tuple[torch.Tensor, torch.Tensor]:
        d = self._require_head_dim()
        check_power_of_two(d, self.name)
        if self._hadamard is None or self._hadamard.shape[0] != d:
            self._hadamard = sylvester_hadamard(d) / d**0.5
            self._signs = {}
        if layer not in self._signs:
            self._signs[layer] = random_signs(d, self.seed, layer)
        return self._hadamard, self._signs[layer]

    def _check_ready(self, x: torch.Tensor, kind: str) -> None:
        if x.dim() == 3:
            check_power_of_two(int(x.shape[-1]), self.name)
        super()._check_ready(x, kind)

    def _fit(self, stats) -> None:
        check_power_of_two(self._require_head_dim(), self.name)
        super()._fit(stats)

    def _encode(self, x: torch.Tensor, kind: str, layer: int) -> dict[str, torch.Tensor]:
        h, s = (t.to(x.device) for t in self._factors(layer))
        return super()._encode((x * s) @ h, kind, layer)  # x @ diag(s) H / sqrt(d)

    def _decode(self, payload: dict[str, torch.Tensor], kind: str, layer: int, T: int, H: int, D: int) -> torch.Tensor:
        y = super()._decode(payload, kind, layer, T, H, D)
        h, s = (t.to(y.device) for t in self._factors(layer))
        return (y @ h) * s  # y @ R^T = y @ H^T diag(s) / sqrt(d), H symmetric


def check_power_of_two(d: int, name: str = "codec") -> None:
    """ConfigError unless d is a positive power of two."""
    if d <= 0 or d & (d - 1):
        raise ConfigError(f"{name}: head dim {d} is not a power of two; the Hadamard rotation needs one")


def sylvester_hadamard(n: int) -> torch.Tensor:
    """Unnormalized Sylvester Hadamard matrix [n, n] float32 of ±1 (n a power of two); H H^T = n I."""
    check_power_of_two(n, "sylvester_hadamard")
    h = torch.ones(1, 1)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


def random_signs(d: int, seed: int, layer: int) -> torch.Tensor:
    """[d] float32 of ±1, a deterministic function of (seed, layer)."""
    g = torch.Generator().manual_seed((seed * 1_000_003 + layer) % (1 << 63))
    return torch.randint(0, 2, (d,), generator=g).float() * 2 - 1
