"""Per-step metadata of the OSCAR backend, built from vLLM's `CommonAttentionMetadata`.

For B sequences and T tokens of one step: how many tokens each sequence already has in the pages
(prefix = seq_len - query_len; the fresh tokens attend in full precision), each token's position
(the codec's RoPE mean depends on it), and the bf16 sink pool's rows (`sinks.py`): the row each
sequence reads its sinks from, the row each token at a position < sinks is written to, and the
sequences whose row is gone (their sinks are decoded from the packed slots). Reads a few values
on the host (query starts, sequence lengths, first block ids): one small device-to-host copy per
step on CUDA, which is why the backend declares no CUDA-graph support.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from vllm.v1.attention.backend import AttentionMetadata, CommonAttentionMetadata

from .sinks import SinkRows

__all__ = ["OscarMetadata", "SinkGroup", "build_metadata"]

log = logging.getLogger("vllm.oscar")  # under vLLM's logger, so vLLM's handlers print it


@dataclass
class SinkGroup:
    """The sink-row map shared by the layers of one KV-cache group (they share block tables)."""

    rows: SinkRows
    sinks: int
    warned: bool = False


@dataclass
class OscarMetadata(AttentionMetadata):
    """One step of one KV-cache group: B sequences, T tokens (rows of q/k/v).

    query_start_loc: [B+1] int32; prefix_lens: [B] int32 tokens already in the pages;
    block_table: [B, max_blocks] int32; slot_mapping: [T] int64 (-1 = padding); positions: [T]
    int64; sink_rows: [B] int64 pool row of each sequence's sinks (-1: none); sink_write_rows: [T]
    int64 pool row of tokens at positions < sinks (else -1). Host side: max lengths, whether any
    sink is written, and sink_fallback [(sequence, n)]: read the first n sinks from the codes."""

    num_actual_tokens: int
    num_reqs: int
    max_query_len: int
    max_prefix_len: int
    query_start_loc: torch.Tensor
    prefix_lens: torch.Tensor
    block_table: torch.Tensor
    slot_mapping: torch.Tensor
    positions: torch.Tensor
    sink_rows: torch.Tensor
    sink_write_rows: torch.Tensor
    has_sink_writes: bool
    sink_fallback: list[tuple[int, int]]


def build_metadata(cam: CommonAttentionMetadata, group: SinkGroup, device: torch.device) -> OscarMetadata:
    B, T = cam.num_reqs, cam.num_actual_tokens
    qsl = cam.query_start_loc_cpu[:B + 1].to(torch.int64)
    seq = cam.seq_lens_cpu_upper_bound if cam.seq_lens_cpu_upper_bound is not None else cam.seq_lens
    seq = seq[:B].to("cpu", torch.int64)
    q_lens = qsl[1:] - qsl[:-1]
    prefix = seq - q_lens
    n_q = int(qsl[-1]) if B else 0
    req = torch.repeat_interleave(torch.arange(B), q_lens, output_size=n_q)
    positions = torch.zeros(T, dtype=torch.int64)
    positions[:n_q] = prefix[req] + torch.arange(n_q) - qsl[:-1][req]
    bt = cam.block_table_tensor[:B]
    rows, writes, fallback = _sink_rows(group, bt, prefix.tolist(), q_lens.tolist(), qsl.tolist(), T)
    return OscarMetadata(
        num_actual_tokens=T, num_reqs=B, max_query_len=int(cam.max_query_len),
        max_prefix_len=int(prefix.max()) if B else 0, query_start_loc=cam.query_start_loc[:B + 1],
        prefix_lens=prefix.to(torch.int32).to(device), block_table=bt, slot_mapping=cam.slot_mapping[:T],
        positions=positions.to(device), sink_rows=rows.to(device), sink_write_rows=writes.to(device),
        has_sink_writes=bool((writes >= 0).any()), sink_fallback=fallback)


def _sink_rows(g: SinkGroup, bt: torch.Tensor, prefix: list[int], q_lens: list[int], qsl: list[int], T: int):
    """Pool rows to read (per sequence) and write (per token), and the sequences whose sinks are
    missing from the pool."""
    S, B = g.sinks, len(prefix)
    rows = torch.full((B,), -1, dtype=torch.int64)
    writes = torch.full((T,), -1, dtype=torch.int64)
    fallback = []
    if not S or not B:
        return rows, writes, fallback
    first = bt[:, 0].tolist()
    busy = set()  # rows this step reads or writes: never recycled within the step
    for b in range(B):
        if q_lens[b] and prefix[b] > 0:
            r = g.rows.lookup(first[b])
            if r is None:
                fallback.append((b, min(S, prefix[b])))
            else:
                rows[b] = r
                busy.add(r)
    for b in range(B):
        if q_lens[b] and prefix[b] < S:
            r = g.rows.start(first[b], busy) if prefix[b] == 0 else g.rows.lookup(first[b])
            if r is not None:
                busy.add(r)
                n = min(S, prefix[b] + q_lens[b]) - prefix[b]
                writes[qsl[b]:qsl[b] + n] = r
    if fallback:
        g.rows.fallbacks += len(fallback)
        if not g.warned:
            g.warned = True
            log.warning("OSCAR: the attention sinks of %d sequence(s) are no longer in the bf16 sink pool (%d rows); "
                        "they are read from their 2-bit codes. Raise additional_config oscar.sink_rows to keep "
                        "them in bf16 (logged once)", len(fallback), g.rows.rows)
    return rows, writes, fallback
