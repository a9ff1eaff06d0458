"""Reference codecs, the quality ceiling and the simple baselines: `bf16`, `fp8`, `int8`, `int4`.

All are data-free and act per token: `x: [tokens, kv_heads, d]` float32 in, the same out.

- `bf16`: x stored as bf16; 16 bits/element.
- `fp8`: float8_e4m3fn per element, one fp16 scale per (token, head) = amax / 448; 8 + 16/d bits.
- `int8`, `int4`: asymmetric min/max per token over groups of `d` channels, fp16 scale and zero
  per group; b + 32/d bits. `MinMaxCodec` is the shared implementation (also behind `int2`).
"""

from __future__ import annotations

import torch

from ..errors import ConfigError
from . import register
from .base import BF16_BITS, Codec
from .quantizers import minmax_dequantize, minmax_quantize

__all__ = ["Bf16Codec", "Fp8Codec", "MinMaxCodec", "Int8Codec", "Int4Codec", "FP8_MAX"]

FP8_MAX = 448.0  # largest finite float8_e4m3fn
_SCALE_BITS = 16  # one fp16 number


@register("bf16")
class Bf16Codec(Codec):
    """Keys and values kept in bf16 (the baseline every quality floor is measured against).

    payload: x [tokens, kv_heads, d] bf16."""

    def _encode(self, x: torch.Tensor, kind: str, layer: int) -> dict[str, torch.Tensor]:
        return {"x": x.to(torch.bfloat16)}

    def _decode(self, payload: dict[str, torch.Tensor], kind: str, layer: int, T: int, H: int, D: int) -> torch.Tensor:
        return payload["x"].float()

    def _quantized_bits(self, kind: str) -> float:
        return float(BF16_BITS)


@register("fp8")
class Fp8Codec(Codec):
    """FP8 E4M3 per element with an fp16 absmax scale per token and head.

    payload: codes [tokens, kv_heads, d] float8_e4m3fn; scale [tokens, kv_heads] fp16."""

    def _encode(self, x: torch.Tensor, kind: str, layer: int) -> dict[str, torch.Tensor]:
        amax = x.abs().amax(-1)  # [T, H]
        scale = (amax / FP8_MAX).half().clamp_min(torch.finfo(torch.float16).tiny)
        y = (x / scale.float()[..., None]).clamp(-FP8_MAX, FP8_MAX)  # fp16 rounding may push past 448
        return {"codes": y.to(torch.float8_e4m3fn), "scale": scale}

    def _decode(self, payload: dict[str, torch.Tensor], kind: str, layer: int, T: int, H: int, D: int) -> torch.Tensor:
        return payload["codes"].float() * payload["scale"].float()[..., None]

    def _quantized_bits(self, kind: str) -> float:
        return 8 + _SCALE_BITS / self._require_head_dim()


class MinMaxCodec(Codec):
    """Per-token asymmetric uniform quantization over groups of consecutive channels.

    Subclasses set `bits` and `group_cap` (None: one group of `d` channels; else min(cap, d)).
    payload: codes [tokens, kv_heads, d] uint8 in [0, 2**bits); scale, zero
    [tokens, kv_heads, d / group] fp16. True bits: bits + 32 / group."""

    bits: int = 8
    group_cap: int | None = None

    def __init__(self, sinks: int = 0, recent: int = 0, head_dim: int | None = None):
        super().__init__(sinks=sinks, recent=recent, head_dim=head_dim)
        if head_dim is not None:
            self.group_size(head_dim)

    def group_size(self, d: int) -> int:
        """Channels per scale group for head dim `d`; ConfigError if `d` does not split evenly."""
        g = d if self.group_cap is None else min(self.group_cap, d)
        if d <= 0 or d % g:
            raise ConfigError(f"{self.name}: head dim {d} is not a multiple of the group size {g}")
        return g

    def _fit(self, stats) -> None:
        self.group_size(self._require_head_dim())

    def _encode(self, x: torch.Tensor, kind: str, layer: int) -> dict[str, torch.Tensor]:
        codes, scale, zero = minmax_quantize(x, self.bits, self.group_size(x.shape[-1]))
        return {"codes": codes, "scale": scale, "zero": zero}

    def _decode(self, payload: dict[str, torch.Tensor], kind: str, layer: int, T: int, H: int, D: int) -> torch.Tensor:
        return minmax_dequantize(payload["codes"], payload["scale"], payload["zero"], self.group_size(D))

    def _quantized_bits(self, kind: str) -> float:
        return self.bits + 2 * _SCALE_BITS / self.group_size(self._require_head_dim())


@register("int8")
class Int8Codec(MinMaxCodec):
    """INT8 per token, one group of d channels: 8 + 32/d bits."""

    bits = 8


@register("int4")
class Int4Codec(MinMaxCodec):
    """INT4 per token, one group of d channels: 4 + 32/d bits."""

    bits = 4
