"""`kivi2`: KIVI (Liu et al., arXiv 2402.02750), written from the paper.

Keys have a few large channels, so KIVI quantizes them per channel: for every (head, channel),
min/max over a group of `key_group_tokens` (32) consecutive tokens. Values are quantized per token
over groups of `value_group` (32) channels. Both asymmetric, fp16 scale and zero per group. The
newest `recent` (128) tokens stay in bf16 (the residual; kept by the cache); `sinks` defaults to 0.

Token groups start at the first quantized token of each `encode` call, so the cache must hand keys
over in runs of `token_group` tokens. A final partial group (fewer than 32 tokens) gets its own
min/max over the tokens it has (and costs more scale bits than the nominal figure).

True cost: 2 code bits + 32 scale/zero bits per 32 elements = 3.0 bits for keys and for values,
so KIVI's "2-bit" is about 3 bits per element really (more with the bf16 residual).

payload, keys: codes [tokens, kv_heads, d] uint8; scale, zero [ceil(tokens / 32), kv_heads, d] fp16.
payload, values: codes [tokens, kv_heads, d] uint8; scale, zero [tokens, kv_heads, d / group] fp16.
"""

from __future__ import annotations

from typing import Any

import torch

from ..errors import ConfigError
from . import register
from .base import Codec
from .quantizers import minmax_dequantize, minmax_quantize

__all__ = ["KiviCodec", "quantize_per_channel", "dequantize_per_channel"]


@register("kivi2")
class KiviCodec(Codec):
    """KIVI: per-channel keys over token groups, per-token values over channel groups."""

    token_group = 32

    def __init__(
        self,
        sinks: int = 0,
        recent: int = 128,
        head_dim: int | None = None,
        bits: int = 2,
        key_group_tokens: int = 32,
        value_group: int = 32,
    ):
        super().__init__(sinks=sinks, recent=recent, head_dim=head_dim)
        if not 1 <= bits <= 8:
            raise ConfigError(f"{self.name}: bits={bits} must be in 1..8")
        if key_group_tokens < 1 or value_group < 1:
            raise ConfigError(
                f"{self.name}: key_group_tokens={key_group_tokens} and value_group={value_group} must be >= 1"
            )
        self.bits = int(bits)
        self.key_group_tokens = int(key_group_tokens)
        self.value_group = int(value_group)
        self.token_group = self.key_group_tokens
        if head_dim is not None:
            self._value_group(head_dim)

    def options(self) -> dict[str, Any]:
        return {**super().options(), "bits": self.bits, "key_group_tokens": self.key_group_tokens,
                "value_group": self.value_group}

    def _value_group(self, d: int) -> int:
        g = min(self.value_group, d)
        if d % g:
            raise ConfigError(f"{self.name}: head dim {d} is not a multiple of value_group {g}")
        return g

    def _fit(self, stats) -> None:
        self._value_group(self._require_head_dim())

    def _encode(self, x: torch.Tensor, kind: str, layer: int) -> dict[str, torch.Tensor]:
        if kind == "k":
            codes, scale, zero = quantize_per_channel(x, self.bits, self.key_group_tokens)
        else:
            codes, scale, zero = minmax_quantize(x, self.bits, self._value_group(x.shape[-1]))
        return {"codes": codes, "scale": scale, "zero": zero}

    def _decode(self, payload: dict[str, torch.Tensor], kind: str, layer: int, T: int, H: int, D: int) -> torch.Tensor:
        codes, scale, zero = payload["codes"], payload["scale"], payload["zero"]
        if kind == "k":
            return dequantize_per_channel(codes, scale, zero, self.key_group_tokens)
        return minmax_dequantize(codes, scale, zero, self._value_group(D))

    def _quantized_bits(self, kind: str) -> float:
        if kind == "k":
            return self.bits + 32 / self.key_group_tokens
        d = self.head_dim if self.head_dim is not None else self.value_group
        return self.bits + 32 / self._value_group(d)


def quantize_per_channel(x: torch.Tensor, bits: int, n: int):
    """x: [T, H, D] float -> (codes [T, H, D] uint8, scale [G, H, D] fp16, zero [G, H, D] fp16),
    G = ceil(T / n): min/max over each run of n tokens per (head, channel); the last run may be short."""
    T, H, D = x.shape
    full = (T // n) * n
    codes, scales, zeros = [], [], []
    if full:
        xg = x[:full].reshape(T // n, n, H, D).permute(0, 2, 3, 1)  # [G, H, D, n]: tokens last
        c, s, z = minmax_quantize(xg, bits, n)
        codes.append(c.permute(0, 3, 1, 2).reshape(full, H, D))
        scales.append(s[..., 0])
        zeros.append(z[..., 0])
    if full < T:
        r = T - full
        c, s, z = minmax_quantize(x[full:].permute(1, 2, 0), bits, r)  # [H, D, r]
        codes.append(c.permute(2, 0, 1))
        scales.append(s.permute(2, 0, 1))
        zeros.append(z.permute(2, 0, 1))
    return torch.cat(codes), torch.cat(scales), torch.cat(zeros)


def dequantize_per_channel(codes: torch.Tensor, scale: torch.Tensor, zero: torch.Tensor, n: int) -> torch.Tensor:
    """Inverse of `quantize_per_channel`: codes [T, H, D], scale/zero [G, H, D] -> [T, H, D] float32."""
    T = codes.shape[0]
    s = scale.float().repeat_interleave(n, dim=0)[:T]  # token t uses group t // n
    z = zero.float().repeat_interleave(n, dim=0)[:T]
    return codes.float() * s + z
