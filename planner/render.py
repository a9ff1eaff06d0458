"""Plan -> rich table, JSON (the shape other tools read, issue 3 item 7), CSV, `--explain` text."""

from __future__ import annotations

import csv
import io
import json
import math
from typing import Any

from .parallel import tp_options
from .plan import Option, Plan
from .specs import GIB

__all__ = ["to_dict", "to_json", "to_csv", "explain", "print_table"]


def _num(x: float | None, nd: int = 3) -> float | int | None:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return None
    if nd == 0 or float(x).is_integer():
        return int(round(x))
    return round(float(x), nd)


def _ctx_label(ctx: int) -> str:
    return f"{ctx // 1024}K" if ctx % 1024 == 0 else str(ctx)


def _option_dict(o: Option) -> dict[str, Any]:
    s, c = o.shape, o.cost
    return {
        "kv_format": o.kv_format.value,
        "kv_bytes_per_token": _num(o.kv.bytes_per_token),
        "kv_bytes_total": _num(o.kv_bytes_total),
        "weights_bytes": _num(o.weights.bytes),
        "gpus": s.gpus if s else None,
        "tp": s.tp if s else None,
        "pp": s.pp if s else None,
        "replicas": s.replicas if s else None,
        "cost_per_hour": _num(c.usd_per_hour) if c else None,
        "tokens_per_s": _num(c.tokens_per_s, 1) if c else None,
        "cost_per_million_tokens": _num(c.usd_per_million_tokens, 4) if c else None,
        "fits": o.fits,
        "notes": list(o.notes),
        # extensions (stable names; the fields above are the contract)
        "kv_bits_per_element": _num(o.kv.bits_full, 6),
        "seqs_per_replica": s.seqs if s else None,
        "per_gpu_bytes": {"usable": _num(s.memory.usable_bytes, 0), "weights": _num(s.memory.weights_bytes, 0),
                          "kv": _num(s.kv_bytes_per_gpu, 0), "overhead": _num(s.memory.overhead_bytes, 0)}
        if s else None,
        "decode_step_s": _num(o.decode.step_s, 6) if o.decode else None,
        "prefill_s": _num(o.prefill.seconds, 4) if o.prefill else None,
    }


def to_dict(p: Plan) -> dict[str, Any]:
    r, m, g = p.request, p.request.model, p.request.gpu
    return {
        "model": {"name": m.name, "hf_id": m.hf_id, "layers": m.layers, "q_heads": m.q_heads, "kv_heads": m.kv_heads,
                  "head_dim": m.head_dim, "hidden_size": m.hidden_size, "params_total": _num(m.params_total, 0),
                  "params_active": _num(m.active, 0), "max_context": m.max_context,
                  "sliding_window": m.sliding_window, "sliding_layers": m.sliding_layers,
                  "mla": m.is_mla, "moe": m.is_moe, "source": m.source},
        "ctx": r.ctx,
        "batch": r.batch,
        "gpu": {"name": g.name, "memory_gib": g.memory_gib, "hbm_tb_per_s": g.hbm_tb_per_s,
                "bf16_tflops": g.bf16_tflops, "interconnect": g.interconnect, "gpus_per_node": g.gpus_per_node,
                "usd_per_gpu_hour": g.usd_per_gpu_hour, "price_source": g.price_source, "price_date": g.price_date},
        "weights": r.weights.value,
        "gpu_mem_util": r.gpu_mem_util,
        "max_gpus": r.max_gpus,
        "options": [_option_dict(o) for o in p.options],
    }


def to_json(p: Plan) -> str:
    return json.dumps(to_dict(p), indent=2)


_CSV = ("kv_format", "kv_bytes_per_token", "kv_bytes_total", "weights_bytes", "gpus", "tp", "pp", "replicas",
        "cost_per_hour", "tokens_per_s", "cost_per_million_tokens", "fits", "seqs_per_replica",
        "weights_gib_per_gpu", "kv_gib_per_gpu", "overhead_gib_per_gpu", "notes")


def to_csv(p: Plan) -> str:
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=_CSV, lineterminator="\n")
    w.writeheader()
    for o in p.options:
        d, s = _option_dict(o), o.shape
        row = {k: d.get(k) for k in _CSV}
        row.update(weights_gib_per_gpu=_num(s.memory.weights_bytes / GIB, 2) if s else None,
                   kv_gib_per_gpu=_num(s.kv_bytes_per_gpu / GIB, 2) if s else None,
                   overhead_gib_per_gpu=_num(s.memory.overhead_bytes / GIB, 2) if s else None,
                   notes=" | ".join(o.notes))
        w.writerow(row)
    return buf.getvalue()


def _title(p: Plan) -> str:
    r = p.request
    limit = f", {r.max_gpus} GPUs available" if r.max_gpus else ""
    return (f"{r.model.name} | ctx {r.ctx} ({_ctx_label(r.ctx)}) x batch {r.batch} | {r.gpu.name} "
            f"${r.gpu.usd_per_gpu_hour:.2f}/GPU-h | weights {r.weights.value} | gpu_mem_util {r.gpu_mem_util:g}{limit}")


