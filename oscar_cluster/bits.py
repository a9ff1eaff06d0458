"""True storage cost of a KV codec in bits per element, without torch (the planner reads it).

A token kept in bf16 (sinks, recent window) costs 16 bits per element; a quantized token costs
its codes plus its scales. `oscar` stores mean_bits of codes per element plus one fp16 scale per
token, head and kind: mean_bits + 16/d.
"""

from __future__ import annotations

__all__ = ["BF16_BITS", "OSCAR_MEAN_BITS", "OSCAR_SINKS", "OSCAR_SCALE_BITS", "true_bits_per_element",
           "oscar_quantized_bits", "oscar_bits_per_element"]

BF16_BITS = 16
OSCAR_MEAN_BITS = 2.0
OSCAR_SINKS = 4
OSCAR_SCALE_BITS = 16  # one fp16 scale per token, head and kind


def true_bits_per_element(quantized_bits: float, context_len: int, raw_tokens: int) -> float:
    """Average bits per element over `context_len` tokens of which `raw_tokens` stay bf16."""
    if context_len <= 0:
        raise ValueError(f"context_len must be positive, got {context_len}")
    n_raw = min(context_len, raw_tokens)
    return (n_raw * BF16_BITS + (context_len - n_raw) * quantized_bits) / context_len


def oscar_quantized_bits(head_dim: int, mean_bits: float = OSCAR_MEAN_BITS) -> float:
    return mean_bits + OSCAR_SCALE_BITS / head_dim


def oscar_bits_per_element(head_dim: int, context_len: int, mean_bits: float = OSCAR_MEAN_BITS,
                           sinks: int = OSCAR_SINKS, recent: int = 0) -> float:
    """The `oscar` codec's true cost with its defaults (what OscarCodec.bits_per_element reports)."""
    return true_bits_per_element(oscar_quantized_bits(head_dim, mean_bits), context_len, sinks + recent)
