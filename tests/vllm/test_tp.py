"""tp: a rank's KV heads and the codec restricted to them, equal to the kernels' shard_tables."""

import pytest
import torch
from vllm_support import fitted_codec

from oscar_cluster.errors import ConfigError
from oscar_cluster.kernels.layout import layer_tables, shard_tables
from oscar_cluster.vllm_plugin.tp import kv_head_range, shard_codec


@pytest.mark.parametrize("world, H, want", [
    (1, 8, [(0, 8)]),
    (2, 8, [(0, 4), (4, 4)]),
    (4, 2, [(0, 1), (0, 1), (1, 1), (1, 1)]),  # fewer KV heads than ranks: replicated, as vLLM does
    (2, 1, [(0, 1), (0, 1)]),
])
def test_kv_head_range(world, H, want):
    assert [kv_head_range(r, world, H) for r in range(world)] == want


def test_kv_head_range_errors():
    with pytest.raises(ConfigError, match="does not divide the model's 3 KV heads"):
        kv_head_range(0, 2, 3)
    with pytest.raises(ConfigError, match="do not divide tensor-parallel size 6"):
        kv_head_range(0, 6, 4)
    with pytest.raises(ConfigError, match="rank 2 is not in 0..1"):
        kv_head_range(2, 2, 4)


def test_shards_match_the_kernels_shard_tables():
    codec = fitted_codec(64, 4, 8, layers=2, seed=3)
    for layer in (0, 1):
        full = layer_tables(codec, layer)
        for rank in range(2):
            first, count = kv_head_range(rank, 2, 4)
            mine = layer_tables(shard_codec(codec, first, count), layer)
            ref = shard_tables(full, rank, 2)
            for name in ("k_T", "v_T", "k_W", "v_W", "k_b", "v_b", "k_mean", "v_std", "rope_mean"):
                torch.testing.assert_close(getattr(mine, name), getattr(ref, name))
            assert (mine.slot_bytes, mine.groups, mine.kv_heads) == (ref.slot_bytes, ref.groups, 2)


def test_shard_codec_encodes_like_the_full_codec_on_its_heads():
    codec = fitted_codec(64, 4, 8, seed=4)
    part = shard_codec(codec, 1, 2)
    x = torch.randn(9, 4, 64, generator=torch.Generator().manual_seed(0))
    pos = torch.arange(9) + 7
    torch.testing.assert_close(part.roundtrip(x[:, 1:3], "k", 0, pos), codec.roundtrip(x, "k", 0, pos)[:, 1:3])
    assert shard_codec(codec, 0, 4) is codec
    with pytest.raises(ConfigError, match="not within the codec's 4 heads"):
        shard_codec(codec, 3, 2)