def print_table(p: Plan, console=None) -> None:
    from rich.console import Console
    from rich.table import Table

    console = console or Console(width=None if _isatty() else 140)
    t = Table(title=_title(p), title_justify="left")
    for col, just in (("KV", "left"), ("B/token", "right"), ("KV total GiB", "right"), ("weights/GPU", "right"),
                      ("KV/GPU", "right"), ("overhead/GPU", "right"), ("GPUs", "right"), ("TPxPPxR", "center"),
                      ("$/h", "right"), ("tok/s", "right"), ("$/1M tok", "right"), ("fits", "center")):
        t.add_column(col, justify=just)
    for o in p.options:
        s, c = o.shape, o.cost
        t.add_row(o.kv_format.value, f"{o.kv.bytes_per_token:,.0f}", f"{o.kv_bytes_total / GIB:,.1f}",
                  f"{s.memory.weights_bytes / GIB:.1f}" if s else "-", f"{s.kv_bytes_per_gpu / GIB:.1f}" if s else "-",
                  f"{s.memory.overhead_bytes / GIB:.1f}" if s else "-", str(s.gpus) if s else "-",
                  s.label if s else "-", f"{c.usd_per_hour:,.2f}" if c else "-",
                  f"{c.tokens_per_s:,.0f}" if c else "-", f"{c.usd_per_million_tokens:,.2f}" if c else "-",
                  "yes" if o.fits else "NO")
    console.print(t)
    console.print(f"per-GPU columns in GiB of {p.request.gpu_mem_util:g} x {p.request.gpu.memory_gib:g} GiB usable; "
                  "tok/s = decode roofline bound at full context; TPxPPxR = tensor x pipeline x replicas",
                  highlight=False)
    for o in p.options:
        for n in o.notes:
            console.print(f"  {o.kv_format.value}: {n}", highlight=False, markup=False)


def _isatty() -> bool:
    import sys

    return sys.stdout.isatty()


def explain(p: Plan) -> str:
    """Every figure's arithmetic, inputs first, then one section per KV format."""
    r, m, g = p.request, p.request.model, p.request.gpu
    out = [f"# {_title(p)}", "", "## inputs",
           f"model {m.name}: {m.layers} layers, {m.q_heads} q heads, {m.kv_heads} kv heads, head_dim {m.head_dim}, "
           f"hidden {m.hidden_size}, {m.params_total / 1e9:.2f}B params ({m.active / 1e9:.2f}B active), max context "
           f"{m.max_context}" + (f", MLA {m.kv_lora_rank}+{m.qk_rope_head_dim}" if m.is_mla else "")
           + (f", MoE {m.experts_per_token}/{m.num_experts} experts" if m.is_moe else "")
           + (f", {m.sliding_layers} sliding layers (window {m.sliding_window})" if m.sliding_layers else "")
           + f"  [source: {m.source}{', ' + m.date if m.date else ''}]",
           f"gpu {g.name}: {g.memory_gib:g} GiB, {g.hbm_tb_per_s:g} TB/s, {g.bf16_tflops:g} TFLOP/s bf16, "
           f"{g.interconnect} {g.interconnect_gb_per_s:g} GB/s, {g.gpus_per_node} per node, "
           f"${g.usd_per_gpu_hour:.2f}/GPU-h  [price: {g.price_source}, {g.price_date}; spec: {g.spec_source}]",
           "TP sizes: " + "; ".join(f"{o.tp} {'ok' if o.ok else 'no: ' + o.reason}"
                                     for o in tp_options(m, g.gpus_per_node))]
    if p.options:
        out.append(f"weights: {p.options[0].weights.formula}")
    for o in p.options:
        s = o.shape
        out += ["", f"## {o.kv_format.value}", f"KV: {o.kv.formula}",
                f"KV total: {o.kv.bytes_per_sequence / GIB:.3f} GiB x batch {r.batch} = {o.kv_bytes_total / GIB:,.1f} GiB"]
        if s:
            out += [f"shape: TP {s.tp} x PP {s.pp} x {s.replicas} replica(s) = {s.gpus} GPU(s), {s.seqs} sequences per replica "
                    f"(replicas = ceil({r.batch} / {s.memory.max_seqs}))",
                    f"per GPU: {s.memory.formula}; holding {s.seqs} -> KV {s.kv_bytes_per_gpu / GIB:.2f} GiB",
                    f"overhead: {_overhead_formula(m, s.tp * s.pp)}",
                    f"weights read per step: {o.decode.weights_read.formula}",
                    f"decode: {o.decode.formula}",
                    f"cost: {o.cost.formula}",
                    f"prefill (one {r.ctx}-token prompt): {o.prefill.formula}"]
        out += [f"considered: {a}" for a in o.alternatives]
        out += [f"rejected: {x}" for x in o.rejected]
        out += [f"note: {n}" for n in o.notes]
    return "\n".join(out)


def _overhead_formula(m, gpus: int) -> str:
    from .memory import overhead

    return overhead(m, gpus).formula
