"""The codec interface every KV scheme implements (DESIGN.md section 4).

A codec turns keys or values `x: [tokens, kv_heads, d]` of one layer into an `Encoded` payload and
back. Tokens whose position is below `sinks` stay in bf16 (attention sinks); the most recent
`recent` tokens are kept in bf16 by the cache (`OscarCache`), which asks the codec for that
number. `bits_per_element(context_len)` is the true cost: codes, per-token and per-group scales,
and the bf16 tokens, averaged over keys and values.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from ..bits import BF16_BITS, true_bits_per_element
from ..errors import ConfigError

__all__ = ["Encoded", "Codec", "BF16_BITS"]



@dataclass
class Encoded:
    """Encoded keys or values of one layer.

    kind: "k" | "v"; layer: layer index; shape: (tokens, kv_heads, d) of the input;
    payload: codec-specific tensors for the quantized tokens (those with raw_mask False);
    raw_mask: [tokens] bool or None, True where the token is stored in bf16;
    raw: [n_raw, kv_heads, d] bf16 or None.
    """

    kind: str
    layer: int
    shape: tuple[int, int, int]
    dtype: torch.dtype
    payload: dict[str, torch.Tensor] = field(default_factory=dict)
    raw_mask: torch.Tensor | None = None
    raw: torch.Tensor | None = None

    def nbytes(self) -> int:
        """Bytes actually held by this payload (codes as stored, scales, bf16 tokens). `oscar`
        packs its codes; the reference int codecs keep one code per byte, so for them this exceeds
        the packed cost that `bits_per_element` reports."""
        total = sum(t.numel() * t.element_size() for t in self.payload.values())
        if self.raw is not None:
            total += self.raw.numel() * self.raw.element_size()
        return total


class Codec:
    """Base class. Subclasses implement `_encode`, `_decode` and `_quantized_bits(kind)`.

    Options common to all codecs: `sinks` (first positions kept in bf16), `recent` (most recent
    tokens kept in bf16 by the cache), `head_dim` (needed by data-free codecs before `fit`).
    """

    name: str = "base"
    needs_calibration: bool = False
    token_group: int = 1  # tokens the codec must see together (KIVI keys: 32)
    uses_positions: bool = False  # _encode takes positions= (position-dependent means)

    def __init__(self, sinks: int = 0, recent: int = 0, head_dim: int | None = None):
        if sinks < 0 or recent < 0:
            raise ConfigError(f"{self.name}: sinks={sinks} and recent={recent} must be >= 0")
        self.sinks = int(sinks)
        self.recent = int(recent)
        self.head_dim = head_dim
        self.fitted = not self.needs_calibration

    # ----- interface -------------------------------------------------------------------------
    def fit(self, stats) -> "Codec":
        """Learn from calibration statistics (`list[LayerStatistics]`); data-free codecs only
        record the head dim."""
        if stats:
            self.head_dim = int(stats[0].head_dim)
        self._fit(stats)
        self.fitted = True
        return self

    def to(self, device) -> "Codec":
        """Keep the codec's learned tensors on `device`, in place; returns self. Codecs without
        learned tensors have nothing to move."""
        return self

    def encode(self, x: torch.Tensor, kind: str, layer: int, positions: torch.Tensor | None = None) -> Encoded:
        """x: [tokens, kv_heads, d] (any float dtype); positions: [tokens] int or None."""
        self._check_ready(x, kind)
        raw_mask = None
        raw = None
        xq, pq = x, positions
        if positions is not None:
            positions = torch.as_tensor(positions, device=x.device)
            if positions.shape != (x.shape[0],):
                raise ConfigError(f"positions must be [tokens]={x.shape[0]}, got {tuple(positions.shape)}")
            pq = positions
            raw_mask = positions < self.sinks
            if bool(raw_mask.any()):
                raw = x[raw_mask].to(torch.bfloat16)
                xq, pq = x[~raw_mask], positions[~raw_mask]
            else:
                raw_mask = None
        extra = {"positions": pq} if self.uses_positions else {}
        payload = self._encode(xq.float(), kind, layer, **extra) if xq.shape[0] > 0 else {}
        return Encoded(kind, layer, tuple(x.shape), x.dtype, payload, raw_mask, raw)

    def decode(self, enc: Encoded) -> torch.Tensor:
        """Returns [tokens, kv_heads, d] in the input's dtype and space."""
        T, H, D = enc.shape
        n_raw = 0 if enc.raw is None else enc.raw.shape[0]
        if T == 0:
            return torch.empty(0, H, D, dtype=enc.dtype)
        device = enc.raw.device if enc.raw is not None else next(iter(enc.payload.values())).device
        quantized = self._decode(enc.payload, enc.kind, enc.layer, T - n_raw, H, D) if T > n_raw else None
        if enc.raw_mask is None:
            return quantized.to(enc.dtype)
        out = torch.empty(T, H, D, dtype=enc.dtype, device=device)
        out[enc.raw_mask] = enc.raw.to(enc.dtype)
        if quantized is not None:
            out[~enc.raw_mask] = quantized.to(enc.dtype)
        return out

    def roundtrip(self, x: torch.Tensor, kind: str, layer: int, positions=None) -> torch.Tensor:
        return self.decode(self.encode(x, kind, layer, positions))

    def quantized_bits_per_element(self) -> float:
        """Bits per element of a quantized token, K and V averaged, scales included."""
        return 0.5 * (self._quantized_bits("k") + self._quantized_bits("v"))

    def bits_per_element(self, context_len: int) -> float:
        """True bits per element at `context_len` tokens: quantized tokens plus the sinks and the
        recent window in bf16."""
        if context_len <= 0:
            raise ConfigError(f"context_len must be positive, got {context_len}")
        return true_bits_per_element(self.quantized_bits_per_element(), context_len, self.sinks + self.recent)

    def kv_bytes_per_token(self, context_len: int, num_layers: int, kv_heads: int) -> float:
        """Average KV bytes per token for a whole model at `context_len`."""
        return self.bits_per_element(context_len) * 2 * num_layers * kv_heads * self._require_head_dim() / 8

    def options(self) -> dict[str, Any]:
        """Constructor options, for artifacts and reports."""
        return {"sinks": self.sinks, "recent": self.recent, "head_dim": self.head_dim}

    def state_dict(self) -> dict[str, torch.Tensor]:
        return {}

    def load_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        if state:
            raise ConfigError(f"{self.name} holds no tensors; got {sorted(state)[:5]}")

    def __repr__(self) -> str:
        opts = ", ".join(f"{k}={v}" for k, v in self.options().items())
        return f"{type(self).__name__}({opts})"

    # ----- to implement ----------------------------------------------------------------------
    def _fit(self, stats) -> None:
        pass

    def _encode(self, x: torch.Tensor, kind: str, layer: int) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def _decode(self, payload: dict[str, torch.Tensor], kind: str, layer: int, T: int, H: int, D: int) -> torch.Tensor:
        raise NotImplementedError

    def _quantized_bits(self, kind: str) -> float:
        raise NotImplementedError

    # ----- helpers ---------------------------------------------------------------------------
    def _require_head_dim(self) -> int:
        if self.head_dim is None:
            raise ConfigError(f"{self.name}: head dim unknown; call fit(stats) or pass head_dim=...")
        return self.head_dim

    def _check_ready(self, x: torch.Tensor, kind: str) -> None:
        if kind not in ("k", "v"):
            raise ConfigError(f"kind must be 'k' or 'v', got {kind!r}")
        if x.dim() != 3:
            raise ConfigError(f"x must be [tokens, kv_heads, d], got shape {tuple(x.shape)}")
        if not self.fitted:
            raise ConfigError(f"codec {self.name!r} needs calibration: call fit(stats) or load an artifact first")
        if self.head_dim is None:
            self.head_dim = int(x.shape[-1])
        elif x.shape[-1] != self.head_dim:
            raise ConfigError(f"{self.name}: head dim {x.shape[-1]} does not match the codec's {self.head_dim}")
