"""Paged attention over the packed OSCAR cache: decode (split-K) and chunked prefill, one kernel.

Batch layout (vLLM's varlen shape). Sequence b has `prefix_lens[b]` cached tokens (positions
0..prefix-1: the first `tables.sinks` in the bf16 sink buffers, the rest in packed pages reached
through `block_table[b]`) and `q_len[b] = cu_q[b+1] - cu_q[b]` fresh tokens at positions
prefix..prefix+q_len-1, given in full precision (`q, k_new, v_new` rows cu_q[b]..cu_q[b+1]).
Fresh token i attends to the whole prefix and to fresh tokens <= i (causal). Decode is q_len = 1;
chunked prefill is any q_len, the chunk against itself in full precision and against the prefix
through the codes, merged in one online softmax (a log-sum-exp merge).

Per packed token with scale s_k, level vector L_k, position p (DESIGN.md section 6):
    q.k = (q k_W) . (s_k L_k) + q . k_b + q . R_p m
computed as one matrix product per tile on the codes' levels, a per-row constant, and the RoPE
mean term sum_i A_i cos(p w_i) + B_i sin(p w_i) = sum_i A'_i cos(n w_i) + B'_i sin(n w_i) for
p = p0 + n in a tile: (A', B') is (A, B) rotated by p0 w (float64 angle every ROPE_ANCHOR_TILES
tiles, one float32 rotation by BLOCK_N w per tile in between), against a [BLOCK_N, d/2] table
loaded once. Values are accumulated in the codec's space (sum p s_v L_v) and mapped back once:
(.) v_W + (sum p) v_b.

`paged_attention_reference` is the spec: it decodes the slots with `OscarCodec._decode` and runs
exact attention in float64. `paged_attention_bf16` runs the same kernel on bf16 pages (the
same-design bf16 baseline of the benchmarks).
"""

from __future__ import annotations

import math

import torch
import triton
import triton.language as tl

from ..codecs.oscar import OscarCodec
from ..errors import ConfigError
from .layout import LayerTables, tile_segments
from .write_kv import check_cache, read_slots, wrap_angle

__all__ = ["paged_attention", "decode_attention", "prefill_attention", "paged_attention_bf16",
           "paged_attention_reference", "paged_attention_bf16_reference", "rope_tile_table"]

LOG2E = 1.4426950408889634
ROPE_ANCHOR_TILES = tl.constexpr(32)  # tiles between exact float64 anchors of the RoPE-mean term's angle
ROPE_SPLIT_RATIO = 3.0  # key offset (||mean|| / rms of the rest) above which the RoPE-mean term is split:
# one bf16 product makes the output error 0.9% larger (relative) at 2x and 6% at 4x
# (benchmarks/results/attention-precision-cpu.json)


@triton.jit
def _group_levels(cache_ptr, so, poly_ptr, ok, OFF, B: tl.constexpr, NSEG, NSEG_P2: tl.constexpr, BLOCK_N: tl.constexpr,
                  LOWP: tl.constexpr):
    """Levels of one bit-width group: NSEG segments of 8 channels of B bits at byte OFF of each slot.

    A segment is B bytes, little-endian, channel i at bits [i B, i B + B) (the codec's run packing),
    so every load and shift is regular (no per-channel tables). In decode tiles (BLOCK_N >= 32) each
    segment is read as the one or two aligned 32-bit words that hold it, shifted into place (a funnel
    shift) in one thread: 24% fewer instructions per key at 64 keys x 2 warps than loading its B
    bytes in B lanes and summing them across lanes. 16-key tiles (prefill) keep the bytes: at 16 keys
    x 4 warps they issue 308 instructions per key against 367 with words (kernel-registers-sm90-08435cb.json,
    and kernel-registers-sm90.json at commit 1a20efb). A level is
    the odd polynomial of the code's centred value x = (c - (2^B - 1)/2) / 2^(B-1) through the B-bit
    table (`level_polynomials`): c becomes a float by the exponent trick, then Horner in x^2. With
    bf16 matrix operands (LOWP 1, and its emulation 2) in float16, two codes per instruction (Horner's
    error, at most about 2^-10 of the largest level, is below the bf16 rounding, 2^-8, of the
    product's operand that follows); exact float32 otherwise. kernel-registers-sm90.json counts the
    loop's instructions.
    cache_ptr: the packed pages (uint8, 4-byte aligned); so: [N] int64 byte offsets of the slots
    -> [N, NSEG_P2 * 8] levels (padding channels: levels of code 0)."""
    seg = tl.arange(0, NSEG_P2)
    at = so[:, None] + (OFF + seg * B)[None, :]  # [N, NSEG_P2] byte offset of each segment
    msk = ok[:, None] & (seg[None, :] < NSEG)
    if BLOCK_N >= 32:  # decode tiles: the word(s), in one thread
        words = cache_ptr.to(tl.pointer_type(tl.uint32))
        sh = ((at & 3) * 8).to(tl.uint32)
        lo = tl.load(words + (at >> 2), mask=msk, other=0)
        if B > 1:  # the next word only where the segment crosses into it (within the slot: the scales follow)
            hi = tl.load(words + (at >> 2) + 1, mask=msk & (sh + 8 * B > 32), other=0)
            word = (lo >> sh) | ((hi << 1) << (31 - sh))  # (hi << 32 - sh would be undefined at sh = 0)
        else:  # one byte never crosses a word
            word = lo >> sh
    else:  # 16-key tiles (prefill): the B bytes in B lanes, summed; fewer instructions per key there
        byt = tl.arange(0, 4)
        raw = tl.load(cache_ptr + at[:, :, None] + byt[None, None, :],
                      mask=msk[:, :, None] & (byt[None, None, :] < B), other=0)
        word = tl.sum(raw.to(tl.uint32) << (8 * byt).to(tl.uint32)[None, None, :], axis=2)
    code = (word[:, :, None] >> (B * tl.arange(0, 8))[None, None, :]) & ((1 << B) - 1)
    code = tl.reshape(code, [BLOCK_N, NSEG_P2 * 8])
    HALFV: tl.constexpr = 1 << (B - 1)
    if LOWP == 0:
        c = (code | 0x4B000000).to(tl.float32, bitcast=True) - 8388608.0  # 2^23 + c, minus 2^23: c exactly
    else:
        c = (code | 0x6400).to(tl.uint16).to(tl.float16, bitcast=True) - 1024.0  # 2^10 + c, minus 2^10
    x = c * (1.0 / HALFV) - (2 * HALFV - 1) / (2 * HALFV)  # exact (a power-of-two scale)
    x2 = x * x
    acc = tl.zeros([BLOCK_N, NSEG_P2 * 8], c.dtype) + tl.load(poly_ptr + 8 * B + HALFV - 1).to(c.dtype)
    for j in tl.static_range(HALFV - 2, -1, -1):
        acc = acc * x2 + tl.load(poly_ptr + 8 * B + j).to(c.dtype)
    return acc * x


@triton.jit
def _group_query(qt_ptr, row, row_ok, D: tl.constexpr, C0, NSEG, NSEG_P2: tl.constexpr):
    """The query's channels [C0, C0 + 8 NSEG) of one group: [M, NSEG_P2 * 8] (padding 0)."""
    w = tl.arange(0, NSEG_P2 * 8)
    return tl.load(qt_ptr + row[:, None] * D + C0 + w[None, :], mask=row_ok[:, None] & (w[None, :] < 8 * NSEG),
                   other=0.0)


