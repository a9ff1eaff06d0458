"""`write_kv`: encode new keys and values with the `oscar` codec and store them in the paged cache.

Per token and KV head (DESIGN.md section 3): x' = T (x - R_p m), z = (x' - mean) / std, an RMS
scale refined by weighted least squares (`scale_iters` rounds), nearest levels of each channel's
bit width, codes packed into the slot (layout: `layout.py`), fp16 scales at the slot's end.

`write_kv_reference` is the spec: it runs `OscarCodec._encode` and copies the payload bytes into
the slots. The Triton kernel must produce the same slots up to float rounding at decision
boundaries (the transform is a matrix product whose summation order differs).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from ..codecs.oscar import OscarCodec
from ..errors import ConfigError
from ..rope import _angles
from .layout import LayerTables, group_args

__all__ = ["write_kv", "write_kv_reference", "check_cache", "host_transform", "host_transform_fused",
           "host_transform_reference", "launch_write_kind"]

MAX_IN_KERNEL_TRANSFORM_DIM = 128  # [d, d] float32 transform in shared memory; larger d: transform on the host
# (block_t, num_warps) per transform when the caller gives none: the fastest tilings of write_kv at 8K
# tokens, 8 KV heads, d 128 on the H200 (benchmarks/results/attention-h200-7.json: host 0.291 ms at
# 16 x 4 against the fused transform's 0.521 ms at 64 x 4; -6.json: 0.354 against 0.524)
DEFAULT_TILES = {"host": (16, 4), "kernel": (64, 4)}


@triton.jit
def wrap_angle(ang):
    """A float64 angle reduced to [0, 2 pi) in float64, then rounded to float32 (cos/sin arguments
    stay small however large the position)."""
    return (ang - tl.floor(ang / 6.283185307179586) * 6.283185307179586).to(tl.float32)


@triton.jit
def _group_z(x, t_ptr, x_ptr, tok, valid, mean_ptr, std_ptr, h, sx_t, sx_h, D: tl.constexpr, C0, NSEG,
             NSEG_P2: tl.constexpr, TRANSFORM: tl.constexpr, PRECISION: tl.constexpr):
    """Normalized coordinates z = (T x - mean) / std of one group's channels [C0, C0 + 8 NSEG):
    -> (z [BT, NSEG_P2 * 8] (padding 0), std^2 [NSEG_P2 * 8] (padding 0))."""
    w = tl.arange(0, NSEG_P2 * 8)
    cmask = w < 8 * NSEG
    col = C0 + w
    if TRANSFORM:  # x' = x T^T for these output channels: T[h, col, :] read as [in, out]
        d = tl.arange(0, D)
        tt = tl.load(t_ptr + h * D * D + col[None, :] * D + d[:, None], mask=cmask[None, :], other=0.0)
        xp = tl.dot(x, tt, input_precision=PRECISION)
    else:  # transformed on the host
        xp = tl.load(x_ptr + tok[:, None] * sx_t + h.to(tl.int64) * sx_h + col[None, :],
                     mask=valid[:, None] & cmask[None, :], other=0.0).to(tl.float32)
    mean = tl.load(mean_ptr + h * D + col, mask=cmask, other=0.0)
    std = tl.load(std_ptr + h * D + col, mask=cmask, other=1.0)
    z = tl.where(cmask[None, :], (xp - mean[None, :]) / std[None, :], 0.0)
    return z, tl.where(cmask, std * std, 0.0)


@triton.jit
def _group_quantize(zn, lev_ptr, B: tl.constexpr):
    """Nearest level of the symmetric B-bit table (ties as torch.bucketize): -> (code int32, level)."""
    HALFV: tl.constexpr = 1 << (B - 1)
    a = tl.abs(zn)
    upper = zn > 0
    m = tl.zeros(zn.shape, tl.int32)
    mag = tl.zeros(zn.shape, tl.float32) + tl.load(lev_ptr + 16 * B + HALFV)
    for i in tl.static_range(1, HALFV):
        lo = tl.load(lev_ptr + 16 * B + HALFV + i - 1)
        hi = tl.load(lev_ptr + 16 * B + HALFV + i)
        mid = 0.5 * (hi + lo)
        step = tl.where(upper, a > mid, a >= mid)
        m += step.to(tl.int32)
        mag = tl.where(step, hi, mag)
    code = tl.where(upper, HALFV + m, HALFV - 1 - m)
    return code, tl.where(upper, mag, -mag)


@triton.jit
def _group_ls(z, w2, scale, lev_ptr, B: tl.constexpr):
    """Weighted least-squares terms of one group for the current scale: (sum w z L, sum w L^2)."""
    _, lev = _group_quantize(z / scale[:, None], lev_ptr, B)
    return tl.sum(w2[None, :] * z * lev, axis=1), tl.sum(w2[None, :] * lev * lev, axis=1)


@triton.jit
def _group_pack(z, scale, lev_ptr, base, valid, OFF, B: tl.constexpr, NSEG, NSEG_P2: tl.constexpr,
                BLOCK_T: tl.constexpr):
    """Quantize with the final scale and store the group's segments (B bytes per 8 channels)."""
    code, _ = _group_quantize(z / scale[:, None], lev_ptr, B)
    code = tl.reshape(code, [BLOCK_T, NSEG_P2, 8])
    word = tl.sum(code << (B * tl.arange(0, 8))[None, None, :], axis=2)  # [BT, NSEG_P2], < 2^32
    byt = tl.arange(0, 4)
    out = (word[:, :, None] >> (8 * byt)[None, None, :]) & 255
    seg = tl.arange(0, NSEG_P2)
    msk = valid[:, None, None] & (seg[None, :, None] < NSEG) & (byt[None, None, :] < B)
    tl.store(base[:, None, None] + OFF + seg[None, :, None] * B + byt[None, None, :], out.to(tl.uint8), mask=msk)


