"""Capture post-RoPE q, k, v from a transformers model through its attention-function interface.

`capturing(model, fn)` switches the model to a registered attention function that calls
`fn(layer_idx, q, k, v, scaling)` (q: [B, q_heads, T, d], k/v: [B, kv_heads, T, d]) and then runs
SDPA, so the model's outputs are unchanged. The previous implementation is restored on exit.
"""

from __future__ import annotations

from contextlib import contextmanager
from typing import Callable, Iterator

import torch

from .errors import ConfigError

__all__ = ["capturing", "attention_modules", "rope_inv_freq", "model_dims"]

_CAPTURE_NAME = "oscar_capture"


def _capture_attention(module, query, key, value, attention_mask, scaling=None, dropout=0.0, **kwargs):
    from transformers.integrations.sdpa_attention import sdpa_attention_forward

    fn = getattr(module, "_oscar_capture_fn", None)
    if fn is not None:
        fn(module.layer_idx, query, key, value, scaling if scaling is not None else module.scaling)
    return sdpa_attention_forward(module, query, key, value, attention_mask, dropout=dropout, scaling=scaling, **kwargs)


def attention_modules(model) -> list[torch.nn.Module]:
    """The model's attention modules (those with `layer_idx` and `o_proj`), by layer index."""
    mods = [m for m in model.modules() if hasattr(m, "layer_idx") and hasattr(m, "o_proj")]
    if not mods:
        raise ConfigError(f"{type(model).__name__}: no attention modules with layer_idx and o_proj found")
    return sorted(mods, key=lambda m: m.layer_idx)


def rope_inv_freq(model) -> torch.Tensor | None:
    """The RoPE inverse frequencies [d/2] float64 on CPU, or None."""
    rotary = next((m for m in model.modules() if hasattr(m, "inv_freq")), None)
    return None if rotary is None else rotary.inv_freq.detach().double().cpu()


def model_dims(model) -> tuple[int, int, int, int]:
    """(layers, q_heads, kv_heads, head_dim) of a transformers decoder."""
    cfg = model.config.get_text_config() if hasattr(model.config, "get_text_config") else model.config
    Hq = cfg.num_attention_heads
    d = getattr(cfg, "head_dim", None) or cfg.hidden_size // Hq
    return cfg.num_hidden_layers, Hq, cfg.num_key_value_heads, d


@contextmanager
def capturing(model, fn: Callable) -> Iterator[None]:
    from transformers import AttentionInterface

    AttentionInterface.register(_CAPTURE_NAME, _capture_attention)
    mods = attention_modules(model)
    previous = model.config._attn_implementation
    model.set_attn_implementation(_CAPTURE_NAME)
    for m in mods:
        m._oscar_capture_fn = fn
    try:
        yield
    finally:
        for m in mods:
            del m._oscar_capture_fn
        model.set_attn_implementation(previous)
