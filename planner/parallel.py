"""Parallel shapes (DESIGN.md section 8): TP sizes, KV replication, pipeline stages, replicas.

TP sizes divide the attention heads and fit in one node (<= gpus_per_node); with GQA they also
divide the KV heads or are a multiple of them (vLLM replicates each KV head TP / kv_heads times
past that point). MLA keeps the whole latent on every TP rank. Pipeline stages (PP > 1) are only
used with the largest TP, when one node is not enough; each stage holds ceil(L / PP) layers.
Replicas hold the batch: a replica takes as many sequences as its free memory allows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from .memory import KVBytes, WeightBytes, layer_share, overhead
from .specs import GIB, ModelSpec, PlanRequest

__all__ = ["TPOption", "GPUMemory", "Shape", "tp_options", "kv_replication", "kv_rank_share", "gpu_memory",
           "candidate_shapes"]


@dataclass(frozen=True)
class TPOption:
    tp: int
    ok: bool
    reason: str


def tp_options(model: ModelSpec, gpus_per_node: int) -> tuple[TPOption, ...]:
    out = []
    for tp in range(1, gpus_per_node + 1):
        if model.q_heads % tp:
            out.append(TPOption(tp, False, f"{model.q_heads} attention heads not divisible by {tp}"))
        elif not model.is_mla and model.kv_heads % tp and tp % model.kv_heads:
            out.append(TPOption(tp, False, f"{model.kv_heads} KV heads neither divide nor are divided by {tp}"))
        else:
            out.append(TPOption(tp, True, "ok"))
    return tuple(out)


def kv_replication(model: ModelSpec, tp: int) -> float:
    """Copies of each KV element across the TP group (1 = no replication)."""
    if model.is_mla:
        return float(tp)
    return tp / model.kv_heads if tp > model.kv_heads else 1.0


def kv_rank_share(model: ModelSpec, tp: int) -> float:
    """Fraction of one sequence's KV (per layer) held by one TP rank."""
    return kv_replication(model, tp) / tp


@dataclass(frozen=True)
class GPUMemory:
    """One GPU of a replica with `tp` x `pp` GPUs (the largest stage)."""

    usable_bytes: float
    weights_bytes: float
    overhead_bytes: float
    kv_per_seq_bytes: float
    max_seqs: int
    formula: str

    @property
    def free_bytes(self) -> float:
        return self.usable_bytes - self.weights_bytes - self.overhead_bytes


def gpu_memory(req: PlanRequest, kv: KVBytes, w: WeightBytes, tp: int, pp: int) -> GPUMemory:
    m, g = req.model, req.gpu
    usable = req.gpu_mem_util * g.memory_gib * GIB
    share = layer_share(m, pp)
    weights = w.bytes * share / tp
    ov = overhead(m, tp * pp).bytes
    kv_seq = kv.bytes_per_sequence * share * kv_rank_share(m, tp)
    free = usable - weights - ov
    max_seqs = max(0, math.floor(free / kv_seq)) if kv_seq > 0 else 0
    formula = (f"usable {req.gpu_mem_util:g} x {g.memory_gib:g} GiB = {usable / GIB:.1f} GiB; weights "
               f"{w.bytes / GIB:.1f} GiB x {share:.3f} (layers/stage) / TP {tp} = {weights / GIB:.2f} GiB; overhead "
               f"{ov / GIB:.2f} GiB; free for KV {free / GIB:.2f} GiB; KV per sequence on this GPU "
               f"{kv.bytes_per_sequence / GIB:.3f} GiB x {share:.3f} x {kv_rank_share(m, tp):.4g} (rank share) = "
               f"{kv_seq / GIB:.3f} GiB -> {max_seqs} sequences")
    return GPUMemory(usable, weights, ov, kv_seq, max_seqs, formula)


@dataclass(frozen=True)
class Shape:
    """A deployable shape: `replicas` copies of a TP x PP engine, `seqs` sequences each."""

    tp: int
    pp: int
    replicas: int
    seqs: int
    memory: GPUMemory
    kv_replication: float

    @property
    def gpus(self) -> int:
        return self.tp * self.pp * self.replicas

    @property
    def kv_bytes_per_gpu(self) -> float:
        return self.seqs * self.memory.kv_per_seq_bytes

    @property
    def label(self) -> str:
        return f"{self.tp}x{self.pp}x{self.replicas}"


def _shape(req: PlanRequest, kv: KVBytes, w: WeightBytes, tp: int, pp: int) -> tuple[Shape | None, GPUMemory]:
    mem = gpu_memory(req, kv, w, tp, pp)
    if mem.max_seqs < 1:
        return None, mem
    replicas = -(-req.batch // mem.max_seqs)
    seqs = -(-req.batch // replicas)
    return Shape(tp, pp, replicas, seqs, mem, kv_replication(req.model, tp)), mem


def candidate_shapes(req: PlanRequest, kv: KVBytes, w: WeightBytes) -> tuple[list[Shape], list[str]]:
    """Every feasible (TP, PP) with its fewest replicas, and why the others were dropped."""
    tps = [o.tp for o in tp_options(req.model, req.gpu.gpus_per_node) if o.ok]  # structural rejections: tp_options
    rejected: list[str] = []
    shapes: list[Shape] = []
    for tp in tps:
        s, mem = _shape(req, kv, w, tp, 1)
        if s:
            shapes.append(s)
        elif mem.free_bytes <= 0:
            rejected.append(f"TP {tp}: weights {mem.weights_bytes / GIB:.1f} + overhead {mem.overhead_bytes / GIB:.1f}"
                            f" GiB per GPU exceed the {mem.usable_bytes / GIB:.1f} GiB usable")
        else:
            rejected.append(f"TP {tp}: {mem.free_bytes / GIB:.1f} GiB free per GPU after weights and overhead "
                            f"< one sequence's KV {mem.kv_per_seq_bytes / GIB:.2f} GiB")
    tp = max(tps)
    best = min((s.gpus for s in shapes), default=None)
    for pp in range(2, req.model.layers + 1):
        if best is not None and tp * pp >= best:
            break
        s, _ = _shape(req, kv, w, tp, pp)
        if s:
            shapes.append(s)
            best = s.gpus if best is None else min(best, s.gpus)
            if s.replicas == 1:
                break
    return shapes, rejected