# layout counts and offsets are run-time values (see group_args), and so is the token count (a
# decode step's batch and a prefill chunk would otherwise compile variants of their own: Triton
# specializes ints equal to 1 and ints divisible by 16)
@triton.jit(do_not_specialize=["OFF", "G4", "G3", "G2", "G1", "n_tokens", "sx_h_units"])
def _write_kind_kernel(
    x_ptr,  # [T, H, D] keys or values (any float dtype; strides sx_t, sx_h, 1); transformed when TRANSFORM is False
    pos_ptr,  # [T] int positions
    slot_ptr,  # [T] int64 slot index (block * block_size + offset); -1 = padding, skipped
    cache_ptr,  # [num_slots, H, slot_bytes] uint8
    t_ptr, mean_ptr, std_ptr, rm_ptr, invf_ptr,  # [H,D,D], [H,D], [H,D], [H,D] float32; [D/2] float64
    lev_ptr,  # [(MAX_BITS+1) * 16] level tables
    n_tokens, H, sx_t, sx_h_units, slot_bytes, scale_off, inv_coded,
    D: tl.constexpr, HALF: tl.constexpr, BLOCK_T: tl.constexpr, SCALE_ITERS: tl.constexpr,
    TRANSFORM: tl.constexpr, HAS_ROPE: tl.constexpr, PRECISION: tl.constexpr, SX_H_UNIT: tl.constexpr, OFF,
    G4, G3, G2, G1,  # segments of 8 channels at 4..1 bits
    G4P: tl.constexpr, G3P: tl.constexpr, G2P: tl.constexpr, G1P: tl.constexpr,  # tile sizes; 1 = absent
):
    pid_t = tl.program_id(0)
    h = tl.program_id(1)
    tok = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    in_range = tok < n_tokens
    slot = tl.load(slot_ptr + tok, mask=in_range, other=-1).to(tl.int64)
    valid = in_range & (slot >= 0)
    tok = tok.to(tl.int64)
    # the head stride is sx_h_units * SX_H_UNIT: a per-call value (tokens x d on the host path) that
    # stays unspecialized while the compiler still knows it is a multiple of SX_H_UNIT (16: vector loads)
    sx_h = sx_h_units.to(tl.int64) * SX_H_UNIT
    x = tl.zeros([BLOCK_T, D], tl.float32)
    if TRANSFORM:
        d = tl.arange(0, D)
        x = tl.load(x_ptr + tok[:, None] * sx_t + h.to(tl.int64) * sx_h + d[None, :], mask=valid[:, None],
                    other=0.0).to(tl.float32)
        if HAS_ROPE:
            # remove the position-dependent key mean R_p m (rotate_half pairs j and j + D/2)
            pos = tl.load(pos_ptr + tok, mask=valid, other=0).to(tl.float64)
            invf = tl.load(invf_ptr + (d % HALF))
            ang = pos[:, None] * invf[None, :]
            ang = wrap_angle(ang)
            m_self = tl.load(rm_ptr + h * D + d)
            m_pair = tl.load(rm_ptr + h * D + (d + HALF) % D)
            sign = tl.where(d < HALF, -1.0, 1.0)
            x = x - (m_self[None, :] * tl.cos(ang) + (sign * m_pair)[None, :] * tl.sin(ang))
    C3 = 8 * G4
    C2 = 8 * (G4 + G3)
    C1 = 8 * (G4 + G3 + G2)
    ssq = tl.zeros([BLOCK_T], tl.float32)
    if G4P > 1:
        z4, w4 = _group_z(x, t_ptr, x_ptr, tok, valid, mean_ptr, std_ptr, h, sx_t, sx_h, D, 0, G4, G4P, TRANSFORM, PRECISION)
        ssq += tl.sum(z4 * z4, axis=1)
    if G3P > 1:
        z3, w3 = _group_z(x, t_ptr, x_ptr, tok, valid, mean_ptr, std_ptr, h, sx_t, sx_h, D, C3, G3, G3P, TRANSFORM, PRECISION)
        ssq += tl.sum(z3 * z3, axis=1)
    if G2P > 1:
        z2, w2 = _group_z(x, t_ptr, x_ptr, tok, valid, mean_ptr, std_ptr, h, sx_t, sx_h, D, C2, G2, G2P, TRANSFORM, PRECISION)
        ssq += tl.sum(z2 * z2, axis=1)
    if G1P > 1:
        z1, w1 = _group_z(x, t_ptr, x_ptr, tok, valid, mean_ptr, std_ptr, h, sx_t, sx_h, D, C1, G1, G1P, TRANSFORM, PRECISION)
        ssq += tl.sum(z1 * z1, axis=1)
    scale = tl.maximum(tl.sqrt(ssq * inv_coded), 1e-6)  # RMS over the coded channels
    for _ in range(SCALE_ITERS):  # least-squares scale for the chosen codes, weighted by std^2
        num = tl.zeros([BLOCK_T], tl.float32)
        den = tl.zeros([BLOCK_T], tl.float32)
        if G4P > 1:
            a, b = _group_ls(z4, w4, scale, lev_ptr, 4)
            num += a
            den += b
        if G3P > 1:
            a, b = _group_ls(z3, w3, scale, lev_ptr, 3)
            num += a
            den += b
        if G2P > 1:
            a, b = _group_ls(z2, w2, scale, lev_ptr, 2)
            num += a
            den += b
        if G1P > 1:
            a, b = _group_ls(z1, w1, scale, lev_ptr, 1)
            num += a
            den += b
        den = tl.maximum(den, 1e-12)
        scale = tl.maximum(tl.where(num > 0, num / den, scale), 1e-6)
    scale16 = scale.to(tl.float16)
    scale = scale16.to(tl.float32)
    base = cache_ptr + slot * (H * slot_bytes) + h * slot_bytes
    O3 = OFF + 4 * G4
    O2 = OFF + 4 * G4 + 3 * G3
    O1 = OFF + 4 * G4 + 3 * G3 + 2 * G2
    if G4P > 1:
        _group_pack(z4, scale, lev_ptr, base, valid, OFF, 4, G4, G4P, BLOCK_T)
    if G3P > 1:
        _group_pack(z3, scale, lev_ptr, base, valid, O3, 3, G3, G3P, BLOCK_T)
    if G2P > 1:
        _group_pack(z2, scale, lev_ptr, base, valid, O2, 2, G2, G2P, BLOCK_T)
    if G1P > 1:
        _group_pack(z1, scale, lev_ptr, base, valid, O1, 1, G1, G1P, BLOCK_T)
    bits16 = scale16.to(tl.int16, bitcast=True).to(tl.int32) & 65535
    tl.store(base + scale_off, (bits16 & 255).to(tl.uint8), mask=valid)
    tl.store(base + scale_off + 1, (bits16 >> 8).to(tl.uint8), mask=valid)