@triton.jit
def _group_store(ptr, out, acc, row_ok, D: tl.constexpr, C0, NSEG, NSEG_P2: tl.constexpr):
    w = tl.arange(0, NSEG_P2 * 8)
    tl.store(ptr + out[:, None] * D + C0 + w[None, :], acc, mask=row_ok[:, None] & (w[None, :] < 8 * NSEG))


@triton.jit
def _scale(ptr, ok):
    """fp16 scale stored little-endian at ptr [N] -> [N] float32."""
    lo = tl.load(ptr, mask=ok, other=0).to(tl.int32)
    hi = tl.load(ptr + 1, mask=ok, other=0).to(tl.int32)
    return ((hi << 8) | lo).to(tl.int16).to(tl.float16, bitcast=True).to(tl.float32)


@triton.jit
def _mm(a, b, LOWP: tl.constexpr):
    """a @ b with float32 accumulation. LOWP 1: bf16 operands on the tensor cores (as any bf16
    attention kernel); 0: exact float32 (ieee); 2: operands rounded to bf16, then an exact float32
    product: what 1 computes, up to summation order, where there is no bf16 matrix product (the CPU
    interpreter), so tests can measure the bf16 path's error. LOWP 3 and 4 are 1 and 2 here; they
    differ in `_mm_levels` only."""
    if LOWP == 1 or LOWP == 3:
        return tl.dot(a.to(tl.bfloat16), b.to(tl.bfloat16))
    elif LOWP == 2 or LOWP == 4:
        return tl.dot(a.to(tl.bfloat16).to(tl.float32), b.to(tl.bfloat16).to(tl.float32), input_precision="ieee")
    else:
        return tl.dot(a.to(tl.float32), b.to(tl.float32), input_precision="ieee")


@triton.jit
def _mm_levels(a, b, LOWP: tl.constexpr):
    """A product with the packed codes' levels (computed in float16 when LOWP > 0, `_group_levels`):
    LOWP 3 takes them as float16 operands as they are, with the query (or the softmax weights) in
    float16 too (4: its emulation off the GPU). That saves the float16 -> float32 -> bf16 conversion
    of every level (HADD2.F32 and F2FP: 424 of 4,229 loop instructions per warp at 64 x 2 with the
    one-product RoPE term, benchmarks/results/kernel-registers-sm90-fp16-levels.json) and keeps 3
    more mantissa bits; the query's codec-space coordinates must stay below float16's 65504. On the
    H200 it was no faster (-0.5% to +3.3% per decode shape, attention-h200-6.json; -3.4% to +4.1%,
    median +0.5%, over the 24 shapes of -7.json), so it is opt-in.
    LOWP 1 and 2: bf16 operands, as `_mm`."""
    if LOWP == 3:
        return tl.dot(a.to(tl.float16), b.to(tl.float16))
    elif LOWP == 4:
        return tl.dot(a.to(tl.float16).to(tl.float32), b.to(tl.float16).to(tl.float32), input_precision="ieee")
    else:
        return _mm(a, b, LOWP)


@triton.jit
def _mm_split(a, b, LOWP: tl.constexpr):
    """a @ b to about float32 accuracy from three bf16 products (a = a_hi + a_lo, b likewise; the
    a_lo b_lo term is below float32's rounding). For the RoPE-mean term, which carries the keys'
    constant offset: 58x their varying part in Qwen2.5's layer 0, where the kernel was 3.6% off the
    reference with one bf16 product (benchmarks/results/tp-attention-h200x2.json; this term is the
    likely cause, checked in emulation by tests/kernels and benchmarks/precision_cpu.py)."""
    if LOWP == 0:
        return _mm(a, b, 0)
    else:
        a_hi = a.to(tl.bfloat16).to(tl.float32)
        b_hi = b.to(tl.bfloat16).to(tl.float32)
        a_lo = a.to(tl.float32) - a_hi
        b_lo = b.to(tl.float32) - b_hi
        return _mm(a_hi, b_hi, LOWP) + (_mm(a_hi, b_lo, LOWP) + _mm(a_lo, b_hi, LOWP))


@triton.jit
def _mm_rope(a, b, LOWP: tl.constexpr, ROPE_SPLIT: tl.constexpr):
    """The RoPE-mean term's product: split (about float32) where the layer's key offset is large,
    one product elsewhere (the split's six bf16 products made the decode kernel spill registers:
    benchmarks/results/kernel-registers-sm90.json)."""
    if ROPE_SPLIT:
        return _mm_split(a, b, LOWP)
    else:
        return _mm(a, b, LOWP)


@triton.jit
def _key_step(q, cache_ptr, so, poly_ptr, ok, OFF, B: tl.constexpr, NSEG, NSEG_P2: tl.constexpr, BLOCK_N: tl.constexpr,
              LOWP: tl.constexpr):
    """One key tile's scores in the codec's space: q [M, NSEG_P2 * 8] @ levels^T -> [M, BLOCK_N]."""
    return _mm_levels(q, tl.trans(_group_levels(cache_ptr, so, poly_ptr, ok, OFF, B, NSEG, NSEG_P2, BLOCK_N, LOWP)), LOWP)


@triton.jit
def _value_step(acc, alpha, pv, cache_ptr, so, poly_ptr, ok, OFF, B: tl.constexpr, NSEG, NSEG_P2: tl.constexpr,
                BLOCK_N: tl.constexpr, LOWP: tl.constexpr):
    """One online-softmax step of a value group's codec-space accumulator: acc alpha + pv @ levels."""
    return acc * alpha[:, None] + _mm_levels(pv, _group_levels(cache_ptr, so, poly_ptr, ok, OFF, B, NSEG, NSEG_P2,
                                                             BLOCK_N, LOWP), LOWP)


@triton.jit
def _online_update(s, m_i, l_i):
    """One online-softmax step (base 2): -> (p, alpha, m_new, l_new)."""
    m_new = tl.maximum(m_i, tl.max(s, axis=1))
    alpha = tl.exp2(m_i - m_new)
    p = tl.exp2(s - m_new[:, None])
    return p, alpha, m_new, l_i * alpha + tl.sum(p, axis=1)


@triton.jit
def _rescale(a4, a3, a2, a1, r4, r3, r2, r1, lq, alpha):
    """The codec-space accumulators (each group's first tile, then its remainder tile) and their
    weight sum times alpha [M] (an online-softmax step)."""
    return (a4 * alpha[:, None], a3 * alpha[:, None], a2 * alpha[:, None], a1 * alpha[:, None],
            r4 * alpha[:, None], r3 * alpha[:, None], r2 * alpha[:, None], r1 * alpha[:, None], lq * alpha)


# Run-time values, not specialized: Triton compiles a variant of its own for an int argument equal to
# 1 and for one divisible by 16. Not specialized: the layout's counts (see _group_args) and what
# changes from call to call (tokens, block-table width, splits), so a growing context or another
# batch size recompiles only where a constexpr changes (SPLIT, once; the reduction's split tile
# beyond 64 splits, see reduce_width); the model's shape (heads, page and slot sizes) is specialized.
PER_CALL_ARGS = ("Tq", "bt_stride", "tiles_per_split", "n_qblocks", "num_splits")


