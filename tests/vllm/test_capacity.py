"""capacity: the packed pages' capacity against bf16 in the same memory, figure by figure."""

import pytest

from oscar_cluster.vllm_plugin.capacity import kv_capacity, sink_pool_bytes


def test_smollm2_figures():
    # SmolLM2-135M: 30 layers, 3 KV heads, d = 64; 2-bit codes + 4 scale bytes = 36-byte slots
    c = kv_capacity(num_blocks=2589, block_size=128, num_layers=30, total_kv_heads=3, rank_kv_heads=3, head_dim=64,
                    slot_bytes=36, kv_memory_bytes=1 << 30)
    assert c.kv_bytes_per_token == 30 * 3 * 36 == 3240
    assert c.bf16_bytes_per_token == 30 * 3 * 256 == 23040
    assert c.bits_per_element == 36 * 8 / 128 == 2.25
    assert c.capacity_tokens == 2589 * 128
    assert c.bf16_capacity_tokens == (2**30 // (128 * 30 * 3 * 256)) * 128 == 364 * 128
    assert c.ratio == pytest.approx(2589 / 364)


def test_memory_defaults_to_the_blocks_and_tp_ranks_share_the_ratio():
    one = kv_capacity(num_blocks=1000, block_size=16, num_layers=80, total_kv_heads=8, rank_kv_heads=8, head_dim=128,
                      slot_bytes=68)
    four = kv_capacity(num_blocks=1000, block_size=16, num_layers=80, total_kv_heads=8, rank_kv_heads=2, head_dim=128,
                       slot_bytes=68)
    assert one.kv_memory_bytes == 1000 * 16 * 80 * 8 * 68
    assert one.ratio == four.ratio == pytest.approx(1000 / (one.kv_memory_bytes // (16 * 80 * 8 * 512)))
    assert four.kv_bytes_per_token == one.kv_bytes_per_token == 80 * 8 * 68


def test_sink_pool_bytes():
    assert sink_pool_bytes(rows=16, sinks=4, num_layers=30, rank_kv_heads=3, head_dim=64) == 16 * 4 * 30 * 3 * 64 * 4