def check_cache(cache: torch.Tensor, tables: LayerTables) -> tuple[int, int]:
    """cache: [num_blocks, block_size, H, slot_bytes] uint8 -> (num_blocks, block_size), or a clear error."""
    if cache.dtype != torch.uint8 or cache.dim() != 4:
        raise ConfigError(f"packed cache must be uint8 [num_blocks, block_size, kv_heads, slot_bytes], got "
                          f"{cache.dtype} {tuple(cache.shape)}")
    if cache.shape[2] != tables.kv_heads or cache.shape[3] != tables.slot_bytes:
        raise ConfigError(f"packed cache has {cache.shape[2]} KV heads x {cache.shape[3]} slot bytes; the codec "
                          f"needs {tables.kv_heads} x {tables.slot_bytes}")
    if not cache.is_contiguous():
        raise ConfigError("packed cache must be contiguous")
    return int(cache.shape[0]), int(cache.shape[1])


def _check_tokens(name: str, x: torch.Tensor, tables: LayerTables) -> None:
    if x.dim() != 3 or x.shape[1] != tables.kv_heads or x.shape[2] != tables.head_dim:
        raise ConfigError(f"{name} must be [tokens, {tables.kv_heads}, {tables.head_dim}], got {tuple(x.shape)}")


def _precision(device: torch.device) -> str:
    return "ieee" if device.type == "cpu" else "tf32x3"


