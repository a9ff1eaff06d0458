"""Relative attention-output error through W_o: the codec quality measure of the demo and tables.

For one layer with held-out post-RoPE q [T, q_heads, d], k, v [T, kv_heads, d] and W_o
[hidden, q_heads*d]: y = W_o concat_h softmax(q k^T / sqrt(d)) v (causal), y_hat the same with
keys and values decoded by the codec (tokens below the codec's `sinks` stay bf16), and
error = ||y_hat - y||_F / ||y||_F. Layers combine by geometric mean.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from .capture import attention_modules, capturing

__all__ = ["LayerSample", "capture_layers", "causal_attention", "layer_output_error", "geomean"]


@dataclass
class LayerSample:
    """Held-out activations of one layer: q [T, Hq, d], k/v [T, H, d] float32, w_o [hidden, Hq*d]."""

    layer: int
    q: torch.Tensor
    k: torch.Tensor
    v: torch.Tensor
    w_o: torch.Tensor
    scaling: float
    _reference: torch.Tensor | None = None

    def reference_output(self) -> torch.Tensor:
        """y = W_o o with exact keys and values: [T, hidden] (computed once)."""
        if self._reference is None:
            T = self.q.shape[0]
            self._reference = causal_attention(self.q, self.k, self.v, self.scaling).reshape(T, -1) @ self.w_o.T
        return self._reference


def capture_layers(model, input_ids: torch.Tensor) -> list[LayerSample]:
    """Run one sequence input_ids: [T] and keep every layer's q, k, v (CPU float32)."""
    w_o = {m.layer_idx: m.o_proj.weight.detach().float().cpu() for m in attention_modules(model)}
    out: dict[int, LayerSample] = {}

    def keep(layer, q, k, v, scaling):
        out[layer] = LayerSample(layer, q[0].transpose(0, 1).float().cpu(), k[0].transpose(0, 1).float().cpu(),
                                 v[0].transpose(0, 1).float().cpu(), w_o[layer], float(scaling))

    device = next(model.parameters()).device
    with capturing(model, keep), torch.inference_mode():
        model(input_ids[None].to(device), use_cache=False)
    return [out[l] for l in sorted(out)]


def causal_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, scaling: float) -> torch.Tensor:
    """q: [T, Hq, d], k/v: [T, H, d] -> o: [T, Hq, d] (GQA: query head g uses KV head g // (Hq/H))."""
    G = q.shape[1] // k.shape[1]
    kr = k.repeat_interleave(G, dim=1).transpose(0, 1)
    vr = v.repeat_interleave(G, dim=1).transpose(0, 1)
    o = torch.nn.functional.scaled_dot_product_attention(q.transpose(0, 1), kr, vr, is_causal=True, scale=scaling)
    return o.transpose(0, 1)


def layer_output_error(codec, sample: LayerSample) -> float:
    T = sample.q.shape[0]
    pos = torch.arange(T)
    k_hat = codec.roundtrip(sample.k, "k", sample.layer, pos).float()
    v_hat = codec.roundtrip(sample.v, "v", sample.layer, pos).float()
    y = sample.reference_output()
    y_hat = causal_attention(sample.q, k_hat, v_hat, sample.scaling).reshape(T, -1) @ sample.w_o.T
    return float(torch.linalg.norm(y_hat - y) / torch.linalg.norm(y).clamp_min(1e-30))


def geomean(values: list[float]) -> float:
    return math.exp(sum(math.log(max(v, 1e-30)) for v in values) / len(values))
