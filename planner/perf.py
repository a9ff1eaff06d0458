"""Speed and cost figures (DESIGN.md section 8): decode step from the memory roofline plus
all-reduce, prefill from compute, $/hour and $/1M output tokens.

Decode (one token for each of a replica's `seqs` sequences, at full context, the worst case).
vLLM keeps PP micro-batches in flight, so with n = min(PP, seqs) micro-batches of m = ceil(seqs / n):
  stage = (weights read / (TP x PP) + m x KV per sequence on one GPU) / HBM bandwidth
          + 2 x layers/PP all-reduces of m tokens + one stage hop
  step  = PP x stage                       (PP = 1: weights/TP + seqs x KV/TP, the plain roofline)
The roofline is an upper bound on speed: real kernels reach 60-90% of HBM bandwidth.
MoE weights read per step: the shared part plus the experts the batch touches, expected
E x (1 - (1 - k/E)^seqs) of E (= the active parameters for one sequence, all experts for many).
Prefill: 2 x active params x ctx + causal attention FLOPs, at PREFILL_MFU of dense bf16 peak.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .memory import KVBytes, WeightBytes, layer_share
from .parallel import Shape, kv_rank_share
from .specs import GPUSpec, ModelSpec, PlanRequest

__all__ = ["WeightsRead", "AllReduce", "DecodeStep", "Prefill", "Cost", "weights_read_per_step", "allreduce",
           "decode_step", "measured_kernel_step", "OSCAR_KERNEL_BW_FRACTION", "OSCAR_KERNEL_BW_SOURCE", "prefill_time", "cost", "PREFILL_MFU", "ACTIVATION_BYTES", "PP_HOP_LATENCY_US"]

PREFILL_MFU = 0.4  # achieved fraction of dense bf16 peak in long prefills (FlashAttention-class kernels)
ACTIVATION_BYTES = 2  # bf16 activations in all-reduces and pipeline hops
PP_HOP_LATENCY_US = 20.0  # one inter-node send between pipeline stages


@dataclass(frozen=True)
class WeightsRead:
    params: float
    bytes: float
    formula: str


def weights_read_per_step(model: ModelSpec, w: WeightBytes, seqs: int) -> WeightsRead:
    if not model.is_moe:
        return WeightsRead(model.params_total, w.bytes, f"dense: all {w.bytes / 1e9:.1f} GB read per step")
    E, k = model.num_experts, model.experts_per_token
    per_expert = (model.params_total - model.active) / (E - k) if E > k else 0.0  # one expert, all layers
    touched = E * (1 - (1 - k / E) ** seqs)
    params = model.active + (touched - k) * per_expert
    b = params * w.bits_per_param / 8
    formula = (f"MoE: active {model.active / 1e9:.2f}B + ({touched:.1f} experts touched by {seqs} sequences - {k}) x "
               f"{per_expert / 1e9:.3f}B per expert = {params / 1e9:.2f}B params = {b / 1e9:.1f} GB per step")
    return WeightsRead(params, b, formula)


@dataclass(frozen=True)
class AllReduce:
    calls: int
    message_bytes: float
    per_call_s: float
    seconds: float
    formula: str


def allreduce(model: ModelSpec, gpu: GPUSpec, tp: int, seqs: int, layers: int | None = None) -> AllReduce:
    """Two all-reduces per layer (after attention and after the MLP) of `seqs` tokens, ring algorithm."""
    layers = model.layers if layers is None else layers
    if tp == 1:
        return AllReduce(0, 0.0, 0.0, 0.0, "TP 1: no all-reduce")
    msg = seqs * model.hidden_size * ACTIVATION_BYTES
    per = gpu.allreduce_latency_us * 1e-6 + 2 * (tp - 1) / tp * msg / (gpu.interconnect_gb_per_s * 1e9)
    calls = 2 * layers
    formula = (f"{calls} calls x ({gpu.allreduce_latency_us:g} us + 2 x {tp - 1}/{tp} x {msg:,.0f} B / "
               f"{gpu.interconnect_gb_per_s:g} GB/s {gpu.interconnect}) = {calls * per * 1e3:.3f} ms")
    return AllReduce(calls, msg, per, calls * per, formula)


@dataclass(frozen=True)
class DecodeStep:
    weights_read: WeightsRead
    allreduce: AllReduce
    hbm_bytes_per_gpu: float
    hbm_s: float
    pp_s: float
    step_s: float
    tokens_per_s_replica: float
    formula: str
    kv_s: float  # the KV reads' share of hbm_s


# The roofline assumes decode kernels that read at HBM bandwidth. OSCAR's Triton decode attention does
# not yet: on the H200 it read its packed pages at 141-174 GB/s at 32K-128K context and batch 8-64, 3.3%
# (the slowest, 32K x 8) to 4.1% of the 4.26 TB/s copy bandwidth measured in the same run
# (benchmarks/results/attention-h200-7.json). It is issue-bound, so the fraction is an estimate on other
# GPUs. Plans quote it as a second figure.
OSCAR_KERNEL_BW_FRACTION = 0.033
OSCAR_KERNEL_BW_SOURCE = "benchmarks/results/attention-h200-7.json"


def measured_kernel_step(d: DecodeStep, bw_fraction: float) -> float:
    """Decode step time with the KV reads at `bw_fraction` of HBM bandwidth instead of all of it."""
    if not 0 < bw_fraction <= 1:
        raise ValueError(f"bw_fraction must be in (0, 1], got {bw_fraction}")
    return d.step_s + d.kv_s * (1 / bw_fraction - 1)


def decode_step(req: PlanRequest, kv: KVBytes, w: WeightBytes, shape: Shape) -> DecodeStep:
    m, g, pp = req.model, req.gpu, shape.pp
    share = layer_share(m, pp)
    n_micro = min(pp, shape.seqs)
    micro = -(-shape.seqs // n_micro)
    wr = weights_read_per_step(m, w, micro)
    w_gpu = wr.bytes * share / shape.tp
    kv_seq = kv.bytes_per_sequence * share * kv_rank_share(m, shape.tp)
    hbm_s = pp * (w_gpu + micro * kv_seq) / (g.hbm_tb_per_s * 1e12)
    ar = allreduce(m, g, shape.tp, micro, math.ceil(m.layers / pp))
    hop = micro * m.hidden_size * ACTIVATION_BYTES
    pp_s = pp * (PP_HOP_LATENCY_US * 1e-6 + hop / (g.internode_gb_per_s * 1e9)) if pp > 1 else 0.0
    step = hbm_s + pp * ar.seconds + pp_s
    stages = f"{pp} stages x " if pp > 1 else ""
    micro_txt = f" ({n_micro} micro-batches of {micro})" if pp > 1 else ""
    formula = (f"HBM: {stages}(weights {w_gpu / 1e9:.2f} GB + KV {micro} seqs{micro_txt} x {kv_seq / 1e9:.3f} GB) "
               f"/ {g.hbm_tb_per_s:g} TB/s = {hbm_s * 1e3:.2f} ms; all-reduce {stages}{ar.formula}"
               + (f"; PP hops {pp_s * 1e3:.3f} ms" if pp > 1 else "")
               + f"; step {step * 1e3:.2f} ms -> {shape.seqs} seqs / step = {shape.seqs / step:,.0f} tok/s "
               f"per replica (roofline bound)")
    kv_s = pp * micro * kv_seq / (g.hbm_tb_per_s * 1e12)
    return DecodeStep(wr, ar, w_gpu + micro * kv_seq, hbm_s, pp_s, step, shape.seqs / step, formula, kv_s)


@dataclass(frozen=True)
class Prefill:
    flops: float
    seconds: float
    formula: str


def _attention_pairs(ctx: int, window: int | None) -> float:
    """Query-key pairs of a causal pass over `ctx` tokens (window: at most `window` keys each)."""
    if window is None or ctx <= window:
        return ctx * (ctx + 1) / 2
    return window * (window + 1) / 2 + (ctx - window) * window


def prefill_time(model: ModelSpec, gpu: GPUSpec, ctx: int, tp: int, pp: int) -> Prefill:
    """Time to prefill one `ctx`-token prompt on one replica (chunks pipelined over PP stages)."""
    qk = model.head_dim + (model.qk_rope_head_dim or 0)
    per_pair = 2 * model.q_heads * (qk + model.head_dim)  # QK^T and PV, multiply-add = 2 FLOPs
    attn = per_pair * (model.full_layers * _attention_pairs(ctx, None)
                       + model.sliding_layers * _attention_pairs(ctx, model.sliding_window))
    linear = 2 * model.active * ctx
    flops = linear + attn
    s = flops / (tp * pp * gpu.bf16_tflops * 1e12 * PREFILL_MFU)
    formula = (f"(2 x {model.active / 1e9:.2f}B active x {ctx} = {linear:.3g} + attention {attn:.3g}) FLOPs / "
               f"({tp * pp} GPUs x {gpu.bf16_tflops:g} TFLOP/s x MFU {PREFILL_MFU}) = {s:.2f} s")
    return Prefill(flops, s, formula)


@dataclass(frozen=True)
class Cost:
    usd_per_hour: float
    tokens_per_s: float
    usd_per_million_tokens: float
    formula: str


def cost(usd_per_gpu_hour: float, gpus: int, tokens_per_s: float) -> Cost:
    per_hour = usd_per_gpu_hour * gpus
    per_m = per_hour / (3600 * tokens_per_s) * 1e6 if tokens_per_s > 0 else float("inf")
    formula = (f"{gpus} GPUs x ${usd_per_gpu_hour:.2f}/GPU-h = ${per_hour:,.2f}/h; ${per_hour:,.2f} / (3600 x "
               f"{tokens_per_s:,.0f} tok/s) x 1e6 = ${per_m:.3f} per 1M output tokens")
    return Cost(per_hour, tokens_per_s, per_m, formula)