def write_kv(k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor, slot_mapping: torch.Tensor,
             cache: torch.Tensor, tables: LayerTables, scale_iters: int = 2, block_t: int | None = None,
             num_warps: int | None = None, transform: str = "host") -> None:
    """Encode and store new tokens.

    k, v: [tokens, kv_heads, d] (fp16/bf16/fp32); positions: [tokens] int; slot_mapping: [tokens]
    int (block * block_size + offset, -1 = padding); cache: [num_blocks, block_size, kv_heads,
    slot_bytes] uint8, written in place. Sinks (positions < tables.sinks) are written like any
    token; the attention kernels read them from the bf16 sink buffers instead.
    transform: where x' = T (x - R_p m) is computed: "host" (the default: `host_transform`, the RoPE
    mean subtracted in one Triton pass into float32, then one batched matmul into a [kv_heads, tokens, d] buffer;
    the kernel then holds no [d, d] tile) or "kernel" (fused, head dims up to
    MAX_IN_KERNEL_TRANSFORM_DIM; k and v are then read in place when d has unit stride). The host
    transform is the faster on the H200: 0.291 ms against 0.521 ms at 8K tokens, each at its best
    tiling (benchmarks/results/attention-h200-7.json; 0.354 against 0.524 in -6.json), because the fused kernel, compiled for sm_90,
    spills (benchmarks/kernel_registers.py --write-kv). block_t, num_warps: tokens per program and
    warps; each that is None takes its value from DEFAULT_TILES[transform]."""
    _check_tokens("k", k, tables)
    _check_tokens("v", v, tables)
    n = k.shape[0]
    if v.shape[0] != n or positions.shape != (n,) or slot_mapping.shape != (n,):
        raise ConfigError(f"k {tuple(k.shape)}, v {tuple(v.shape)}, positions {tuple(positions.shape)} and "
                          f"slot_mapping {tuple(slot_mapping.shape)} disagree on the token count")
    nb, bs = check_cache(cache, tables)
    if n == 0:
        return
    D = tables.head_dim
    if transform not in DEFAULT_TILES:
        raise ConfigError(f"transform must be 'host' or 'kernel', got {transform!r}")
    if transform == "kernel" and D > MAX_IN_KERNEL_TRANSFORM_DIM:
        raise ConfigError(f"transform='kernel' supports head dims up to {MAX_IN_KERNEL_TRANSFORM_DIM}, got {D}; "
                          "use transform='host'")
    in_kernel = transform == "kernel"
    block_t = block_t or DEFAULT_TILES[transform][0]
    num_warps = num_warps or DEFAULT_TILES[transform][1]
    slots = slot_mapping.to(torch.int64).contiguous()
    pos = positions.to(torch.int32).contiguous()
    for kind, x in (("k", k), ("v", v)):
        if in_kernel:  # read in place when d has unit stride (e.g. a slice of a fused QKV projection)
            src = x if x.stride(2) == 1 else x.contiguous()
        else:
            src = host_transform(x, pos, kind, tables)
        launch_write_kind(kind, src, pos, slots, cache, tables, in_kernel, scale_iters, block_t, num_warps)


