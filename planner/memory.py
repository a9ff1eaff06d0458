"""Memory figures (DESIGN.md section 8): KV bytes per token, weight bytes, per-GPU overhead.

Each function is pure and returns a small frozen dataclass whose `formula` is the arithmetic
`--explain` prints. Sizes are bytes unless a name says otherwise; GiB = 2^30 bytes.

KV per token and layer, in elements: GQA 2 x kv_heads x head_dim (keys and values);
MLA kv_lora_rank + qk_rope_head_dim (one latent, no x2). Sliding-window layers hold at most the
window. Bits per element by format:
  bf16 16 | fp8 8 (vLLM fp8 cache, per-tensor scale) | int4 4 + 32/d (codes + fp16 scale and
  zero per head vector, the `int4` codec's layout) | oscar-int2: the OSCAR codec's
  `bits_per_element(tokens)` = 2 + 16/d plus 4 bf16 sink tokens, from the codec itself when it
  imports, else OSCAR_DEFAULT_BITS = 2.25 (2 + 16/64 + rounding; reference/serving.md's figure).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .specs import GIB, KVFormat, ModelSpec, WeightFormat

__all__ = ["KVBytes", "WeightBytes", "Overhead", "kv_bytes_per_token", "weight_bytes", "overhead",
           "element_bits", "BITS_PER_PARAM", "OSCAR_DEFAULT_BITS", "ACTIVATION_TOKENS", "ACTIVATION_WIDTH",
           "CONTEXT_GIB", "CUDA_GRAPH_GIB", "NCCL_GIB"]

OSCAR_DEFAULT_BITS = 2.25
BITS_PER_PARAM = {WeightFormat.BF16: 16.0, WeightFormat.FP8: 8.0, WeightFormat.INT4: 4.25}  # int4: GPTQ/AWQ-style group 128, fp16 scale + zero
ACTIVATION_TOKENS = 8192  # tokens in the profiled forward pass (vLLM's chunked-prefill budget on large GPUs)
ACTIVATION_WIDTH = 16  # live bf16 values per token per hidden unit at the peak (residual, qkv, MLP up/gate, temporaries)
CONTEXT_GIB = 1.0  # CUDA context, cuBLAS workspace, allocator slack
CUDA_GRAPH_GIB = 1.0  # captured decode graphs
NCCL_GIB = 1.0  # NCCL / custom all-reduce buffers, only when a replica spans several GPUs


def element_bits(fmt: KVFormat, head_dim: int, tokens: int, oscar_bits: float | None = None) -> tuple[float, str]:
    """(bits per element, where the figure comes from) for `tokens` cached tokens of one layer."""
    fmt = KVFormat(fmt)
    if fmt is KVFormat.BF16:
        return 16.0, "bf16"
    if fmt is KVFormat.FP8:
        return 8.0, "fp8 e4m3, per-tensor scale"
    if fmt is KVFormat.INT4:
        return 4 + 32 / head_dim, f"4 + 32/{head_dim} (fp16 scale and zero per vector)"
    if oscar_bits is not None:
        return float(oscar_bits), "given (--oscar-bits)"
    try:
        from oscar_cluster.bits import OSCAR_SINKS, oscar_bits_per_element  # the codec's own cost (no torch)
    except ImportError:
        return OSCAR_DEFAULT_BITS, f"documented default {OSCAR_DEFAULT_BITS} (OSCAR codec not importable)"
    return oscar_bits_per_element(head_dim, tokens), (f"OSCAR codec: 2 + 16/{head_dim} + {OSCAR_SINKS} bf16 sinks "
                                                      f"over {tokens} tokens")


@dataclass(frozen=True)
class KVBytes:
    """KV cache of one sequence at `ctx` tokens. bytes_per_token is the average over the context
    (= bytes_per_sequence / ctx), so totals are bytes_per_token x ctx x batch."""

    kv_format: KVFormat
    ctx: int
    elements_per_token_layer: int
    bits_full: float
    bits_sliding: float | None
    bytes_per_sequence: float
    bytes_per_token: float
    bits_source: str
    formula: str


def kv_bytes_per_token(model: ModelSpec, fmt: KVFormat, ctx: int, oscar_bits: float | None = None) -> KVBytes:
    fmt = KVFormat(fmt)
    if model.is_mla:
        elems, dim = model.kv_lora_rank + model.qk_rope_head_dim, model.kv_lora_rank + model.qk_rope_head_dim
        shape = f"MLA ({model.kv_lora_rank} + {model.qk_rope_head_dim}) = {elems} elements, no x2"
    else:
        elems, dim = 2 * model.kv_heads * model.head_dim, model.head_dim
        shape = f"2 x {model.kv_heads} kv_heads x {model.head_dim} head_dim = {elems} elements"
    bits_full, source = element_bits(fmt, dim, ctx, oscar_bits)
    seq_bits = model.full_layers * ctx * elems * bits_full
    bits_sliding = None
    parts = [f"{model.full_layers} {'full ' if model.sliding_layers else ''}layers x {ctx} tokens x {elems} x {bits_full:.4g} bits"]
    if model.sliding_layers:
        held = min(ctx, model.sliding_window)
        bits_sliding, _ = element_bits(fmt, dim, held, oscar_bits)
        seq_bits += model.sliding_layers * held * elems * bits_sliding
        parts.append(f"{model.sliding_layers} sliding layers x min({ctx}, {model.sliding_window}) = {held} tokens"
                     f" x {elems} x {bits_sliding:.4g} bits")
    seq_bytes = seq_bits / 8
    formula = (f"per token and layer: {shape}; bits/element {bits_full:.4g} ({source}); per sequence = "
               f"({' + '.join(parts)}) / 8 = {seq_bytes:,.0f} B = {seq_bytes / GIB:.3f} GiB; "
               f"per token (average) = {seq_bytes / ctx:,.1f} B")
    return KVBytes(fmt, ctx, elems, bits_full, bits_sliding, seq_bytes, seq_bytes / ctx, source, formula)


@dataclass(frozen=True)
class WeightBytes:
    """All weights (MoE: every expert, since all are resident)."""

    weight_format: WeightFormat
    params: float
    bits_per_param: float
    bytes: float
    formula: str


def weight_bytes(model: ModelSpec, fmt: WeightFormat) -> WeightBytes:
    fmt = WeightFormat(fmt)
    bits = BITS_PER_PARAM[fmt]
    b = model.params_total * bits / 8
    moe = f" (MoE: total, not the {model.active / 1e9:.1f}B active)" if model.is_moe else ""
    formula = (f"{model.params_total / 1e9:.2f}B params{moe} x {bits:g} bits ({fmt.value}) / 8 = "
               f"{b:,.0f} B = {b / GIB:.1f} GiB")
    return WeightBytes(fmt, model.params_total, bits, b, formula)


@dataclass(frozen=True)
class Overhead:
    """Per-GPU memory that is neither weights nor KV."""

    activation_bytes: float
    workspace_bytes: float
    bytes: float
    formula: str


def overhead(model: ModelSpec, gpus_per_replica: int) -> Overhead:
    act = ACTIVATION_TOKENS * model.hidden_size * 2 * ACTIVATION_WIDTH
    nccl = NCCL_GIB if gpus_per_replica > 1 else 0.0
    ws = (CONTEXT_GIB + CUDA_GRAPH_GIB + nccl) * GIB
    formula = (f"activation peak {ACTIVATION_TOKENS} tokens x {model.hidden_size} hidden x 2 B x {ACTIVATION_WIDTH}"
               f" = {act / GIB:.2f} GiB (not split by TP); workspace: context {CONTEXT_GIB:g} + CUDA graphs "
               f"{CUDA_GRAPH_GIB:g} + NCCL {nccl:g} GiB = {ws / GIB:.2f} GiB; total {(act + ws) / GIB:.2f} GiB")
    return Overhead(act, ws, act + ws, formula)


def layer_share(model: ModelSpec, pp: int) -> float:
    """Fraction of the layers on the largest pipeline stage: ceil(L / pp) / L."""
    return math.ceil(model.layers / pp) / model.layers