@triton.jit(do_not_specialize=["K4", "K3", "K2", "K1", "V4", "V3", "V2", "V1", *PER_CALL_ARGS])
def _attn_kernel(
    qt_ptr, qo_ptr, cm_ptr,  # [Tq, Hq, D] q k_W and [Tq, Hq] q.k_b, times qk_scale; [Tq, Hq, D] q as given
    rm_ptr, invf_ptr, cn_ptr, sn_ptr,  # [H, D] rope mean; [D/2] float64; [BLOCK_N, D/2] cos/sin(n w)
    cache_ptr, kc_ptr, vc_ptr,  # packed pages [slots, H, slot_bytes] | bf16 pages [slots, H, D] (PACKED=False)
    bt_ptr, bt_stride, prefix_ptr, cuq_ptr,
    sk_ptr, sv_ptr,  # [B, S, H, D] sink buffers
    kn_ptr, vn_ptr,  # [Tq, H, D] fresh keys and values
    poly_ptr,  # [(MAX_BITS+1) * 8] the level tables as odd polynomials (layout.level_polynomials)
    acct_ptr, acco_ptr, lq_ptr, m_ptr, l_ptr,  # [NS, Tq, Hq, D] x2, [NS, Tq, Hq] x3
    Tq, Hq, H, G, block_size, n_sinks, slot_bytes, ks_off, vs_off, tiles_per_split, n_qblocks, num_splits,
    qk_scale,  # sm_scale * log2(e), applied after q.k for keys given in full precision (as SDPA does)
    D: tl.constexpr, HALF: tl.constexpr, BLOCK_Q: tl.constexpr, G_P2: tl.constexpr, BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr, BLOCK_S: tl.constexpr, SPLIT: tl.constexpr, HAS_ROPE: tl.constexpr,
    PACKED: tl.constexpr, LOWP: tl.constexpr, ROPE_SPLIT: tl.constexpr,
    # bit layout of the layer: segments of 8 channels at 4, 3, 2, 1 bits (K then V; run-time), and
    # each group's tiles (compiled in, `split_tiles`): a first tile of P segments (a power of two, at
    # least 2; 1 = absent) and, where two tiles pad fewer channels than one, a remainder tile of RP
    # for the count's last (count - P) segments (1 = none)
    K4, K3, K2, K1, V4, V3, V2, V1,
    K4P: tl.constexpr, K3P: tl.constexpr, K2P: tl.constexpr, K1P: tl.constexpr,
    V4P: tl.constexpr, V3P: tl.constexpr, V2P: tl.constexpr, V1P: tl.constexpr,
    K4RP: tl.constexpr, K3RP: tl.constexpr, K2RP: tl.constexpr, K1RP: tl.constexpr,
    V4RP: tl.constexpr, V3RP: tl.constexpr, V2RP: tl.constexpr, V1RP: tl.constexpr,
):
    pid = tl.program_id(0)
    h = tl.program_id(1)
    split = tl.program_id(2)
    seq = pid // n_qblocks
    qb = pid % n_qblocks
    q0 = tl.load(cuq_ptr + seq)
    q_len = tl.load(cuq_ptr + seq + 1) - q0
    if qb * BLOCK_Q >= q_len:
        return
    prefix = tl.load(prefix_ptr + seq)
    d = tl.arange(0, D)
    n = tl.arange(0, BLOCK_N)
    r = tl.arange(0, BLOCK_M)
    g = r % G_P2
    qpos = qb * BLOCK_Q + r // G_P2  # fresh index of the row's query token
    row_ok = (r // G_P2 < BLOCK_Q) & (qpos < q_len) & (g < G)
    row = (q0 + qpos).to(tl.int64) * Hq + h * G + g  # [M] flat (token, head)

    m_i = tl.full([BLOCK_M], -1.0e30, tl.float32)
    l_i = tl.zeros([BLOCK_M], tl.float32)

    # ---- cached prefix from the pages ----
    if not PACKED:  # q as given and the output for the bf16 pages (packed: made after the loop)
        qo = tl.load(qo_ptr + row[:, None] * D + d[None, :], mask=row_ok[:, None], other=0.0)
        acc_o = tl.zeros([BLOCK_M, D], tl.float32)
    n_tiles = tl.cdiv(prefix, BLOCK_N)
    tile_lo = split * tiles_per_split
    tile_hi = tl.minimum(tile_lo + tiles_per_split, n_tiles)
    # channel and byte offsets of the groups (K codes, then V codes)
    KC3 = 8 * K4
    KC2 = 8 * (K4 + K3)
    KC1 = 8 * (K4 + K3 + K2)
    KO3 = 4 * K4
    KO2 = 4 * K4 + 3 * K3
    KO1 = 4 * K4 + 3 * K3 + 2 * K2
    VO4 = 4 * K4 + 3 * K3 + 2 * K2 + K1
    VC3 = 8 * V4
    VC2 = 8 * (V4 + V3)
    VC1 = 8 * (V4 + V3 + V2)
    VCODED = 8 * (V4 + V3 + V2 + V1)
    VO3 = VO4 + 4 * V4
    VO2 = VO4 + 4 * V4 + 3 * V3
    VO1 = VO4 + 4 * V4 + 3 * V3 + 2 * V2
    if PACKED:
        if K4P > 1:
            q4 = _group_query(qt_ptr, row, row_ok, D, 0, tl.minimum(K4, K4P), K4P)
        if K3P > 1:
            q3 = _group_query(qt_ptr, row, row_ok, D, KC3, tl.minimum(K3, K3P), K3P)
        if K2P > 1:
            q2 = _group_query(qt_ptr, row, row_ok, D, KC2, tl.minimum(K2, K2P), K2P)
        if K1P > 1:
            q1 = _group_query(qt_ptr, row, row_ok, D, KC1, tl.minimum(K1, K1P), K1P)
        if K4RP > 1:
            q4r = _group_query(qt_ptr, row, row_ok, D, 8 * K4P, K4 - K4P, K4RP)
        if K3RP > 1:
            q3r = _group_query(qt_ptr, row, row_ok, D, KC3 + 8 * K3P, K3 - K3P, K3RP)
        if K2RP > 1:
            q2r = _group_query(qt_ptr, row, row_ok, D, KC2 + 8 * K2P, K2 - K2P, K2RP)
        if K1RP > 1:
            q1r = _group_query(qt_ptr, row, row_ok, D, KC1 + 8 * K1P, K1 - K1P, K1RP)
        a4 = tl.zeros([BLOCK_M, 8 * V4P], tl.float32)
        a3 = tl.zeros([BLOCK_M, 8 * V3P], tl.float32)
        a2 = tl.zeros([BLOCK_M, 8 * V2P], tl.float32)
        a1 = tl.zeros([BLOCK_M, 8 * V1P], tl.float32)
        r4 = tl.zeros([BLOCK_M, 8 * V4RP], tl.float32)
        r3 = tl.zeros([BLOCK_M, 8 * V3RP], tl.float32)
        r2 = tl.zeros([BLOCK_M, 8 * V2RP], tl.float32)
        r1 = tl.zeros([BLOCK_M, 8 * V1RP], tl.float32)
        cm = tl.load(cm_ptr + row, mask=row_ok, other=0.0)
        if HAS_ROPE:
            i = tl.arange(0, HALF)
            qa = tl.load(qo_ptr + row[:, None] * D + i[None, :], mask=row_ok[:, None], other=0.0)
            qb_ = tl.load(qo_ptr + row[:, None] * D + HALF + i[None, :], mask=row_ok[:, None], other=0.0)
            ma = tl.load(rm_ptr + h * D + i)
            mb = tl.load(rm_ptr + h * D + HALF + i)
            ra = (qa * ma[None, :] + qb_ * mb[None, :]) * qk_scale  # multiplies cos(p w)
            rb = (qb_ * ma[None, :] - qa * mb[None, :]) * qk_scale  # multiplies sin(p w)
            # (A', B'): (A, B) rotated to a tile's first position p0 (float64 angle) at every
            # ROPE_ANCHOR_TILES-th tile, and by BLOCK_N w (float32) from tile to tile in between: the
            # float32 steps drift linearly, 1.3e-4 of the term over 8,192 tiles without anchors
            # (tests/kernels: test_rope_term_anchor_bounds_the_float32_drift)
            invf = tl.load(invf_ptr + i)
            ra_t = ra
            rb_t = rb
            step = wrap_angle(BLOCK_N * invf)
            c_step = tl.cos(step)
            s_step = tl.sin(step)
            # cos/sin(n w) of a tile, loaded once: [HALF, BLOCK_N]
            cn_t = tl.trans(tl.load(cn_ptr + n[:, None] * HALF + i[None, :]))
            sn_t = tl.trans(tl.load(sn_ptr + n[:, None] * HALF + i[None, :]))
    tile = tile_lo
    while tile < tile_hi:  # while, not range: runtime bounds (the interpreter's range needs Python ints)
        chunk_hi = tile_hi
        if PACKED:
            if HAS_ROPE:  # (A', B') at this tile from the exact float64 angle, every ROPE_ANCHOR_TILES tiles
                ang = wrap_angle((tile * BLOCK_N).to(tl.float64) * invf)
                c0 = tl.cos(ang)
                s0 = tl.sin(ang)
                ra_t = ra * c0[None, :] + rb * s0[None, :]
                rb_t = rb * c0[None, :] - ra * s0[None, :]
                chunk_hi = tl.minimum(tile + ROPE_ANCHOR_TILES, tile_hi)
        while tile < chunk_hi:
            t = tile * BLOCK_N + n
            in_seq = t < prefix
            blk = tl.load(bt_ptr + seq * bt_stride + t // block_size, mask=in_seq, other=0).to(tl.int64)
            slot = blk * block_size + t % block_size
            if PACKED:
                ok = in_seq & (t >= n_sinks)
                so = slot * (H * slot_bytes) + h * slot_bytes  # [N] int64
                base = cache_ptr + so
                s = tl.zeros([BLOCK_M, BLOCK_N], tl.float32)
                if K4P > 1:
                    s += _key_step(q4, cache_ptr, so, poly_ptr, ok, 0, 4, tl.minimum(K4, K4P), K4P, BLOCK_N, LOWP)
                if K3P > 1:
                    s += _key_step(q3, cache_ptr, so, poly_ptr, ok, KO3, 3, tl.minimum(K3, K3P), K3P, BLOCK_N, LOWP)
                if K2P > 1:
                    s += _key_step(q2, cache_ptr, so, poly_ptr, ok, KO2, 2, tl.minimum(K2, K2P), K2P, BLOCK_N, LOWP)
                if K1P > 1:
                    s += _key_step(q1, cache_ptr, so, poly_ptr, ok, KO1, 1, tl.minimum(K1, K1P), K1P, BLOCK_N, LOWP)
                if K4RP > 1:
                    s += _key_step(q4r, cache_ptr, so, poly_ptr, ok, 4 * K4P, 4, K4 - K4P, K4RP, BLOCK_N, LOWP)
                if K3RP > 1:
                    s += _key_step(q3r, cache_ptr, so, poly_ptr, ok, KO3 + 3 * K3P, 3, K3 - K3P, K3RP, BLOCK_N, LOWP)
                if K2RP > 1:
                    s += _key_step(q2r, cache_ptr, so, poly_ptr, ok, KO2 + 2 * K2P, 2, K2 - K2P, K2RP, BLOCK_N, LOWP)
                if K1RP > 1:
                    s += _key_step(q1r, cache_ptr, so, poly_ptr, ok, KO1 + K1P, 1, K1 - K1P, K1RP, BLOCK_N, LOWP)
                s = s * _scale(base + ks_off, ok)[None, :] + cm[:, None]
                if HAS_ROPE:  # sum_i A'_i cos(n w_i) + B'_i sin(n w_i), then A', B' move one tile on
                    s += _mm_rope(ra_t, cn_t, LOWP, ROPE_SPLIT)
                    s += _mm_rope(rb_t, sn_t, LOWP, ROPE_SPLIT)
                    ra_t, rb_t = (ra_t * c_step[None, :] + rb_t * s_step[None, :],
                                  rb_t * c_step[None, :] - ra_t * s_step[None, :])
                s = tl.where(ok[None, :], s, float("-inf"))
                p, alpha, m_i, l_i = _online_update(s, m_i, l_i)
                pv = p * _scale(base + vs_off, ok)[None, :]
                if V4P > 1:
                    a4 = _value_step(a4, alpha, pv, cache_ptr, so, poly_ptr, ok, VO4, 4, tl.minimum(V4, V4P), V4P,
                                     BLOCK_N, LOWP)
                if V3P > 1:
                    a3 = _value_step(a3, alpha, pv, cache_ptr, so, poly_ptr, ok, VO3, 3, tl.minimum(V3, V3P), V3P,
                                     BLOCK_N, LOWP)
                if V2P > 1:
                    a2 = _value_step(a2, alpha, pv, cache_ptr, so, poly_ptr, ok, VO2, 2, tl.minimum(V2, V2P), V2P,
                                     BLOCK_N, LOWP)
                if V1P > 1:
                    a1 = _value_step(a1, alpha, pv, cache_ptr, so, poly_ptr, ok, VO1, 1, tl.minimum(V1, V1P), V1P,
                                     BLOCK_N, LOWP)
                if V4RP > 1:
                    r4 = _value_step(r4, alpha, pv, cache_ptr, so, poly_ptr, ok, VO4 + 4 * V4P, 4, V4 - V4P, V4RP,
                                     BLOCK_N, LOWP)
                if V3RP > 1:
                    r3 = _value_step(r3, alpha, pv, cache_ptr, so, poly_ptr, ok, VO3 + 3 * V3P, 3, V3 - V3P, V3RP,
                                     BLOCK_N, LOWP)
                if V2RP > 1:
                    r2 = _value_step(r2, alpha, pv, cache_ptr, so, poly_ptr, ok, VO2 + 2 * V2P, 2, V2 - V2P, V2RP,
                                     BLOCK_N, LOWP)
                if V1RP > 1:
                    r1 = _value_step(r1, alpha, pv, cache_ptr, so, poly_ptr, ok, VO1 + V1P, 1, V1 - V1P, V1RP,
                                     BLOCK_N, LOWP)
            else:
                kv_off = slot[:, None] * (H * D) + h * D + d[None, :]
                k = tl.load(kc_ptr + kv_off, mask=in_seq[:, None], other=0.0)
                s = tl.where(in_seq[None, :], _mm(qo, tl.trans(k), LOWP) * qk_scale, float("-inf"))
                p, alpha, m_i, l_i = _online_update(s, m_i, l_i)
                v = tl.load(vc_ptr + kv_off, mask=in_seq[:, None], other=0.0)
                acc_o = acc_o * alpha[:, None] + _mm(p, v, LOWP)
            tile += 1

    # ---- full-precision tokens last (sinks on the first split, fresh tokens causally on the last),
    # as masked tiles rather than branches: other splits see empty masks (p = 0, alpha = 1). After the
    # packed loop, so that q and the full-precision accumulator are not live in it (register
    # pressure: the decode kernel spilled with them, benchmarks/results/attention-h200.json) ----
    if PACKED:  # q as given and the full-precision values' accumulator
        # the packed tokens' weight sum: l_i so far (the loop above is the first to add to it);
        # from here on it is only rescaled, while l_i also counts the full-precision tokens
        lq = l_i
        qo = tl.load(qo_ptr + row[:, None] * D + d[None, :], mask=row_ok[:, None], other=0.0)
        acc_o = tl.zeros([BLOCK_M, D], tl.float32)
        # sinks (names distinct from the loops' above: Triton would carry them with another shape)
        js = tl.arange(0, BLOCK_S)
        ok_s = (js < n_sinks) & (js < prefix) & (split == 0)
        s_off = ((seq * n_sinks + js).to(tl.int64) * H + h)[:, None] * D + d[None, :]
        k_s = tl.load(sk_ptr + s_off, mask=ok_s[:, None], other=0.0)
        s_s = tl.where(ok_s[None, :], _mm(qo, tl.trans(k_s), LOWP) * qk_scale, float("-inf"))
        p_s, alpha_s, m_i, l_i = _online_update(s_s, m_i, l_i)
        v_s = tl.load(sv_ptr + s_off, mask=ok_s[:, None], other=0.0)
        acc_o = acc_o * alpha_s[:, None] + _mm(p_s, v_s, LOWP)
        a4, a3, a2, a1, r4, r3, r2, r1, lq = _rescale(a4, a3, a2, a1, r4, r3, r2, r1, lq, alpha_s)
    hi = tl.where(split == num_splits - 1, tl.minimum(q_len, (qb + 1) * BLOCK_Q), 0)
    j0 = 0
    while j0 < hi:
        j = j0 + n
        ok_f = j < hi
        f_off = ((q0 + j).to(tl.int64) * H + h)[:, None] * D + d[None, :]
        k_f = tl.load(kn_ptr + f_off, mask=ok_f[:, None], other=0.0)
        s_f = _mm(qo, tl.trans(k_f), LOWP) * qk_scale
        s_f = tl.where(ok_f[None, :] & (j[None, :] <= qpos[:, None]), s_f, float("-inf"))
        p_f, alpha_f, m_i, l_i = _online_update(s_f, m_i, l_i)
        v_f = tl.load(vn_ptr + f_off, mask=ok_f[:, None], other=0.0)
        acc_o = acc_o * alpha_f[:, None] + _mm(p_f, v_f, LOWP)
        if PACKED:
            a4, a3, a2, a1, r4, r3, r2, r1, lq = _rescale(a4, a3, a2, a1, r4, r3, r2, r1, lq, alpha_f)
        j0 += BLOCK_N

    out = split.to(tl.int64) * Tq * Hq + row
    inv = tl.where(l_i > 0, 1.0 / tl.maximum(l_i, 1e-30), 0.0)
    if SPLIT:  # partials: the reduction pass normalizes
        inv = tl.full([BLOCK_M], 1.0, tl.float32)
        tl.store(m_ptr + out, m_i, mask=row_ok)
        tl.store(l_ptr + out, l_i, mask=row_ok)
    tl.store(acco_ptr + out[:, None] * D + d[None, :], acc_o * inv[:, None], mask=row_ok[:, None])
    if PACKED:  # the codec-space accumulator, group by group; channels without bits get 0
        if V4P > 1:
            _group_store(acct_ptr, out, a4 * inv[:, None], row_ok, D, 0, tl.minimum(V4, V4P), V4P)
        if V3P > 1:
            _group_store(acct_ptr, out, a3 * inv[:, None], row_ok, D, VC3, tl.minimum(V3, V3P), V3P)
        if V2P > 1:
            _group_store(acct_ptr, out, a2 * inv[:, None], row_ok, D, VC2, tl.minimum(V2, V2P), V2P)
        if V1P > 1:
            _group_store(acct_ptr, out, a1 * inv[:, None], row_ok, D, VC1, tl.minimum(V1, V1P), V1P)
        if V4RP > 1:
            _group_store(acct_ptr, out, r4 * inv[:, None], row_ok, D, 8 * V4P, V4 - V4P, V4RP)
        if V3RP > 1:
            _group_store(acct_ptr, out, r3 * inv[:, None], row_ok, D, VC3 + 8 * V3P, V3 - V3P, V3RP)
        if V2RP > 1:
            _group_store(acct_ptr, out, r2 * inv[:, None], row_ok, D, VC2 + 8 * V2P, V2 - V2P, V2RP)
        if V1RP > 1:
            _group_store(acct_ptr, out, r1 * inv[:, None], row_ok, D, VC1 + 8 * V1P, V1 - V1P, V1RP)
        tl.store(acct_ptr + out[:, None] * D + d[None, :], tl.zeros([BLOCK_M, D], tl.float32),
                 mask=row_ok[:, None] & (d[None, :] >= VCODED))
        tl.store(lq_ptr + out, lq * inv, mask=row_ok)


@triton.jit(do_not_specialize=["rows", "num_splits"])
def _reduce_kernel(acct_ptr, acco_ptr, lq_ptr, m_ptr, l_ptr, ot_ptr, oo_ptr, olq_ptr, rows,
                   num_splits, S_P2: tl.constexpr, D: tl.constexpr, PACKED: tl.constexpr):
    """Merge split-K partials of one (token, head) row by log-sum-exp and normalize."""
    row = tl.program_id(0).to(tl.int64)
    sp = tl.arange(0, S_P2)
    ok = sp < num_splits
    idx = sp.to(tl.int64) * rows + row
    m = tl.load(m_ptr + idx, mask=ok, other=-1.0e30)
    l = tl.load(l_ptr + idx, mask=ok, other=0.0)
    m_max = tl.max(m, axis=0)
    w = tl.where(ok, tl.exp2(m - m_max), 0.0)
    total = tl.sum(w * l, axis=0)
    inv = tl.where(total > 0, 1.0 / total, 0.0)
    d = tl.arange(0, D)
    acc_o = tl.load(acco_ptr + idx[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)
    tl.store(oo_ptr + row * D + d, tl.sum(acc_o * w[:, None], axis=0) * inv)
    if PACKED:
        acc_t = tl.load(acct_ptr + idx[:, None] * D + d[None, :], mask=ok[:, None], other=0.0)
        tl.store(ot_ptr + row * D + d, tl.sum(acc_t * w[:, None], axis=0) * inv)
        lq = tl.load(lq_ptr + idx, mask=ok, other=0.0)
        tl.store(olq_ptr + row, tl.sum(lq * w, axis=0) * inv)


# ------------------------------------------------------------------------------------------------
# host side


def rope_tile_table(inv_freq: torch.Tensor, block_n: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """(cos(n w), sin(n w)) for n in [0, block_n): [block_n, d/2] float32 each."""
    ang = torch.arange(block_n, dtype=torch.float64, device=inv_freq.device)[:, None] * inv_freq.double()[None, :]
    return ang.cos().float().to(device).contiguous(), ang.sin().float().to(device).contiguous()


def split_tiles(n: int) -> tuple[int, int]:
    """A group of n segments as the attention kernel's tiles: (P, RP), a first tile of P segments (a
    power of two, at least 2: tl.dot's smallest K is 16 channels) and a remainder tile of RP for the
    last n - P segments, used where two tiles pad fewer channels than one; 1 = absent.
    5 -> (4, 2) and 6 -> (4, 2) instead of 8; 12 -> (8, 4) instead of 16; 3 -> (4, 1), 7 -> (8, 1),
    1 -> (2, 1), 0 -> (1, 1)."""
    one = tile_segments(n)
    if n <= 0:
        return one, 1
    first = 1 << (n.bit_length() - 1)  # the largest power of two <= n
    rest = n - first
    if first >= 2 and rest > 0 and first + tile_segments(rest) < one:
        return first, tile_segments(rest)
    return one, 1


def _group_args(groups) -> dict:
    """K and V layouts as the attention kernel's arguments: the counts K4..K1, V4..V1 (run-time) and
    each group's tiles K4P..V1P, K4RP..V1RP (constexprs, `split_tiles`)."""
    out = {}
    for prefix, counts in (("K", groups[0]), ("V", groups[1])):
        for b, n in zip((4, 3, 2, 1), counts):
            out[f"{prefix}{b}"] = int(n)
            out[f"{prefix}{b}P"], out[f"{prefix}{b}RP"] = split_tiles(int(n))
    return out


def _lowp(operand_precision: str | None, device: torch.device) -> int:
    """The kernels' LOWP mode (see `_mm` and `_mm_levels`): bf16 operands by default on the GPU,
    float32 elsewhere; "fp16": the packed levels' products in float16, the rest in bf16. Low
    precision asked for off the GPU is emulated (operands rounded)."""
    precision = operand_precision or ("bf16" if device.type == "cuda" else "fp32")
    if precision == "fp32":
        return 0
    mode = 3 if precision == "fp16" else 1
    return mode if device.type == "cuda" else mode + 1


def _rope_split(rope_split: bool | None, tables: LayerTables | None) -> bool:
    """Split precision for the RoPE-mean term: as asked, or where the layer's key offset exceeds
    ROPE_SPLIT_RATIO (its product's bf16 rounding scales with the offset)."""
    if tables is None or not tables.has_rope_mean:
        return False
    if rope_split is not None:
        return bool(rope_split)
    return tables.rope_offset_ratio > ROPE_SPLIT_RATIO


def reduce_width(num_splits: int) -> int:
    """The reduction kernel's split tile (a constexpr): 64 for up to 64 splits (the default split
    count's cap), so a decode whose split count grows with the context compiles it once; the next
    power of two beyond."""
    return max(64, triton.next_power_of_2(num_splits))


def _default_splits(batch: int, kv_heads: int, tiles: int, device: torch.device) -> int:
    if device.type != "cuda":
        return 1
    sms = torch.cuda.get_device_properties(device).multi_processor_count
    want = max(1, math.ceil(2 * sms / max(batch * kv_heads, 1)))
    return max(1, min(want, tiles, 64))


def query_tiling(on_cuda: bool, packed: bool, max_q_len: int, G_P2: int, *, block_q: int | None = None,
                 block_n: int | None = None, num_warps: int | None = None,
                 unverified_query_blocks: bool = False) -> tuple[int, int, int, int | None]:
    """The attention kernel's tiling -> (block_q, BLOCK_M, block_n, num_warps): block_q query tokens
    per program, each with its G_P2 query heads, make BLOCK_M = max(16, block_q * G_P2) rows.

    Decode (max_q_len <= 1) takes one token per program. Chunked prefill on CUDA does too
    (block_q = 1), for packed and bf16 pages alike (one kernel): the H200 gave wrong packed results
    for query blocks of 64 and 128 rows at 2 of 3 checked shapes (16 tokens x GQA 4 at d 256 and x
    GQA 8 at d 128, 4 warps: 69% and 98% off the float64 reference), while one token per program was
    exact at all three (benchmarks/results/attention-h200-7.json, prefill rows; bf16 pages were not
    checked). That costs speed (each token's program decodes the whole prefix), not accuracy. On
    CUDA, an explicit block_q making more than 16 rows, and any tiling of 64 rows or more (GQA above
    32), are refused unless unverified_query_blocks (benchmarks use it to test those blocks again).
    Off the GPU (the interpreter) prefill blocks up to 16 tokens, as the tests check."""
    if block_q is None:
        if max_q_len <= 1 or on_cuda:
            block_q = 1
        else:
            block_q = max(1, min(triton.next_power_of_2(max_q_len), 128 // G_P2, 16))
    BLOCK_M = max(16, block_q * G_P2)
    if on_cuda and not unverified_query_blocks:
        if block_q > 1 and BLOCK_M > 16:
            raise ConfigError(f"block_q={block_q} makes {BLOCK_M}-row query blocks, which gave wrong results on "
                              "CUDA (benchmarks/results/attention-h200-7.json); use block_q=1 (the CUDA default), "
                              "or pass unverified_query_blocks=True to test them")
        if BLOCK_M >= 64:
            raise ConfigError(f"{G_P2} query heads per KV head make {BLOCK_M}-row blocks even at one token per "
                              "program, a size that gave wrong results on CUDA (benchmarks/results/"
                              "attention-h200-7.json); GQA up to 32 is supported there, or pass "
                              "unverified_query_blocks=True to test it")
    if block_n is None:
        # On CUDA, rows of <= 16 (decode; for bf16 pages also prefill): 64-key tiles, the H200's
        # tuned choice. Packed decode with 2 warps: the fastest of 9 tiles x warps there, and
        # checked against the reference on the GPU (attention-h200-4.json: 1.473 ms against 3.189 ms
        # for 16 keys x 4 warps at 32K x 8); the kernel is issue-bound and this tiling issues the
        # fewest instructions per key (kernel-registers-sm90.json), despite its spills. Packed
        # prefill stays at 16-key tiles (the tiling checked exact on the H200).
        packed_decode = packed and max_q_len <= 1
        block_n = 64 if on_cuda and BLOCK_M <= 16 and (packed_decode or not packed) else 16
        if packed_decode and on_cuda and num_warps is None:
            num_warps = 2
    elif on_cuda and BLOCK_M > 16 and block_n > 16:
        # Measured on the H200 (Triton 3.6): query blocks of more than 16 rows with key tiles of 32
        # or 64 give wrong results or faulting loads (benchmarks/results/attention-prefill-diag-h200.json;
        # a fault ends the process's CUDA context, so this stays refused even when testing)
        raise ConfigError(f"block_n={block_n} with {BLOCK_M}-row query blocks is known to be wrong on CUDA; "
                          "use block_n=16 or block_q=1 (the CUDA default)")
    return block_q, BLOCK_M, block_n, num_warps


def _check_batch(q, k_new, v_new, block_table, prefix_lens, cu_q, H, D):
    Tq = q.shape[0]
    if q.dim() != 3 or q.shape[-1] != D or q.shape[1] % H:
        raise ConfigError(f"q must be [tokens, q_heads, {D}] with q_heads a multiple of {H} KV heads, "
                          f"got {tuple(q.shape)}")
    for name, x in (("k_new", k_new), ("v_new", v_new)):
        if tuple(x.shape) != (Tq, H, D):
            raise ConfigError(f"{name} must be [{Tq}, {H}, {D}], got {tuple(x.shape)}")
    B = prefix_lens.shape[0]
    if cu_q.shape != (B + 1,) or block_table.dim() != 2 or block_table.shape[0] != B:
        raise ConfigError(f"cu_q must be [batch+1]={B + 1} and block_table [batch={B}, max_blocks]; got "
                          f"{tuple(cu_q.shape)} and {tuple(block_table.shape)}")
    return Tq, B


def _launch(q, k_new, v_new, block_table, prefix_lens, cu_q, sm_scale, *, packed, cache=None, k_cache=None,
            v_cache=None, tables=None, sink_k=None, sink_v=None, num_splits=None, max_q_len=None,
            max_prefix=None, block_n=None, block_q=None, poison=False, num_warps=None, stats=None,
            operand_precision=None, rope_split=None, unverified_query_blocks=False):
    H, D = k_new.shape[1], k_new.shape[2]
    if operand_precision not in (None, "bf16", "fp16", "fp32"):
        raise ConfigError(f"operand_precision must be 'bf16', 'fp16' or 'fp32', got {operand_precision!r}")
    if operand_precision == "fp16" and not packed:
        raise ConfigError("operand_precision='fp16' applies to the products with packed levels; bf16 pages take "
                          "'bf16' or 'fp32'")
    Tq, B = _check_batch(q, k_new, v_new, block_table, prefix_lens, cu_q, H, D)
    Hq = q.shape[1]
    G = Hq // H
    dev = q.device
    block_size = (cache if packed else k_cache).shape[1]
    if max_q_len is None:
        max_q_len = int((cu_q[1:] - cu_q[:-1]).max()) if B else 0
    if max_prefix is None:
        max_prefix = int(prefix_lens.max()) if B else 0
    G_P2 = triton.next_power_of_2(G)
    block_q, BLOCK_M, block_n, num_warps = query_tiling(
        dev.type == "cuda", packed, max_q_len, G_P2, block_q=block_q, block_n=block_n, num_warps=num_warps,
        unverified_query_blocks=unverified_query_blocks)
    tiles = max(1, triton.cdiv(max_prefix, block_n))
    if num_splits is None:
        num_splits = _default_splits(B, H, tiles, dev) if max_q_len <= 1 else 1
    num_splits = max(1, min(int(num_splits), tiles))
    tiles_per_split = triton.cdiv(tiles, num_splits)
    n_qblocks = max(1, triton.cdiv(max_q_len, block_q))
    scale = float(sm_scale) * LOG2E
    # q as given for the full-precision keys: with bf16 operands q.k is then exactly what SDPA
    # computes (scaled after the product; scaling first would round q to bf16 a second time)
    qo = q.float().contiguous()
    f32 = dict(device=dev, dtype=torch.float32)
    if packed:
        qg = (qo * scale).view(Tq, H, G, D)
        qt = torch.einsum("thgd,hde->thge", qg, tables.k_W).reshape(Tq, Hq, D).contiguous()
        cm = torch.einsum("thgd,hd->thg", qg, tables.k_b).reshape(Tq, Hq).contiguous()
        cn, sn = rope_tile_table(tables.inv_freq, block_n, dev)
        S = tables.sinks
        groups = tables.groups
    else:
        qt = cm = qo
        cn = sn = qo
        S = 0
        groups = ((0, 0, 0, 0), (0, 0, 0, 0))
    acc_o = torch.empty(num_splits, Tq, Hq, D, **f32)
    acc_t = torch.empty(num_splits, Tq, Hq, D, **f32) if packed else acc_o
    lq = torch.empty(num_splits, Tq, Hq, **f32)
    m = torch.empty(num_splits, Tq, Hq, **f32) if num_splits > 1 else lq
    l = torch.empty(num_splits, Tq, Hq, **f32) if num_splits > 1 else lq
    if poison:  # tests: every scratch value the result depends on must be written by the kernel
        for buf in {id(x): x for x in (acc_o, acc_t, lq, m, l)}.values():
            buf.fill_(float("nan"))
    launch = {"num_warps": num_warps} if num_warps else {}
    grid = (B * n_qblocks, H, num_splits)
    compiled = _attn_kernel[grid](
        qt, qo, cm,
        tables.rope_mean if packed else qo, tables.inv_freq if packed else qo, cn, sn,
        cache if packed else qo, k_cache if not packed else qo, v_cache if not packed else qo,
        block_table, block_table.stride(0), prefix_lens, cu_q,
        sink_k if packed and S else qo, sink_v if packed and S else qo,
        k_new.contiguous(), v_new.contiguous(),
        tables.level_poly if packed else qo,
        acc_t, acc_o, lq, m, l,
        Tq, Hq, H, G, block_size, S, tables.slot_bytes if packed else 0,
        tables.k_scale_offset if packed else 0, tables.v_scale_offset if packed else 0, tiles_per_split, n_qblocks, num_splits,
        scale,
        D=D, HALF=D // 2, BLOCK_Q=block_q, G_P2=G_P2, BLOCK_M=BLOCK_M, BLOCK_N=block_n,
        BLOCK_S=max(16, triton.next_power_of_2(max(S, 1))), SPLIT=num_splits > 1,
        HAS_ROPE=bool(packed and tables.has_rope_mean), PACKED=packed,
        **_group_args(groups),
        LOWP=_lowp(operand_precision, dev), ROPE_SPLIT=_rope_split(rope_split, tables if packed else None),
        **launch,
    )
    if stats is not None:  # benchmarks: registers and spills of the compiled kernel
        stats.update(n_regs=getattr(compiled, "n_regs", None), n_spills=getattr(compiled, "n_spills", None),
                     num_splits=num_splits, block_n=block_n)
    if num_splits > 1:
        o_t = torch.empty(Tq, Hq, D, **f32) if packed else None
        o_o = torch.empty(Tq, Hq, D, **f32)
        o_lq = torch.empty(Tq, Hq, **f32) if packed else None
        _reduce_kernel[(Tq * Hq,)](acc_t, acc_o, lq, m, l, o_t if packed else o_o, o_o, o_lq if packed else o_o,
                                   Tq * Hq, num_splits, S_P2=reduce_width(num_splits), D=D,
                                   PACKED=packed)
    else:
        o_t, o_o, o_lq = acc_t[0], acc_o[0], lq[0]
    if not packed:
        return o_o.to(q.dtype)
    out = torch.einsum("thgd,hde->thge", o_t.view(Tq, H, G, D), tables.v_W)
    out = out + o_lq.view(Tq, H, G, 1) * tables.v_b[None, :, None, :] + o_o.view(Tq, H, G, D)
    return out.reshape(Tq, Hq, D).to(q.dtype)


def paged_attention(q: torch.Tensor, k_new: torch.Tensor, v_new: torch.Tensor, cache: torch.Tensor,
                    block_table: torch.Tensor, prefix_lens: torch.Tensor, cu_q: torch.Tensor,
                    sink_k: torch.Tensor, sink_v: torch.Tensor, tables: LayerTables, sm_scale: float, **kw) -> torch.Tensor:
    """Attention of fresh tokens over the packed prefix and themselves.

    q: [tokens, q_heads, d]; k_new, v_new: [tokens, kv_heads, d] fresh keys/values (full precision);
    cache: [num_blocks, block_size, kv_heads, slot_bytes] uint8; block_table: [batch, max_blocks]
    int32; prefix_lens: [batch] int32 cached tokens per sequence; cu_q: [batch+1] int32 offsets of
    the fresh tokens; sink_k, sink_v: [batch, sinks, kv_heads, d] bf16 (the first positions).
    Optional: num_splits, max_q_len, max_prefix (ints; pass them to avoid a device sync), block_n,
    block_q, num_warps, poison (fill scratch with NaN first; for tests), stats (a dict to receive the
    compiled kernel's registers and spills), operand_precision ("bf16", the default on CUDA: matrix
    operands in bf16 with float32 accumulation; "fp32", the default elsewhere: exact float32; "bf16"
    off the GPU emulates the GPU's rounding; "fp16": the products with the packed codes' levels in
    float16, opt-in: as accurate but no faster on the H200, see `_mm_levels`), rope_split (with bf16 operands, the RoPE-mean term to
    about float32 accuracy from three bf16 products; default: where tables.rope_offset_ratio >
    ROPE_SPLIT_RATIO), unverified_query_blocks (on CUDA, allow query blocks found or not known to be
    exact there; see `query_tiling`).
    Returns [tokens, q_heads, d] in q's dtype."""
    check_cache(cache, tables)
    if cache.data_ptr() % 4:
        raise ConfigError("paged_attention reads the pages as 32-bit words: the cache must start at a 4-byte "
                          f"aligned address (got {cache.data_ptr():#x}); pass the whole page tensor, not an "
                          "offset view of it")
    B = prefix_lens.shape[0]
    want = (B, tables.sinks, tables.kv_heads, tables.head_dim)
    if tables.sinks and (tuple(sink_k.shape) != want or tuple(sink_v.shape) != want):
        raise ConfigError(f"sink_k/sink_v must be {list(want)}, got {tuple(sink_k.shape)} / {tuple(sink_v.shape)}")
    return _launch(q, k_new, v_new, block_table, prefix_lens, cu_q, sm_scale, packed=True, cache=cache,
                   tables=tables, sink_k=sink_k.contiguous() if tables.sinks else None,
                   sink_v=sink_v.contiguous() if tables.sinks else None, **kw)


def decode_attention(q, k_new, v_new, cache, block_table, prefix_lens, sink_k, sink_v, tables, sm_scale, **kw):
    """One new token per sequence (q: [batch, q_heads, d]): split-K flash-decoding over the pages."""
    B = q.shape[0]
    cu_q = torch.arange(B + 1, device=q.device, dtype=torch.int32)
    return paged_attention(q, k_new, v_new, cache, block_table, prefix_lens, cu_q, sink_k, sink_v, tables,
                           sm_scale, max_q_len=1, **kw)


def prefill_attention(q, k_new, v_new, cache, block_table, prefix_lens, cu_q, sink_k, sink_v, tables, sm_scale, **kw):
    """A chunk of fresh tokens per sequence against the packed prefix and itself (chunked prefill)."""
    return paged_attention(q, k_new, v_new, cache, block_table, prefix_lens, cu_q, sink_k, sink_v, tables,
                           sm_scale, num_splits=1, **kw)


def paged_attention_bf16(q, k_new, v_new, k_cache, v_cache, block_table, prefix_lens, cu_q, sm_scale, **kw):
    """The same kernel over bf16 pages k_cache, v_cache: [num_blocks, block_size, kv_heads, d]."""
    if k_cache.shape != v_cache.shape or k_cache.dim() != 4 or k_cache.shape[2:] != k_new.shape[1:]:
        raise ConfigError(f"bf16 pages must be [num_blocks, block_size, kv_heads, d] matching k_new; got "
                          f"{tuple(k_cache.shape)}, {tuple(v_cache.shape)}")
    return _launch(q, k_new, v_new, block_table, prefix_lens, cu_q, sm_scale, packed=False, k_cache=k_cache,
                   v_cache=v_cache, **kw)


# ------------------------------------------------------------------------------------------------
# references (the spec)


def _attend(q, k, v, q_first: int, sm_scale: float) -> torch.Tensor:
    """Exact causal GQA attention in float64: q [n, Hq, d] at positions q_first.., k/v [L, H, d]."""
    n, Hq, D = q.shape
    H = k.shape[1]
    G = Hq // H
    kk = k.double().repeat_interleave(G, dim=1)
    vv = v.double().repeat_interleave(G, dim=1)
    s = torch.einsum("nhd,lhd->hnl", q.double(), kk) * sm_scale
    causal = torch.arange(k.shape[0])[None, :] <= (q_first + torch.arange(n))[:, None]
    s = s.masked_fill(~causal.to(s.device)[None], float("-inf"))
    return torch.einsum("hnl,lhd->nhd", s.softmax(-1), vv)


def _per_sequence(q, k_new, v_new, block_table, prefix_lens, cu_q, block_size: int, sm_scale: float, prefix_kv):
    """The references' shared loop: per sequence, the cached prefix from `prefix_kv(b, slots, pos)`
    -> (k, v) float32 [P, H, d], then the fresh tokens, exact causal attention."""
    out = torch.empty(q.shape, dtype=torch.float32, device=q.device)
    for b in range(prefix_lens.shape[0]):
        P = int(prefix_lens[b])
        lo, hi = int(cu_q[b]), int(cu_q[b + 1])
        if hi == lo:
            continue
        pos = torch.arange(P, device=q.device)
        slots = block_table[b, pos // block_size].long() * block_size + pos % block_size
        k, v = prefix_kv(b, slots, pos)
        k = torch.cat([k, k_new[lo:hi].float()])
        v = torch.cat([v, v_new[lo:hi].float()])
        out[lo:hi] = _attend(q[lo:hi], k, v, P, sm_scale).float()
    return out


def paged_attention_reference(q, k_new, v_new, cache, block_table, prefix_lens, cu_q, sink_k, sink_v,
                              codec: OscarCodec, layer: int, tables: LayerTables, sm_scale: float) -> torch.Tensor:
    """The spec of `paged_attention`: slots decoded by `OscarCodec._decode`, sinks and fresh tokens
    as given, exact attention (float64). Returns [tokens, q_heads, d] float32."""
    flat = cache.view(-1, cache.shape[2], cache.shape[3])

    def prefix_kv(b, slots, pos):
        k, v = read_slots(codec, layer, flat[slots], pos, tables)
        n_s = min(tables.sinks, int(pos.numel()))
        if n_s:
            k[:n_s], v[:n_s] = sink_k[b, :n_s].float(), sink_v[b, :n_s].float()
        return k, v

    return _per_sequence(q, k_new, v_new, block_table, prefix_lens, cu_q, cache.shape[1], sm_scale, prefix_kv)


def paged_attention_bf16_reference(q, k_new, v_new, k_cache, v_cache, block_table, prefix_lens, cu_q, sm_scale):
    """The spec of `paged_attention_bf16`: gather the bf16 pages, exact attention (float64)."""
    kf, vf = k_cache.view(-1, *k_cache.shape[2:]), v_cache.view(-1, *v_cache.shape[2:])
    return _per_sequence(q, k_new, v_new, block_table, prefix_lens, cu_q, k_cache.shape[1], sm_scale,
                         lambda b, slots, pos: (kf[slots].float(), vf[slots].float()))
