"""`plan(request) -> Plan`: the cheapest feasible shape for each KV format, and why.

For each KV format: every feasible TP x PP shape with the fewest replicas that hold the batch
(parallel.py), its decode speed (perf.py); the cheapest in $/hour wins (fewest GPUs), ties going
to the higher tokens/s. A plan needing more than `max_gpus` does not fit; the option then says
what would: a smaller batch or context on the GPUs available, other weights, other GPUs.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from .memory import KVBytes, WeightBytes, kv_bytes_per_token, weight_bytes
from .parallel import Shape, candidate_shapes
from .perf import (OSCAR_KERNEL_BW_FRACTION, OSCAR_KERNEL_BW_SOURCE, Cost, DecodeStep, Prefill, cost, decode_step, measured_kernel_step,
                   prefill_time)
from .specs import GPUSpec, KVFormat, PlanRequest, WeightFormat

__all__ = ["Option", "Plan", "plan", "min_gpus"]


@dataclass(frozen=True)
class Option:
    """The plan for one KV format. shape is None when no shape holds even one sequence."""

    kv_format: KVFormat
    kv: KVBytes
    kv_bytes_total: float
    weights: WeightBytes
    shape: Shape | None
    decode: DecodeStep | None
    prefill: Prefill | None
    cost: Cost | None
    fits: bool
    notes: tuple[str, ...]
    alternatives: tuple[str, ...]
    rejected: tuple[str, ...]


@dataclass(frozen=True)
class Plan:
    request: PlanRequest
    options: tuple[Option, ...]

    def option(self, fmt: KVFormat | str) -> Option:
        fmt = KVFormat(fmt)
        return next(o for o in self.options if o.kv_format is fmt)


def _ranked(req: PlanRequest, kv: KVBytes, w: WeightBytes) -> tuple[list[tuple[Shape, DecodeStep]], list[str]]:
    shapes, rejected = candidate_shapes(req, kv, w)
    evaluated = [(s, decode_step(req, kv, w, s)) for s in shapes]
    evaluated.sort(key=lambda sd: (sd[0].gpus, -req.batch / sd[1].step_s, sd[0].pp, sd[0].tp))
    return evaluated, rejected


def min_gpus(req: PlanRequest, fmt: KVFormat) -> int | None:
    """Fewest GPUs holding the request in format `fmt` (None: no shape holds one sequence)."""
    shapes, _ = candidate_shapes(req, kv_bytes_per_token(req.model, fmt, req.ctx, req.oscar_bits),
                                 weight_bytes(req.model, req.weights))
    return min((s.gpus for s in shapes), default=None)


def _fits(req: PlanRequest, fmt: KVFormat) -> bool:
    n = min_gpus(req, fmt)
    return n is not None and (req.max_gpus is None or n <= req.max_gpus)


def _largest(lo: int, hi: int, ok) -> int:
    """Largest x in [lo, hi] with ok(x) (ok monotone non-increasing); lo - 1 if none."""
    if hi < lo or not ok(lo):
        return lo - 1
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if ok(mid) else (lo, mid - 1)
    return lo


def _what_fits(req: PlanRequest, fmt: KVFormat, catalog: tuple[GPUSpec, ...]) -> list[str]:
    out = []
    if req.max_gpus is not None:
        b = _largest(1, req.batch - 1, lambda x: _fits(replace(req, batch=x), fmt))
        if b >= 1:
            out.append(f"{req.max_gpus} {req.gpu.name} hold batch {b} at ctx {req.ctx}")
        c = _largest(1, req.ctx - 1, lambda x: _fits(replace(req, ctx=x), fmt))
        if c >= 1:
            out.append(f"{req.max_gpus} {req.gpu.name} hold ctx {c}{f' (~{c // 1024}K)' if c >= 1024 else ''} "
                       f"at batch {req.batch}")
        if b < 1 and c < 1 and (n := min_gpus(replace(req, batch=1, ctx=1), fmt)) is not None:
            out.append(f"nothing fits on {req.max_gpus} {req.gpu.name}: the weights alone need {n}")
        out += [f"{f.value} KV: {min_gpus(req, f)} {req.gpu.name}" for f in KVFormat if f is not fmt and _fits(req, f)]
    for wf in WeightFormat:
        if wf is not req.weights and (n := min_gpus(replace(req, weights=wf), fmt)) is not None:
            if req.max_gpus is None or n <= req.max_gpus:
                out.append(f"--weights {wf.value}: {n} {req.gpu.name}")
    for g in catalog:
        if g.name != req.gpu.name and (n := min_gpus(replace(req, gpu=g), fmt)) is not None:
            out.append(f"{n} {g.name}" + ("" if req.max_gpus is None or n <= req.max_gpus else " (also too many)"))
    return out


def _n(k: int, word: str) -> str:
    return f"{k} {word}" + ("" if k == 1 else "s")


def _notes(req: PlanRequest, fmt: KVFormat, ranked, kv: KVBytes) -> list[str]:
    m, notes = req.model, []
    if ranked:
        s, d = ranked[0]
        how = "cheapest" + (", ties broken by tok/s" if len(ranked) > 1 and ranked[1][0].gpus == s.gpus else "")
        notes.append(f"TP {s.tp} x PP {s.pp} x {_n(s.replicas, 'replica')} = {_n(s.gpus, 'GPU')}, {s.seqs} seqs each "
                     f"({how})")
        if len(ranked) > 1:
            s2, d2 = ranked[1]
            notes.append(f"next: TP {s2.tp} x PP {s2.pp} x {s2.replicas} = {s2.gpus} GPUs, "
                         f"{req.batch / d2.step_s:,.0f} tok/s")
        price = req.gpu.usd_per_gpu_hour
        per_m = [(price * x.gpus / (3600 * req.batch / y.step_s) * 1e6, x) for x, y in ranked]
        best_m, bs = min(per_m, key=lambda t: t[0])
        if bs is not s and best_m < 0.9 * per_m[0][0]:
            notes.append(f"per token, TP {bs.tp} x PP {bs.pp} x {bs.replicas} = {bs.gpus} GPUs is cheaper: "
                         f"${best_m:.2f} vs ${per_m[0][0]:.2f} per 1M tokens (faster decode, more $/h)")
        if s.pp > 1:
            notes.append(f"one node ({req.gpu.gpus_per_node} GPUs) is not enough: {s.pp} pipeline stages across nodes")
        if s.kv_replication > 1:
            notes.append(f"MLA latent replicated on all {s.tp} TP ranks" if m.is_mla else
                         f"KV heads replicated x{s.kv_replication:g} (TP {s.tp} > {m.kv_heads} KV heads)")
    if m.sliding_layers and req.ctx > m.sliding_window:
        notes.append(f"{m.sliding_layers} of {m.layers} layers keep at most {m.sliding_window} tokens (sliding window)")
    if req.ctx > m.max_context:
        notes.append(f"ctx {req.ctx} exceeds the model's {m.max_context} positions (needs rope scaling)")
    if fmt is KVFormat.OSCAR_INT2:
        notes.append(f"{kv.bits_full:.4g} bits/element: {kv.bits_source}")
        if ranked:
            s, d = ranked[0]
            t = measured_kernel_step(d, OSCAR_KERNEL_BW_FRACTION)
            notes.append(f"tok/s assumes a bandwidth-bound decode kernel; OSCAR's Triton kernel, measured on an "
                         f"H200, reads its pages at {OSCAR_KERNEL_BW_FRACTION:.1%} of the copy bandwidth measured there "
                         f"({OSCAR_KERNEL_BW_SOURCE}): at that rate {req.batch / t:,.0f} tok/s "
                         f"here (step {t * 1e3:,.1f} ms, not {d.step_s * 1e3:,.1f} ms)")
        if m.is_mla:
            notes.append("OSCAR on an MLA latent is an extrapolation (the codec is calibrated per KV head)")
    return notes


def _option(req: PlanRequest, fmt: KVFormat, catalog: tuple[GPUSpec, ...]) -> Option:
    kv = kv_bytes_per_token(req.model, fmt, req.ctx, req.oscar_bits)
    w = weight_bytes(req.model, req.weights)
    ranked, rejected = _ranked(req, kv, w)
    notes = _notes(req, fmt, ranked, kv)
    alternatives = tuple(f"TP {s.tp} x PP {s.pp} x {s.replicas}: {s.gpus} GPUs, {s.seqs} seqs/replica, "
                         f"{req.batch / d.step_s:,.0f} tok/s" for s, d in ranked[1:6])
    if not ranked:
        notes.insert(0, f"no shape holds one sequence on {req.gpu.name} (up to TP {req.gpu.gpus_per_node} x "
                        f"PP {req.model.layers})")
        notes += ["would fit: " + "; ".join(_what_fits(req, fmt, catalog) or ["nothing in the catalog"])]
        return Option(fmt, kv, kv.bytes_per_sequence * req.batch, w, None, None, None, None, False, tuple(notes),
                      alternatives, tuple(rejected))
    s, d = ranked[0]
    fits = req.max_gpus is None or s.gpus <= req.max_gpus
    if not fits:
        notes.insert(0, f"does not fit: needs {s.gpus} {req.gpu.name} > {req.max_gpus} available")
        notes.append("would fit: " + "; ".join(_what_fits(req, fmt, catalog) or ["nothing in the catalog"]))
    c = cost(req.gpu.usd_per_gpu_hour, s.gpus, req.batch / d.step_s)
    pre = prefill_time(req.model, req.gpu, req.ctx, s.tp, s.pp)
    return Option(fmt, kv, kv.bytes_per_sequence * req.batch, w, s, d, pre, c, fits, tuple(notes), alternatives,
                  tuple(rejected))


def plan(req: PlanRequest, catalog: tuple[GPUSpec, ...] = ()) -> Plan:
    """One option per `req.kv_formats`; `catalog` lists GPUs to suggest when a plan does not fit."""
    return Plan(req, tuple(_option(req, fmt, catalog) for fmt in req.kv_formats))

