"""Tensor-parallel slicing of the kernel tables: each rank encodes and attends over its own KV
heads (and their query heads) with its slice of the transforms; the gathered result equals the
single-rank one (CPU interpreter; the multi-GPU run is issue 10's)."""

import pytest
import torch

from oscar_cluster.errors import ConfigError
from oscar_cluster.kernels import layer_tables, paged_attention, shard_tables, write_kv
from oscar_cluster.kernels.layout import rope_offset_ratio

from test_kernels import _fitted, _inputs


@pytest.mark.parametrize("world", [2, 4])
def test_ranks_gather_to_the_single_rank_result(world):
    d, H, Hq, bs = 64, 4, 12, 16
    codec = _fitted(d, H, Hq, seed=21)
    full = layer_tables(codec, 0)
    g = torch.Generator().manual_seed(world)
    P, B = 45, 2
    nb = B * 3
    bt = torch.arange(nb, dtype=torch.int32).view(B, 3)
    k, v = _inputs(B * P, H, d, g)
    pos = torch.arange(P).repeat(B)
    slots = (bt[torch.arange(B).repeat_interleave(P), pos // bs].long() * bs + pos % bs)
    cache = torch.full((nb, bs, H, full.slot_bytes), 0xA5, dtype=torch.uint8)
    write_kv(k, v, pos, slots, cache, full)
    sink_k = torch.stack([k[b * P:b * P + 4] for b in range(B)]).bfloat16()
    sink_v = torch.stack([v[b * P:b * P + 4] for b in range(B)]).bfloat16()
    q = torch.randn(B, Hq, d, generator=g)
    kn, vn = _inputs(B, H, d, g)
    cu = torch.arange(B + 1, dtype=torch.int32)
    pl = torch.full((B,), P, dtype=torch.int32)
    want = paged_attention(q, kn, vn, cache, bt, pl, cu, sink_k, sink_v, full, d ** -0.5)

    h, gq = H // world, Hq // world
    outs = []
    for r in range(world):
        tr = shard_tables(full, r, world)
        heads = slice(r * h, (r + 1) * h)
        rank_cache = torch.full((nb, bs, h, full.slot_bytes), 0xA5, dtype=torch.uint8)
        write_kv(k[:, heads], v[:, heads], pos, slots, rank_cache, tr)  # the rank encodes its own heads
        assert torch.equal(rank_cache, cache[:, :, heads]), "a rank's pages are its slice of the full pages"
        outs.append(paged_attention(q[:, r * gq:(r + 1) * gq], kn[:, heads], vn[:, heads], rank_cache, bt, pl, cu,
                                    sink_k[:, :, heads], sink_v[:, :, heads], tr, d ** -0.5))
    torch.testing.assert_close(torch.cat(outs, dim=1), want, atol=1e-5, rtol=1e-5)


def test_each_rank_has_its_own_heads_key_offset_ratio():
    """The ratio picks the RoPE-mean term's precision per launch: a rank whose heads have small key
    offsets must not inherit another rank's large one."""
    full = layer_tables(_fitted(64, 4, 8, seed=5), 0)
    full.rope_mean[0] *= 40  # head 0 (rank 0 of 2) gets a large offset
    full.rope_offset_ratio = rope_offset_ratio(full.rope_mean, full.k_W)
    ratios = [shard_tables(full, r, 2).rope_offset_ratio for r in range(2)]
    for r in range(2):
        heads = slice(2 * r, 2 * r + 2)
        assert ratios[r] == pytest.approx(rope_offset_ratio(full.rope_mean[heads], full.k_W[heads]), rel=1e-9)
    assert ratios[0] == pytest.approx(full.rope_offset_ratio, rel=1e-9) and ratios[1] < ratios[0] / 10


def test_tp_must_divide_the_kv_heads():
    full = layer_tables(_fitted(64, 4, 8, seed=2), 0)
    with pytest.raises(ConfigError, match="does not divide the layer's 4 KV heads"):
        shard_tables(full, 0, 3)
    with pytest.raises(ConfigError, match="rank 2 is not in 0..1"):
        shard_tables(full, 2, 2)
