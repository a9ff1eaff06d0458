"""Triton kernels against their PyTorch references (CPU: TRITON_INTERPRET=1, set in tests/conftest.py).

Every test draws fresh random inputs, poisons what the kernel must overwrite, and uses odd shapes:
head dims 64/128/256, GQA 1/3/8, page sizes 16/32/64, ragged prefixes (empty, shorter than the
sinks, crossing pages), padding slots, fitted and random bit layouts (3-bit codes that straddle
bytes, 0-bit channels).
"""

import math

import pytest
import torch
import triton
import triton.language as tl

from oscar_cluster import codecs
from oscar_cluster.errors import ConfigError
from oscar_cluster.kernels import (layer_tables, paged_attention, paged_attention_bf16,
                                   paged_attention_bf16_reference, paged_attention_reference, write_kv,
                                   write_kv_reference)
from oscar_cluster.kernels.attention import ROPE_SPLIT_RATIO, _group_levels, query_tiling
from oscar_cluster.kernels.write_kv import MAX_IN_KERNEL_TRANSFORM_DIM, read_slots
from oscar_cluster.synthetic import offset_key_codec, synthetic_oscar_codec

POISON = 0xA5


def _fitted(d, H, Hq, seed=0, layers=1, key_mean="rope"):
    return synthetic_oscar_codec(d, H, Hq, layers=layers, seed=seed, key_mean=key_mean)