# the token count is a per-call value (see _write_kind_kernel); strides and the padded count keep
# Triton's divisible-by-16 specialization (vector loads and stores: they are multiples of 16 whenever d is)
@triton.jit(do_not_specialize=["n_tokens"])
def _prep_kernel(
    x_ptr,  # [T, H, D] keys or values (any float dtype; strides sx_t, sx_h, 1)
    pos_ptr,  # [T] int32 positions
    out_ptr,  # [H, n_pad, D] float32, written at rows [0, T)
    rm_ptr, invf_ptr,  # [H, D] float32 RoPE mean; [D/2] float64 inverse frequencies
    n_tokens, n_pad, sx_t, sx_h,
    H: tl.constexpr, HALF: tl.constexpr, BLOCK_T: tl.constexpr, HAS_ROPE: tl.constexpr,
):
    """One pass of `host_transform`'s elementwise part: x - R_p m in float32 (keys with a RoPE mean;
    a plain float32 copy otherwise), stored head-major for the batched matmul that follows.
    One program per block of tokens, looping over the heads: R_p's cos/sin depend on the token and
    the channel pair only, so they are computed once per [BLOCK_T, D/2] tile, not once per head and
    channel (on the H200 at 8K tokens: 21 us per kind, attention-h200-7.json; the per-head version
    took 52 us, attention-h200-6.json)."""
    tok = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    ok = (tok < n_tokens)[:, None]
    tok = tok.to(tl.int64)
    d = tl.arange(0, HALF)[None, :]  # channel j pairs with j + D/2 (rotate_half, as in _write_kind_kernel)
    if HAS_ROPE:
        pos = tl.load(pos_ptr + tok, mask=tok < n_tokens, other=0).to(tl.float64)
        ang = wrap_angle(pos[:, None] * tl.load(invf_ptr + d))  # [BLOCK_T, D/2]
        cos, sin = tl.cos(ang), tl.sin(ang)
    for h in range(H):  # a loop, not unrolled
        h64 = tl.full([1], h, tl.int64)
        src = x_ptr + tok[:, None] * sx_t + h64[:, None] * sx_h + d
        x1 = tl.load(src, mask=ok, other=0.0).to(tl.float32)
        x2 = tl.load(src + HALF, mask=ok, other=0.0).to(tl.float32)
        if HAS_ROPE:  # R_p m = (m1 cos - m2 sin, m2 cos + m1 sin)
            m1 = tl.load(rm_ptr + h64[:, None] * (2 * HALF) + d)
            m2 = tl.load(rm_ptr + h64[:, None] * (2 * HALF) + HALF + d)
            x1 = x1 - (m1 * cos - m2 * sin)
            x2 = x2 - (m2 * cos + m1 * sin)
        dst = out_ptr + (h64[:, None] * n_pad + tok[:, None]) * (2 * HALF) + d
        tl.store(dst, x1, mask=ok)
        tl.store(dst + HALF, x2, mask=ok)


PREP_BLOCK_T = 16  # tokens per program of _prep_kernel (512 programs at 8K tokens, each over all heads)


