"""`int2`: plain per-token INT2, no transform (the floor every 2-bit scheme must beat).

Asymmetric min/max per token over groups of min(64, d) consecutive channels, fp16 scale and zero
per group. At d >= 64: 2 + 32/64 = 2.5 bits per quantized element.

payload: codes [tokens, kv_heads, d] uint8 in [0, 3]; scale, zero [tokens, kv_heads, d / group] fp16.
"""

from __future__ import annotations

from . import register
from .reference import MinMaxCodec

__all__ = ["Int2Codec", "INT2_GROUP"]

INT2_GROUP = 64


@register("int2")
class Int2Codec(MinMaxCodec):
    """INT2 per token over groups of min(64, d) channels (d must be a multiple of the group)."""

    bits = 2
    group_cap = INT2_GROUP
