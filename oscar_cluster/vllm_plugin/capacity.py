"""KV capacity of the packed pages against a bf16 cache of the same memory (pure arithmetic).

vLLM sizes pages from the spec (`customize_spec`): per layer, block_size x kv_heads x slot
bytes, against block_size x kv_heads x 2 d x 2 bytes in bf16, and it allocates
`available // bytes_per_block` blocks. So the same memory holds about 4 d / slot_bytes times the
tokens: 7.1x at d = 64 with 2-bit codes (36-byte slots), 7.5x at d = 128 (68-byte slots).

The bf16 attention-sink pool (`sinks.py`) lives outside vLLM's KV budget; its bytes are reported
beside the capacity (`sink_pool_bytes`), never hidden in it.
"""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["KvCapacity", "kv_capacity", "sink_pool_bytes"]


@dataclass(frozen=True)
class KvCapacity:
    """Figures of one engine (per TP rank where it matters; ratios are the same on every rank).

    kv_bytes_per_token / bf16_bytes_per_token: all layers and all KV heads of the model;
    bits_per_element: bits of a packed slot over its 2 d elements (codes and scales, padded to the
    widest layer); capacity_tokens: tokens the allocated blocks hold; bf16_capacity_tokens: tokens
    a bf16 cache would hold in the same memory (whole bf16 blocks); ratio: their quotient."""

    num_blocks: int
    block_size: int
    kv_memory_bytes: int
    kv_bytes_per_token: int
    bf16_bytes_per_token: int
    bits_per_element: float
    capacity_tokens: int
    bf16_capacity_tokens: int
    ratio: float


def kv_capacity(num_blocks: int, block_size: int, num_layers: int, total_kv_heads: int, rank_kv_heads: int,
                head_dim: int, slot_bytes: int, kv_memory_bytes: int | None = None,
                dtype_bytes: int = 2) -> KvCapacity:
    """kv_memory_bytes: the KV memory of one rank if known (vLLM's --kv-cache-memory-bytes), else
    the bytes the blocks occupy."""
    page = block_size * num_layers * rank_kv_heads * slot_bytes  # one block, all layers, one rank
    bf16_page = block_size * num_layers * rank_kv_heads * 2 * head_dim * dtype_bytes
    memory = int(kv_memory_bytes) if kv_memory_bytes else num_blocks * page
    bf16_tokens = (memory // bf16_page) * block_size
    tokens = num_blocks * block_size
    return KvCapacity(
        num_blocks=num_blocks, block_size=block_size, kv_memory_bytes=memory,
        kv_bytes_per_token=num_layers * total_kv_heads * slot_bytes,
        bf16_bytes_per_token=num_layers * total_kv_heads * 2 * head_dim * dtype_bytes,
        bits_per_element=slot_bytes * 8 / (2 * head_dim), capacity_tokens=tokens,
        bf16_capacity_tokens=bf16_tokens, ratio=tokens / bf16_tokens if bf16_tokens else float("inf"))


def sink_pool_bytes(rows: int, sinks: int, num_layers: int, rank_kv_heads: int, head_dim: int) -> int:
    """Bytes of the bf16 sink pool of one rank: K and V, [rows, sinks, kv_heads, d] per layer."""
    return rows * sinks * num_layers * rank_kv_heads * head_dim * 2 * 2