def _padded(n: int) -> int:
    return -(-n // 16) * 16  # a head stride that is a multiple of 16 elements whatever d is


@torch.no_grad()  # storage, not a differentiable op (bmm's out= refuses inputs that require grad)
def host_transform(x: torch.Tensor, positions: torch.Tensor, kind: str, tables: LayerTables) -> torch.Tensor:
    """x' = T (x - R_p m) in float32 on the host (write_kv's transform="host" path); its spec is
    `host_transform_reference`.

    x: [tokens, kv_heads, d] (unit stride along d, else copied); positions: [tokens] ->
    [tokens, kv_heads, d] float32, a view of a [kv_heads, tokens rounded up to 16, d] buffer
    (strides (d, that * d, 1)), which the encode kernel reads as it is.
    Two steps: `_prep_kernel` (one Triton pass: the float32 copy, with R_p m subtracted from keys,
    head-major), then one batched matmul with T straight into the output buffer. The matmul follows
    torch's float32 matmul setting (TF32 if the process allowed it)."""
    T = tables.k_T if kind == "k" else tables.v_T
    n, H, D = x.shape
    if x.stride(2) != 1:
        x = x.contiguous()
    n_pad = _padded(n)
    xf = torch.empty(H, n_pad, D, dtype=torch.float32, device=x.device)
    pos = positions.to(device=x.device, dtype=torch.int32).contiguous()
    _prep_kernel[(triton.cdiv(n, PREP_BLOCK_T),)](
        x, pos, xf, tables.rope_mean, tables.inv_freq, n, n_pad, x.stride(0), x.stride(1),
        H=H, HALF=D // 2, BLOCK_T=PREP_BLOCK_T, HAS_ROPE=kind == "k" and tables.has_rope_mean)
    out = torch.empty(H, n_pad, D, dtype=torch.float32, device=x.device)[:, :n]
    torch.bmm(xf[:, :n], T.transpose(1, 2), out=out)
    return out.transpose(0, 1)


@triton.jit(do_not_specialize=["n_tokens"])
def _transform_kernel(
    x_ptr,  # [T, H, D] keys or values (any float dtype; strides sx_t, sx_h, 1)
    pos_ptr,  # [T] int32 positions
    t_ptr,  # [H, D, D] float32 transform T (row-major: x' = T x)
    out_ptr,  # [H, n_pad, D] float32, written at rows [0, T)
    rm_ptr, invf_ptr,  # [H, D] float32 RoPE mean; [D/2] float64 inverse frequencies
    n_tokens, n_pad, sx_t, sx_h,
    H: tl.constexpr, D: tl.constexpr, HALF: tl.constexpr, BLOCK_T: tl.constexpr, BLOCK_O: tl.constexpr,
    HAS_ROPE: tl.constexpr, PRECISION: tl.constexpr,
):
    """`host_transform` in one pass: x - R_p m in float32, then x' = T (x - R_p m) on the tensor cores
    (PRECISION "tf32x3": three TF32 products, about float32's accuracy), stored head-major. One program
    per block of tokens, looping over the heads (cos/sin once per block) and over BLOCK_O output
    channels at a time (T_h's [BLOCK_O, D] rows per product)."""
    tok = tl.program_id(0) * BLOCK_T + tl.arange(0, BLOCK_T)
    ok = (tok < n_tokens)[:, None]
    tok = tok.to(tl.int64)
    d = tl.arange(0, D)[None, :]
    if HAS_ROPE:  # R_p m: channel j pairs with j + D/2 (rotate_half), full width so T takes it as it is
        pos = tl.load(pos_ptr + tok, mask=tok < n_tokens, other=0).to(tl.float64)
        ang = wrap_angle(pos[:, None] * tl.load(invf_ptr + d % HALF))  # [BLOCK_T, D]
        cos, sin = tl.cos(ang), tl.sin(ang)
        sign = tl.where(d < HALF, -1.0, 1.0)
    o = tl.arange(0, BLOCK_O)
    for h in range(H):  # a loop, not unrolled
        h64 = tl.full([1], h, tl.int64)[:, None]
        x = tl.load(x_ptr + tok[:, None] * sx_t + h64 * sx_h + d, mask=ok, other=0.0).to(tl.float32)
        if HAS_ROPE:
            m_self = tl.load(rm_ptr + h64 * D + d)
            m_pair = tl.load(rm_ptr + h64 * D + (d + HALF) % D)
            x = x - (m_self * cos + sign * m_pair * sin)
        for c0 in range(0, D, BLOCK_O):  # output channels [c0, c0 + BLOCK_O)
            t_rows = tl.load(t_ptr + (h64 * D + c0 + o[:, None]) * D + d)  # [BLOCK_O, D]
            y = tl.dot(x, tl.trans(t_rows), input_precision=PRECISION)  # [BLOCK_T, BLOCK_O]
            tl.store(out_ptr + (h64 * n_pad + tok[:, None]) * D + c0 + o[None, :], y, mask=ok)


@torch.no_grad()
def host_transform_fused(x: torch.Tensor, positions: torch.Tensor, kind: str, tables: LayerTables) -> torch.Tensor:
    """`host_transform` as one Triton kernel (`_transform_kernel`: the prep pass and the matmul with T
    on the tensor cores in tf32x3, float32 products on the CPU); same output and layout. Not write_kv's
    path: on the H200 (benchmarks/results/attention-h200-7.json, transform_fused) its output is within
    1.1e-6 (relative) of the prep pass + cuBLAS bmm's, but at 8K tokens x 8 KV heads it takes
    0.207 ms for K and V against their 0.182 ms (the kernel 199 us, against 133 us of bmm and 42 us
    of prep).

    x: [tokens, kv_heads, d]; positions: [tokens] -> [tokens, kv_heads, d] float32 with strides
    (d, tokens rounded up to 16 times d, 1)."""
    T = tables.k_T if kind == "k" else tables.v_T
    n, H, D = x.shape
    if T.device != x.device or tables.rope_mean.device != x.device:
        raise ConfigError(f"host_transform_fused: the layer tables are on {T.device}, the input on {x.device}; "
                          "build them with layer_tables(codec, layer, device)")
    if x.stride(2) != 1:
        x = x.contiguous()
    n_pad = _padded(n)
    out = torch.empty(H, n_pad, D, dtype=torch.float32, device=x.device)
    pos = positions.to(device=x.device, dtype=torch.int32).contiguous()
    # the [tokens, d] input and cos/sin tiles stay in registers: compiled for sm_90 (ptxas), d 128 at 64 x 8
    # warps has no spills (236 registers; 32 x 4 spills), d 256 at 16 x 8 spills 52 bytes
    block_t = 64 if D <= 128 else 16
    _transform_kernel[(triton.cdiv(n, block_t),)](
        x, pos, T.contiguous(), out, tables.rope_mean, tables.inv_freq, n, n_pad, x.stride(0), x.stride(1),
        H=H, D=D, HALF=D // 2, BLOCK_T=block_t, BLOCK_O=min(D, 64),
        HAS_ROPE=kind == "k" and tables.has_rope_mean, PRECISION=_precision(x.device), num_warps=8)
    return out[:, :n].transpose(0, 1)


@torch.no_grad()
def host_transform_reference(x: torch.Tensor, positions: torch.Tensor, kind: str, tables: LayerTables) -> torch.Tensor:
    """`host_transform` in plain torch (the spec; also what ran before the prep kernel): one float32
    copy of x, the RoPE mean subtracted in place with angles in float64 (as `rope.apply_rope`), then
    the batched matmul. Same output layout."""
    T = tables.k_T if kind == "k" else tables.v_T
    n, H, D = x.shape
    if kind == "k" and tables.has_rope_mean:
        xf = x.to(torch.float32, copy=True)
        h2 = D // 2
        ang = _angles(positions.to(x.device), tables.inv_freq)  # [tokens, d/2] float64
        cos, sin = ang.cos().float()[:, None, :], ang.sin().float()[:, None, :]  # [tokens, 1, d/2]
        m1, m2 = tables.rope_mean[:, :h2], tables.rope_mean[:, h2:]  # [kv_heads, d/2]
        xf[..., :h2] -= m1 * cos - m2 * sin
        xf[..., h2:] -= m2 * cos + m1 * sin
    else:
        xf = x.float()
    out = torch.empty(H, _padded(n), D, dtype=torch.float32, device=x.device)[:, :n]
    torch.bmm(xf.transpose(0, 1), T.transpose(1, 2), out=out)
    return out.transpose(0, 1)


def launch_write_kind(kind: str, src: torch.Tensor, pos: torch.Tensor, slots: torch.Tensor, cache: torch.Tensor,
                      tables: LayerTables, in_kernel: bool, scale_iters: int = 2, block_t: int | None = None,
                      num_warps: int | None = None) -> None:
    """One launch of the encode-and-store kernel for keys or values (write_kv runs two, after checking
    shapes and the cache; call this directly only with inputs that passed those checks).

    src: [tokens, kv_heads, d], the raw keys/values when `in_kernel`, else `host_transform`'s
    output; pos: [tokens] int32; slots: [tokens] int64 (-1 skipped); block_t, num_warps: None takes
    DEFAULT_TILES' values for this transform."""
    n, H, D = src.shape
    tiles = DEFAULT_TILES["kernel" if in_kernel else "host"]
    block_t, num_warps = block_t or tiles[0], num_warps or tiles[1]
    if in_kernel and src.device.type == "cuda" and block_t >= 64 and num_warps >= 8:
        raise ConfigError("write_kv with the transform in the kernel, block_t >= 64 and 8 warps hit an illegal memory "
                          "access on the H200 (Triton 3.6, 2026-11-30; benchmarks/results/attention-h200-2.json, not "
                          "diagnosed); use block_t <= 32, 4 warps, or transform='host'")
    if src.stride(2) != 1:
        raise ConfigError(f"write_kv's input must have unit stride along d, got strides {tuple(src.stride())}")
    ct = tables.k if kind == "k" else tables.v
    T, mean, std = ((tables.k_T, tables.k_mean, tables.k_std) if kind == "k"
                    else (tables.v_T, tables.v_mean, tables.v_std))
    unit = 16 if src.stride(1) % 16 == 0 else 1
    grid = (triton.cdiv(n, block_t), H)
    _write_kind_kernel[grid](
        src, pos, slots, cache, T, mean, std, tables.rope_mean, tables.inv_freq, tables.levels,
        n, H, src.stride(0), src.stride(1) // unit, tables.slot_bytes, tables.k_scale_offset if kind == "k" else tables.v_scale_offset,
        1.0 / max(ct.coded, 1),
        D=D, HALF=D // 2, BLOCK_T=block_t, SCALE_ITERS=scale_iters, TRANSFORM=in_kernel,
        # HAS_ROPE only matters to the fused transform: one compiled variant for host-transformed K and V
        HAS_ROPE=in_kernel and kind == "k" and tables.has_rope_mean, PRECISION=_precision(src.device), SX_H_UNIT=unit,
        OFF=_code_offset(kind, tables), **group_args("G", tables.groups[0 if kind == "k" else 1]), num_warps=num_warps,
    )


def _code_offset(kind: str, tables: LayerTables) -> int:
    return 0 if kind == "k" else tables.k.nbytes


def slots_from_codec(codec: OscarCodec, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                     slot_bytes: int) -> torch.Tensor:
    """[tokens, kv_heads, slot_bytes] uint8 slots of `k, v` as the codec encodes them (the spec)."""
    n, H, _ = k.shape
    ek = codec._encode(k.float(), "k", layer, positions=positions)
    ev = codec._encode(v.float(), "v", layer, positions=positions)
    kc, vc = ek["codes"].reshape(n, H, -1), ev["codes"].reshape(n, H, -1)
    out = torch.zeros(n, H, slot_bytes, dtype=torch.uint8, device=k.device)
    out[..., : kc.shape[-1]] = kc
    out[..., kc.shape[-1]: kc.shape[-1] + vc.shape[-1]] = vc
    out[..., slot_bytes - 4: slot_bytes - 2] = ek["scale"].contiguous().view(torch.uint8).reshape(n, H, 2)
    out[..., slot_bytes - 2:] = ev["scale"].contiguous().view(torch.uint8).reshape(n, H, 2)
    return out


def write_kv_reference(codec: OscarCodec, layer: int, k: torch.Tensor, v: torch.Tensor, positions: torch.Tensor,
                       slot_mapping: torch.Tensor, cache: torch.Tensor) -> None:
    """The spec of `write_kv`: `OscarCodec._encode`'s payload copied into the slots (in place)."""
    slots = slots_from_codec(codec, layer, k, v, positions, cache.shape[-1])
    keep = slot_mapping >= 0
    flat = cache.view(-1, cache.shape[2], cache.shape[3])
    flat[slot_mapping[keep].long()] = slots[keep]


def read_slots(codec: OscarCodec, layer: int, slots: torch.Tensor, positions: torch.Tensor,
               tables: LayerTables) -> tuple[torch.Tensor, torch.Tensor]:
    """Decode slots [tokens, kv_heads, slot_bytes] at `positions` with the codec: (k, v) float32."""
    n, H, sb = slots.shape
    D = tables.head_dim
    if n == 0:
        empty = torch.empty(0, H, D, device=slots.device)
        return empty, empty.clone()
    kb, vb = tables.k.nbytes, tables.v.nbytes
    out = []
    for kind, lo, hi, so in (("k", 0, kb, sb - 4), ("v", kb, kb + vb, sb - 2)):
        payload = {"codes": slots[..., lo:hi].reshape(n * H, -1).contiguous(),
                   "scale": slots[..., so: so + 2].contiguous().view(torch.float16).reshape(n, H),
                   "positions": positions.to(torch.int32)}
        out.append(codec._decode(payload, kind, layer, n, H, D).float())
    return out[0], out[1]