def _random_layout(codec, d, g):
    """Replace layer 0's layouts with random non-increasing ones (runs of 8 channels, 0..4 bits)."""
    for kind in ("k", "v"):
        seg = torch.randint(0, 5, (d // 8,), generator=g).sort(descending=True).values
        codec.layers[0][kind].bits = seg.repeat_interleave(8).to(torch.int64)
    return codec


@pytest.fixture(scope="module", params=[(64, 2, 6), (128, 1, 8), (256, 2, 2)], ids=["d64-g3", "d128-g8", "d256-g1"])
def setup(request):
    d, H, Hq = request.param
    return _fitted(d, H, Hq, seed=d), d, H, Hq


def _inputs(n, H, d, g, dtype=torch.float32):
    k = (torch.randn(n, H, d, generator=g) * 1.5 + 0.5).to(dtype)
    v = torch.randn(n, H, d, generator=g).to(dtype)
    return k, v


@pytest.mark.parametrize("layout,transform", [("fitted", "kernel"), ("random", "kernel"), ("fitted", "host"),
                                              ("random", "host")])
def test_write_kv_matches_codec(setup, layout, transform):
    codec, d, H, _ = setup
    g = torch.Generator().manual_seed(11)
    if layout == "random":
        codec = _random_layout(_fitted(d, H, 2 * H, seed=d), d, g)
    tb = layer_tables(codec, 0)
    n, nb, bs = 45, 8, 16
    k, v = _inputs(n, H, d, g)
    pos = torch.randint(0, 5000, (n,), generator=g)
    slots = torch.randperm(nb * bs, generator=g)[:n]
    slots[[3, 17]] = -1  # padding
    got = torch.full((nb, bs, H, tb.slot_bytes), POISON, dtype=torch.uint8)
    want = got.clone()
    if transform == "kernel" and d > MAX_IN_KERNEL_TRANSFORM_DIM:  # no [d, d] tile in the kernel: refused
        with pytest.raises(ConfigError, match=f"up to {MAX_IN_KERNEL_TRANSFORM_DIM}"):
            write_kv(k, v, pos, slots, got, tb, transform=transform)
        assert bool((got == POISON).all()), "a refused write_kv wrote to the cache"
        return
    write_kv(k, v, pos, slots, got, tb, transform=transform)
    write_kv_reference(codec, 0, k, v, pos, slots, want)
    untouched = torch.ones(nb * bs, dtype=torch.bool)
    untouched[slots[slots >= 0]] = False
    assert bool((got.view(nb * bs, -1)[untouched] == POISON).all()), "kernel wrote outside slot_mapping"
    same = (got == want).float().mean().item()
    assert same >= 0.995, f"only {same:.4f} of the slot bytes equal the codec's encoding"
    keep = slots >= 0
    flat_g, flat_w = got.view(nb * bs, H, -1), want.view(nb * bs, H, -1)
    kg, vg = read_slots(codec, 0, flat_g[slots[keep]], pos[keep], tb)
    kw, vw = read_slots(codec, 0, flat_w[slots[keep]], pos[keep], tb)
    # any boundary flips cost no more than the codec's own error
    for got_x, want_x, x in ((kg, kw, k[keep].float()), (vg, vw, v[keep].float())):
        assert (got_x - x).pow(2).mean() <= 1.01 * (want_x - x).pow(2).mean() + 1e-9


@pytest.mark.parametrize("fn", ["host_transform", "host_transform_fused", "host_transform_reference"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_host_transform_matches_float64(dtype, fn):
    """The host path's x' = T (x - R_p m), the Triton prep pass and its torch reference: against
    float64 maths through rope.apply_rope, in the [kv_heads, tokens, d] layout it hands the kernel;
    a float32 input is not modified."""
    import importlib

    from oscar_cluster.rope import apply_rope

    host_transform = getattr(importlib.import_module("oscar_cluster.kernels.write_kv"), fn)

    codec = _fitted(64, 3, 6, seed=9)
    tb = layer_tables(codec, 0)
    assert tb.has_rope_mean
    g = torch.Generator().manual_seed(4)
    k, v = _inputs(37, 3, 64, g, dtype)
    k_before = k.clone()
    pos = torch.randint(0, 200_000, (37,), generator=g)
    for kind, x, T in (("k", k, tb.k_T), ("v", v, tb.v_T)):
        got = host_transform(x, pos, kind, tb)
        assert got.shape == (37, 3, 64) and got.dtype == torch.float32 and got.stride() == (64, 48 * 64, 1)
        x64 = x.double()
        if kind == "k":
            m = tb.rope_mean.double()[None].expand(37, -1, -1)
            x64 = x64 - apply_rope(m, pos, tb.inv_freq.double())
        want = torch.einsum("hij,thj->thi", T.double(), x64)
        err = (got.double() - want).abs().max() / want.abs().max()
        assert err < 1e-5, f"{kind}: host transform off by {err:.2e} of the largest coordinate"
    assert torch.equal(k, k_before), "host_transform modified its input"


@pytest.mark.parametrize("d,H,n", [(128, 2, 70), (256, 2, 33), (64, 5, 1)])
def test_host_transform_fused_matches_the_reference(d, H, n):
    """The one-kernel transform (prep and T on tensor-core products, looped over output-channel blocks
    and heads) against the torch reference: every head, every output block (d 128 and 256 take 2 and
    4), ragged token counts across program blocks, and a strided input (a slice of a wider qkv)."""
    import importlib

    wk = importlib.import_module("oscar_cluster.kernels.write_kv")
    codec = _fitted(d, H, H, seed=d + n)
    tb = layer_tables(codec, 0)
    g = torch.Generator().manual_seed(n)
    wide = torch.randn(n, H, 3 * d, generator=g).to(torch.bfloat16)
    pos = torch.randint(0, 50_000, (n,), generator=g)
    for kind, x in (("k", wide[..., :d]), ("v", wide[..., d:2 * d])):
        got = wk.host_transform_fused(x, pos, kind, tb)
        want = wk.host_transform_reference(x, pos, kind, tb)
        assert got.shape == want.shape == (n, H, d) and got.stride() == (d, wk._padded(n) * d, 1)
        err = (got - want).abs().max() / want.abs().max()
        assert err < 1e-5, f"{kind}, d={d}: off by {err:.2e} of the largest coordinate"


@pytest.mark.parametrize("transform", ["kernel", "host"])
@pytest.mark.parametrize("layout", ["fused_qkv_slice", "heads_major", "odd_head_stride", "strided_d"])
def test_write_kv_strided_inputs(transform, layout):
    """k and v as views that are not contiguous: slices of a fused [tokens, 2, kv_heads, d] tensor,
    transformers' [kv_heads, tokens, d] transposed, a head stride that is not a multiple of 16 (the
    kernel's unit-stride variant), and a stride of 2 along d (copied first). The slots must match the
    codec's own encoding, as for contiguous inputs."""
    codec = _fitted(64, 2, 4, seed=6)
    tb = layer_tables(codec, 0)
    g = torch.Generator().manual_seed(8)
    n = 30
    if layout == "fused_qkv_slice":
        fused = torch.randn(n, 2, 2, 64, generator=g).bfloat16()
        k, v = fused[:, 0], fused[:, 1]
    elif layout == "heads_major":
        k = torch.randn(2, n, 64, generator=g).bfloat16().transpose(0, 1)
        v = torch.randn(2, n, 64, generator=g).bfloat16().transpose(0, 1)
    elif layout == "odd_head_stride":
        k = torch.randn(n, 2, 65, generator=g).bfloat16()[..., :64]
        v = torch.randn(n, 2, 65, generator=g).bfloat16()[..., :64]
    else:
        k = torch.randn(n, 2, 128, generator=g).bfloat16()[..., ::2]
        v = torch.randn(n, 2, 128, generator=g).bfloat16()[..., ::2]
    assert not k.is_contiguous() and not v.is_contiguous()
    pos = torch.arange(n) + 7
    slots = torch.randperm(64, generator=g)[:n]
    got = torch.full((4, 16, 2, tb.slot_bytes), POISON, dtype=torch.uint8)
    want = got.clone()
    write_kv(k, v, pos, slots, got, tb, transform=transform)
    write_kv_reference(codec, 0, k, v, pos, slots, want)
    written = got.view(64, -1)[slots]
    assert not bool((written == POISON).all(dim=1).any()), "a slot was not written"
    same = (got == want).float().mean().item()
    assert same >= 0.995, f"only {same:.4f} of the slot bytes equal the codec's encoding"


def test_write_kv_host_path_inputs_that_require_grad():
    """Storage is not differentiable: the host path encodes an autograd-tracked k/v as it is."""
    codec = _fitted(64, 2, 4, seed=6)
    tb = layer_tables(codec, 0)
    g = torch.Generator().manual_seed(9)
    w = torch.randn(64, 64, generator=g, requires_grad=True)
    k = torch.randn(12, 2, 64, generator=g) @ w
    v = torch.randn(12, 2, 64, generator=g) @ w
    pos, slots = torch.arange(12), torch.arange(12)
    got = torch.full((1, 16, 2, tb.slot_bytes), POISON, dtype=torch.uint8)
    want = got.clone()
    write_kv(k, v, pos, slots, got, tb, transform="host")
    write_kv_reference(codec, 0, k.detach(), v.detach(), pos, slots, want)
    assert (got == want).float().mean().item() >= 0.995


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_write_kv_half_inputs(dtype):
    codec = _fitted(64, 2, 4, seed=5)
    tb = layer_tables(codec, 0)
    g = torch.Generator().manual_seed(2)
    k, v = _inputs(20, 2, 64, g, dtype)
    pos = torch.arange(20) + 100
    slots = torch.arange(20) * 2
    got = torch.full((4, 16, 2, tb.slot_bytes), POISON, dtype=torch.uint8)
    want = got.clone()
    write_kv(k, v, pos, slots, got, tb)
    write_kv_reference(codec, 0, k, v, pos, slots, want)
    assert (got == want).float().mean().item() >= 0.995


def _paged_batch(codec, tb, d, H, Hq, prefix, q_lens, bs, g):
    """Write random prefixes through write_kv into shuffled pages; fresh tokens for each sequence."""
    B = len(prefix)
    max_blocks = max(1, max(-(-p // bs) for p in prefix))
    nb = B * max_blocks + 3
    bt = torch.randperm(nb, generator=g)[: B * max_blocks].reshape(B, max_blocks).to(torch.int32)
    cache = torch.full((nb, bs, H, tb.slot_bytes), POISON, dtype=torch.uint8)
    S = tb.sinks
    sink_k = torch.full((B, S, H, d), float("nan"), dtype=torch.bfloat16)  # unused rows stay NaN
    sink_v = sink_k.clone()
    for b, P in enumerate(prefix):
        if P == 0:
            continue
        k, v = _inputs(P, H, d, g)
        pos = torch.arange(P)
        write_kv(k, v, pos, bt[b, pos // bs].long() * bs + pos % bs, cache, tb)
        n = min(S, P)
        sink_k[b, :n], sink_v[b, :n] = k[:n].bfloat16(), v[:n].bfloat16()
    cu = torch.tensor([0] + torch.tensor(q_lens).cumsum(0).tolist(), dtype=torch.int32)
    Tq = int(cu[-1])
    q = torch.randn(Tq, Hq, d, generator=g) * 2
    kn, vn = _inputs(Tq, H, d, g)
    return q, kn, vn, cache, bt, torch.tensor(prefix, dtype=torch.int32), cu, sink_k, sink_v


@pytest.mark.parametrize("mode,splits,bs", [("decode", 1, 16), ("decode", 3, 32), ("prefill", 1, 64)])
def test_paged_attention_matches_reference(setup, mode, splits, bs):
    codec, d, H, Hq = setup
    g = torch.Generator().manual_seed(7 + bs)
    tb = layer_tables(codec, 0)
    prefix = [0, 2, 37, 70] if mode == "decode" else [0, 3, 50]
    q_lens = [1] * len(prefix) if mode == "decode" else [5, 1, 19]
    q, kn, vn, cache, bt, pl, cu, sk, sv = _paged_batch(codec, tb, d, H, Hq, prefix, q_lens, bs, g)
    sm = d ** -0.5
    got = paged_attention(q, kn, vn, cache, bt, pl, cu, sk, sv, tb, sm, num_splits=splits, poison=True)
    want = paged_attention_reference(q, kn, vn, cache, bt, pl, cu, sk, sv, codec, 0, tb, sm)
    assert got.shape == q.shape and bool(torch.isfinite(got).all())
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)


def test_paged_attention_random_layout_and_gqa_rows():
    """A random layout (straddling 3-bit codes, 0-bit channels), GQA 5 (not a power of two),
    chunked prefill with two query blocks, and a global key mean (the q.k_b term) instead of RoPE's."""
    d, H, Hq = 64, 1, 5
    g = torch.Generator().manual_seed(3)
    codec = _random_layout(_fitted(d, H, Hq, seed=9, key_mean="global"), d, g)
    tb = layer_tables(codec, 0)
    assert not tb.has_rope_mean and float(tb.k_b.abs().max()) > 0
    q, kn, vn, cache, bt, pl, cu, sk, sv = _paged_batch(codec, tb, d, H, Hq, [33, 6], [9, 4], 16, g)
    sm = 0.11
    got = paged_attention(q, kn, vn, cache, bt, pl, cu, sk, sv, tb, sm, block_q=2, poison=True)
    want = paged_attention_reference(q, kn, vn, cache, bt, pl, cu, sk, sv, codec, 0, tb, sm)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)


@pytest.mark.parametrize("block_n", [16, 64])
@pytest.mark.parametrize("extra_v_bytes", [0, 1, 2, 3])
def test_codes_read_as_words_at_every_slot_alignment(extra_v_bytes, block_n):
    """In decode tiles (64 keys) the attention kernel reads each segment as the aligned 32-bit
    word(s) holding it, in 16-key tiles as bytes: slots of 4k, 4k+1, 4k+2 and 4k+3 bytes put
    segments at every offset within a word, and 4-byte segments across two words. Exact (float32
    operands) and with bf16 operands, whose levels are computed in float16 (emulated here)."""
    d, H, Hq = 64, 2, 4
    codec = _fitted(d, H, Hq, seed=13)
    codec.layers[0]["k"].bits = torch.tensor([4, 3, 3, 2, 2, 2, 1, 1]).repeat_interleave(8)
    codec.layers[0]["v"].bits = torch.tensor([3] * extra_v_bytes + [2] * (8 - extra_v_bytes)).repeat_interleave(8)
    tb = layer_tables(codec, 0)
    assert tb.slot_bytes == 18 + 16 + extra_v_bytes + 4 and tb.slot_bytes % 4 == (2 + extra_v_bytes) % 4
    g = torch.Generator().manual_seed(40 + extra_v_bytes)
    q, kn, vn, cache, bt, pl, cu, sk, sv = _paged_batch(codec, tb, d, H, Hq, [45, 9, 23], [1, 1, 1], 16, g)
    sm = d ** -0.5
    want = paged_attention_reference(q, kn, vn, cache, bt, pl, cu, sk, sv, codec, 0, tb, sm)
    got = paged_attention(q, kn, vn, cache, bt, pl, cu, sk, sv, tb, sm, num_splits=2, poison=True,
                          operand_precision="fp32", block_n=block_n)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)
    low = paged_attention(q, kn, vn, cache, bt, pl, cu, sk, sv, tb, sm, operand_precision="bf16", block_n=block_n)
    assert float((low - want).norm() / want.norm()) < 1e-2
    # float16 operands for the level products (emulated): no level conversion, 3 more mantissa bits;
    # the other products stay bf16, so the error is about bf16's, not far below it
    half = paged_attention(q, kn, vn, cache, bt, pl, cu, sk, sv, tb, sm, operand_precision="fp16", block_n=block_n)
    assert float((half - want).norm() / want.norm()) < 1.1 * float((low - want).norm() / want.norm())


def test_split_tiles_pad_fewer_channels():
    """A group's segments as one power-of-two tile, or two where that pads fewer channels; every
    segment is covered, each tile is a power of two of at least 2 segments (tl.dot's K >= 16)."""
    from oscar_cluster.kernels.attention import split_tiles

    assert [split_tiles(n) for n in (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12, 13, 16)] == [
        (1, 1), (2, 1), (2, 1), (4, 1), (4, 1), (4, 2), (4, 2), (8, 1), (8, 1), (8, 2), (8, 4), (16, 1), (16, 1)]
    for n in range(1, 65):
        first, second = split_tiles(n)
        tiles = [t for t in (first, second) if t > 1]
        assert all(t & (t - 1) == 0 for t in tiles)
        assert first >= n if second == 1 else (first < n <= first + second)
        assert sum(tiles) <= max(2, 1 << (n - 1).bit_length())


@pytest.mark.parametrize("mode,block_n", [("decode", 64), ("decode", 16), ("prefill", 16)])
def test_paged_attention_with_remainder_tiles(mode, block_n):
    """Every K and V width holds a count that the kernel splits into two tiles (5, 6, 9, 12 segments:
    4 + 2, 4 + 2, 8 + 2, 8 + 4), so each remainder tile's channel and byte offsets are exercised,
    in decode (words and bytes) and chunked prefill; against the float64 reference."""
    from oscar_cluster.kernels.attention import _group_args

    d, H, Hq = 256, 1, 3
    codec = _fitted(d, H, Hq, seed=21)
    codec.layers[0]["k"].bits = torch.tensor([4] * 5 + [3] * 6 + [2] * 12 + [1] * 9).repeat_interleave(8)
    codec.layers[0]["v"].bits = torch.tensor([4] * 6 + [3] * 5 + [2] * 9 + [1] * 12).repeat_interleave(8)
    for kind in ("k", "v"):  # every channel weighs the same: the fitted stds fall to 0.3% of the first's
        codec.layers[0][kind].std = torch.ones_like(codec.layers[0][kind].std)
    tb = layer_tables(codec, 0)
    args = _group_args(tb.groups)
    assert all(args[f"{kind}{b}RP"] > 1 for kind in "KV" for b in (4, 3, 2, 1))
    g = torch.Generator().manual_seed(5)
    prefix, q_lens = ([70, 5, 33], [1, 1, 1]) if mode == "decode" else ([40, 0], [6, 3])
    q, kn, vn, cache, bt, pl, cu, sk, sv = _paged_batch(codec, tb, d, H, Hq, prefix, q_lens, 16, g)
    sm = d ** -0.5
    want = paged_attention_reference(q, kn, vn, cache, bt, pl, cu, sk, sv, codec, 0, tb, sm)
    got = paged_attention(q, kn, vn, cache, bt, pl, cu, sk, sv, tb, sm, num_splits=2, poison=True,
                          operand_precision="fp32", block_n=block_n)
    torch.testing.assert_close(got, want, atol=2e-4, rtol=2e-4)
    # bf16 operands (emulated here): levels in float16 through the same remainder tiles
    low = paged_attention(q, kn, vn, cache, bt, pl, cu, sk, sv, tb, sm, num_splits=2, operand_precision="bf16",
                          block_n=block_n)
    assert float((low - want).norm() / want.norm()) < 1e-2
    half = paged_attention(q, kn, vn, cache, bt, pl, cu, sk, sv, tb, sm, num_splits=2, operand_precision="fp16",
                           block_n=block_n)
    assert float((half - want).norm() / want.norm()) < 1.1 * float((low - want).norm() / want.norm())


@triton.jit
def _levels_probe(cache_ptr, so_ptr, poly_ptr, out_ptr, OFF, B: tl.constexpr, NSEG, NSEG_P2: tl.constexpr,
                  BLOCK_N: tl.constexpr, LOWP: tl.constexpr):
    """The attention kernel's level decode alone: the levels of BLOCK_N slots at byte offsets so."""
    n = tl.arange(0, BLOCK_N)
    so = tl.load(so_ptr + n)
    lev = _group_levels(cache_ptr, so, poly_ptr, n >= 0, OFF, B, NSEG, NSEG_P2, BLOCK_N, LOWP)
    c = tl.arange(0, NSEG_P2 * 8)
    tl.store(out_ptr + n[:, None] * (NSEG_P2 * 8) + c[None, :], lev.to(tl.float32))


@pytest.mark.parametrize("n", [16, 32])
@pytest.mark.parametrize("bits", [1, 2, 3, 4])
@pytest.mark.parametrize("lowp", [0, 2])
def test_level_decode_gives_the_table_level_of_every_code(bits, lowp, n):
    """`_group_levels` on random bytes: n slots (16: read as bytes, 32: as words) of 4k+3 bytes
    (segments at every offset in a word, 4-byte segments across two), 3 segments at byte 5 of
    each: every channel's level must be the level table's entry for its code, read from the
    little-endian bit stream here. float32 (LOWP 0) to 1e-6, the float16 path of bf16 operands (its
    emulation, LOWP 2) to 2^-10."""
    from oscar_cluster.codecs.quantizers import MAX_BITS, gaussian_levels
    from oscar_cluster.kernels.layout import level_polynomials

    levels = torch.zeros(MAX_BITS + 1, 16)
    for b in range(1, MAX_BITS + 1):
        levels[b, :1 << b] = gaussian_levels(b, "lloyd")
    poly = level_polynomials(levels.reshape(-1))
    g = torch.Generator().manual_seed(bits)
    slot, off, nseg = 4 * 5 + 3, 5, 3
    cache = torch.randint(0, 256, (n * slot + 8,), generator=g, dtype=torch.uint8)
    so = torch.arange(n, dtype=torch.int64) * slot
    out = torch.full((n, 4 * 8), float("nan"))
    _levels_probe[(1,)](cache, so, poly, out, off, B=bits, NSEG=nseg, NSEG_P2=4, BLOCK_N=n, LOWP=lowp)
    for t in range(n):
        seg_bytes = cache[t * slot + off: t * slot + off + nseg * bits].tolist()
        stream = sum(v << (8 * i) for i, v in enumerate(seg_bytes))  # little-endian, channel i at bits [i b, i b + b)
        codes = [(stream >> (bits * i)) & ((1 << bits) - 1) for i in range(8 * nseg)]
        want = levels[bits, codes]
        tol = 1e-6 if lowp == 0 else 2.0 ** -10 * float(levels[bits].abs().max())
        assert float((out[t, :8 * nseg] - want).abs().max()) <= tol, (t, out[t, :8 * nseg], want)


def test_paged_attention_refuses_an_unaligned_cache():
    d, H, Hq = 64, 1, 2
    codec = _fitted(d, H, Hq, seed=2)
    tb = layer_tables(codec, 0)
    g = torch.Generator().manual_seed(1)
    q, kn, vn, cache, bt, pl, cu, sk, sv = _paged_batch(codec, tb, d, H, Hq, [20], [1], 16, g)
    shifted = torch.empty(cache.numel() + 1, dtype=torch.uint8)[1:].view(cache.shape)
    shifted.copy_(cache)
    with pytest.raises(ConfigError, match="4-byte aligned"):
        paged_attention(q, kn, vn, shifted, bt, pl, cu, sk, sv, tb, d ** -0.5)


@pytest.mark.parametrize("splits", [1, 4])
def test_bf16_paged_kernel_matches_reference(splits):
    d, H, Hq, bs = 128, 2, 8, 16
    g = torch.Generator().manual_seed(splits)
    prefix = [0, 5, 77]  # one new token each (cu below)
    nb = 20
    kc = torch.randn(nb, bs, H, d, generator=g).bfloat16()
    vc = torch.randn(nb, bs, H, d, generator=g).bfloat16()
    bt = torch.randperm(nb, generator=g)[:18].reshape(3, 6).to(torch.int32)
    cu = torch.arange(4, dtype=torch.int32)
    q = torch.randn(3, Hq, d, generator=g)
    kn, vn = _inputs(3, H, d, g)
    pl = torch.tensor(prefix, dtype=torch.int32)
    got = paged_attention_bf16(q, kn, vn, kc, vc, bt, pl, cu, d ** -0.5, num_splits=splits, poison=True)
    want = paged_attention_bf16_reference(q, kn, vn, kc, vc, bt, pl, cu, d ** -0.5)
    torch.testing.assert_close(got, want, atol=2e-5, rtol=2e-5)
    with pytest.raises(ConfigError, match="packed levels"):  # bf16 pages have no levels to take in float16
        paged_attention_bf16(q, kn, vn, kc, vc, bt, pl, cu, d ** -0.5, operand_precision="fp16")


def test_write_kv_transform_choice_is_checked():
    codec = _fitted(256, 1, 2, seed=4)
    tb = layer_tables(codec, 0)
    k, v = _inputs(3, 1, 256, torch.Generator().manual_seed(0))
    cache = torch.zeros(1, 16, 1, tb.slot_bytes, dtype=torch.uint8)
    with pytest.raises(ConfigError, match="up to 128, got 256"):
        write_kv(k, v, torch.arange(3), torch.arange(3), cache, tb, transform="kernel")
    with pytest.raises(ConfigError, match="'host' or 'kernel'"):
        write_kv(k, v, torch.arange(3), torch.arange(3), cache, tb, transform="gpu")


def test_bad_inputs_are_named():
    codec = _fitted(64, 2, 4, seed=1)
    tb = layer_tables(codec, 0)
    k = torch.randn(4, 2, 64)
    with pytest.raises(ConfigError, match="uint8"):
        write_kv(k, k, torch.arange(4), torch.arange(4), torch.zeros(2, 16, 2, tb.slot_bytes), tb)
    with pytest.raises(ConfigError, match="slot bytes"):
        write_kv(k, k, torch.arange(4), torch.arange(4), torch.zeros(2, 16, 2, 7, dtype=torch.uint8), tb)
    with pytest.raises(ConfigError, match="k must be"):
        write_kv(k[:, :1], k, torch.arange(4), torch.arange(4), torch.zeros(2, 16, 2, tb.slot_bytes, dtype=torch.uint8), tb)
    with pytest.raises(ConfigError, match="'oscar' codec only"):
        layer_tables(codecs.get("int2", head_dim=64), 0)
    recent = codecs.get("oscar", recent=8)
    recent.load_state_dict(codec.state_dict())
    with pytest.raises(ConfigError, match="recent"):
        layer_tables(recent, 0)
    cache = torch.zeros(2, 16, 2, tb.slot_bytes, dtype=torch.uint8)
    cu = torch.tensor([0, 1], dtype=torch.int32)
    with pytest.raises(ConfigError, match="sink_k/sink_v"):
        paged_attention(torch.randn(1, 4, 64), k[:1], k[:1], cache, torch.zeros(1, 2, dtype=torch.int32),
                        torch.tensor([5], dtype=torch.int32), cu, torch.zeros(1, 2, 2, 64), torch.zeros(1, 2, 2, 64),
                        tb, 0.125)


def _offset_batch(ratio, seed, prefix=(300, 77)):
    """Two sequences (300 and 77 cached tokens by default) of keys with a constant offset `ratio` times their
    varying part, carried by the codec's RoPE-mean term; one decode query each."""
    d, H, Hq, bs = 64, 1, 4, 16
    g = torch.Generator().manual_seed(seed)
    codec, keys = offset_key_codec(d, H, Hq, ratio, seed=seed)
    tb = layer_tables(codec, 0)
    prefix = list(prefix)
    per_seq = -(-max(prefix) // bs)
    nb = 2 * per_seq + 1
    bt = torch.randperm(nb, generator=g)[: 2 * per_seq].reshape(2, per_seq).to(torch.int32)
    cache = torch.full((nb, bs, H, tb.slot_bytes), POISON, dtype=torch.uint8)
    sk = torch.zeros(2, tb.sinks, H, d, dtype=torch.bfloat16)
    sv = sk.clone()
    for b, P in enumerate(prefix):
        pos = torch.arange(P)
        k, v = keys(pos), torch.randn(P, H, d, generator=g)
        write_kv(k, v, pos, bt[b, pos // bs].long() * bs + pos % bs, cache, tb)
        sk[b], sv[b] = k[:tb.sinks].bfloat16(), v[:tb.sinks].bfloat16()
    cu = torch.tensor([0, 1, 2], dtype=torch.int32)
    pl = torch.tensor(prefix, dtype=torch.int32)
    q = torch.randn(2, Hq, d, generator=g) * 0.1
    kn = keys(pl.long())
    vn = torch.randn(2, H, d, generator=g)
    sm = d ** -0.5
    want = paged_attention_reference(q, kn, vn, cache, bt, pl, cu, sk, sv, codec, 0, tb, sm).double()

    def rel_err(**kw):
        got = paged_attention(q, kn, vn, cache, bt, pl, cu, sk, sv, tb, sm, **kw)
        return float((got.double() - want).norm() / want.norm())

    return tb, rel_err


def test_bf16_operands_keep_a_large_rope_offset_within_1pct():
    """On the GPU the matrix operands are bf16. A key offset 58x the varying part, carried by the
    RoPE-mean term, then cost 3.6% of the output on Qwen2.5's layer 0; that term is now a split
    (three bf16 products) on such layers. Emulated here (operand_precision='bf16' rounds operands
    to bf16)."""
    tb, rel_err = _offset_batch(58.0, seed=58)
    assert tb.has_rope_mean and tb.rope_offset_ratio == pytest.approx(58.0, rel=0.05)
    assert rel_err(operand_precision="fp32") < 1e-4
    split = rel_err(operand_precision="bf16")  # the default: split, the offset is above ROPE_SPLIT_RATIO
    assert split < 1e-2, f"bf16 operands: {split:.3%} of the output"
    assert split == rel_err(operand_precision="bf16", rope_split=True)
    single = rel_err(operand_precision="bf16", rope_split=False)
    assert single > 1.5 * split, f"one bf16 product should lose precision here: {single:.3%} vs {split:.3%}"
    with pytest.raises(ConfigError, match="operand_precision"):
        rel_err(operand_precision="tf32")


@pytest.mark.parametrize("anchor", [32, 5])
def test_rope_term_rotation_over_many_tiles_stays_exact(anchor, monkeypatch):
    """The RoPE-mean term's angle is exact (float64) at every ROPE_ANCHOR_TILES-th tile of a split
    and rotated by BLOCK_N w in float32 from tile to tile in between: over 4,000 tokens (250
    tiles), in one split and in 3, the float32 kernel stays within 1e-4 of the float64 reference on
    keys whose offset (carried by that term) is 58x their varying part, where a drifting angle
    would show first. Anchors every 5 tiles put chunk ends inside splits of 84 tiles."""
    import oscar_cluster.kernels.attention as attention

    monkeypatch.setattr(attention, "ROPE_ANCHOR_TILES", triton.language.constexpr(anchor))
    tb, rel_err = _offset_batch(58.0, seed=5, prefix=(4000, 1500))
    for splits in (1, 3):
        assert rel_err(operand_precision="fp32", num_splits=splits, block_n=16) < 1e-4


def test_small_rope_offset_takes_one_product_within_1pct():
    """Below ROPE_SPLIT_RATIO the RoPE-mean term is one bf16 product (fewer registers), and the
    output stays as close to the reference as with the split."""
    tb, rel_err = _offset_batch(1.0, seed=1)
    assert tb.rope_offset_ratio == pytest.approx(1.0, rel=0.05) and tb.rope_offset_ratio < ROPE_SPLIT_RATIO
    default = rel_err(operand_precision="bf16")
    assert default == rel_err(operand_precision="bf16", rope_split=False)  # the default is one product
    assert default < 1e-2
    assert default < 1.05 * rel_err(operand_precision="bf16", rope_split=True)


def test_per_call_ints_are_not_specialized():
    """Triton compiles a variant of its own when an int argument is 1 or a multiple of 16. Only the
    model's shape may be specialized; token counts, block-table widths and split counts change from
    call to call (a decode step vs a prefill chunk, a growing context), and each change would
    otherwise cost a compile of several seconds on the first call that hits it."""
    import importlib

    from triton._C.libtriton import native_specialize_impl
    from triton.backends.compiler import BaseBackend
    from triton.runtime.jit import JITFunction

    att = importlib.import_module("oscar_cluster.kernels.attention")
    wkv = importlib.import_module("oscar_cluster.kernels.write_kv")
    # sx_t: write_kv's token stride, d (host transform) or the caller's [tokens, ...] row (model shape)
    model_shape = {"Hq", "H", "G", "block_size", "n_sinks", "slot_bytes", "ks_off", "vs_off", "scale_off", "sx_t"}
    floats = {"qk_scale", "inv_coded"}
    for kernel in (att._attn_kernel, att._reduce_kernel, wkv._write_kind_kernel):
        if not isinstance(kernel, JITFunction):  # under TRITON_INTERPRET=1: the decorator's arguments
            kernel = JITFunction(kernel.fn, **kernel.kwargs)
        specialized = {p.name for p in kernel.params
                       if not (p.do_not_specialize or p.is_constexpr or p.name.endswith("_ptr"))}
        assert specialized - floats <= model_shape, f"{kernel.fn.__name__}: {sorted(specialized - model_shape)}"
    # the reduction's split tile is a constexpr: one value for every split count the default picks (<= 64)
    assert {att.reduce_width(n) for n in range(1, 65)} == {64} and att.reduce_width(65) == 128
    # the rule the list above guards against, as Triton applies it
    keys = {n: native_specialize_impl(BaseBackend, n, False, True, True) for n in (1, 50, 4096)}
    assert len(set(keys.values())) == 3


@pytest.mark.parametrize("kind", ["lloyd", "uniform"])
def test_level_polynomials_pass_through_every_level(kind):
    """The attention kernel evaluates each bit width's levels as an odd polynomial (Horner in x^2,
    float32); `evaluate_level_polynomial` is that computation in PyTorch. For both kinds of level
    tables the codec has it must give the table's level for every code of every width. A table it
    cannot follow to 1e-5 in float32 (here magnitudes in alternating steps) is refused by name."""
    from oscar_cluster.codecs.quantizers import MAX_BITS, gaussian_levels
    from oscar_cluster.kernels.layout import evaluate_level_polynomial, level_polynomials

    levels = torch.zeros(MAX_BITS + 1, 16)
    for b in range(1, MAX_BITS + 1):
        levels[b, :1 << b] = gaussian_levels(b, kind)
    poly = level_polynomials(levels.reshape(-1)).view(MAX_BITS + 1, 8)
    for b in range(1, MAX_BITS + 1):
        torch.testing.assert_close(evaluate_level_polynomial(poly[b], b), levels[b, :1 << b], rtol=1e-6, atol=1e-7)
        half = evaluate_level_polynomial(poly[b], b, torch.float16).float()  # the kernel with bf16 operands
        assert float((half - levels[b, :1 << b]).abs().max()) <= 2.0 ** -10 * float(levels[b].abs().max())
    wiggly = levels.clone()  # magnitudes in alternating small and large steps
    wiggly[4, 8:] = torch.tensor([0.1, 0.9, 1.0, 1.9, 2.0, 2.9, 3.0, 3.9])
    wiggly[4, :8] = -wiggly[4, 8:].flip(0)
    with pytest.raises(ConfigError, match="4-bit level table"):
        level_polynomials(wiggly.reshape(-1))


def _rope_term_drift(tiles: int, anchor: int, block_n: int = 16, d: int = 128, base: float = 1e6) -> float:
    """The kernel's float32 recurrence for the RoPE-mean term's coefficients (A', B'), rotated by
    BLOCK_N w per tile and reset to the float64 angle every `anchor` tiles, against float64 exact
    rotations: the largest error over the tiles, relative to ||(A, B)||."""
    g = torch.Generator().manual_seed(0)
    w = base ** (-torch.arange(0, d, 2, dtype=torch.float64) / d)
    a, b = torch.randn(d // 2, generator=g, dtype=torch.float64), torch.randn(d // 2, generator=g, dtype=torch.float64)
    step = (block_n * w) % (2 * math.pi)
    c_step, s_step = torch.cos(step).float(), torch.sin(step).float()
    worst = 0.0
    for t in range(tiles):
        ang = (t * block_n * w) % (2 * math.pi)
        want_a, want_b = a * ang.cos() + b * ang.sin(), b * ang.cos() - a * ang.sin()
        if t % anchor == 0:
            ra, rb = want_a.float(), want_b.float()
        err = torch.cat([ra.double() - want_a, rb.double() - want_b]).norm() / torch.cat([a, b]).norm()
        worst = max(worst, float(err))
        ra, rb = ra * c_step + rb * s_step, rb * c_step - ra * s_step
    return worst


def test_rope_term_anchor_bounds_the_float32_drift():
    """Why the kernel re-anchors the RoPE-mean angle (ROPE_ANCHOR_TILES): rotating in float32 from
    tile to tile drifts linearly with the tile count: 1.3e-4 of the term after the 8,192 16-key
    tiles of a 128K prefill in one split (at a 58x key offset, about 0.8% of the scores' varying
    part); re-anchored every 32 tiles it stays below 1e-6."""
    from oscar_cluster.kernels.attention import ROPE_ANCHOR_TILES

    unanchored = _rope_term_drift(8192, anchor=8192)
    anchored = _rope_term_drift(8192, anchor=int(ROPE_ANCHOR_TILES.value))
    assert unanchored > 1e-4, unanchored
    assert anchored < 1e-5, anchored


def test_query_tiling_cuda_prefill_takes_one_token_per_program():
    """The H200 gave wrong chunked-prefill results with 64- and 128-row query blocks and exact ones
    with one query token per program (attention-h200-7.json): CUDA's default is block_q = 1, larger
    explicit blocks are refused unless unverified_query_blocks, and the interpreter keeps blocks."""
    # CUDA prefill default: one token, its 8 heads padded to 16 rows; packed 16-key tiles, bf16 64
    assert query_tiling(True, True, 2048, 8) == (1, 16, 16, None)
    assert query_tiling(True, False, 2048, 8) == (1, 16, 64, None)
    # decode on CUDA: unchanged (64-key tiles, 2 warps for packed pages); GQA 32 still one token
    assert query_tiling(True, True, 1, 8) == (1, 16, 64, 2)
    assert query_tiling(True, True, 1, 32)[:2] == (1, 32)
    with pytest.raises(ConfigError, match=r"64 query heads per KV head make 64-row.*GQA up to 32"):
        query_tiling(True, True, 1, 64)
    assert query_tiling(True, True, 1, 64, unverified_query_blocks=True)[:2] == (1, 64)
    assert query_tiling(False, True, 1, 64)[:2] == (1, 64)
    # off the GPU: up to 16 tokens per block, at most 128 rows
    assert query_tiling(False, True, 300, 8) == (16, 128, 16, None)
    assert query_tiling(False, True, 5, 4) == (8, 32, 16, None)
    assert query_tiling(False, True, 300, 32)[:2] == (4, 128)
    # explicit blocks on CUDA: 16 rows allowed, more refused with the fix named
    assert query_tiling(True, True, 300, 8, block_q=2)[:2] == (2, 16)
    with pytest.raises(ConfigError, match=r"block_q=16 makes 128-row.*block_q=1.*unverified_query_blocks"):
        query_tiling(True, True, 300, 8, block_q=16)
    assert query_tiling(True, True, 300, 8, block_q=16, unverified_query_blocks=True) == (16, 128, 16, None)
    # key tiles above 16 with multi-row blocks fault on CUDA: refused even when testing blocks
    with pytest.raises(ConfigError, match="block_n=64 with 128-row"):
        query_tiling(True, True, 300, 8, block_q=16, block_n=64, unverified_query_blocks=True)
    assert query_tiling(False, True, 300, 8, block_n=64) == (16, 128, 64, None)
