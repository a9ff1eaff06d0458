"""The packed page layout the kernels read and write, and the per-layer tables they need.

Paged cache: `cache: [num_blocks, block_size, kv_heads, slot_bytes]` uint8. One slot holds one
token of one KV head (DESIGN.md section 6):

    [ K codes (k_bytes) | V codes (v_bytes) | pad | K scale fp16 | V scale fp16 ]
                                                   ^ slot_bytes - 4

K and V codes are exactly the `oscar` codec's packed payload (runs of equal bit width, each run a
little-endian bit stream), so a slot decodes with `OscarCodec._decode`. The scales sit at a fixed
offset from the end, so every layer shares one slot size even when the layer's K/V split differs.

The first `codec.sinks` positions of every sequence are kept in bf16 beside the pages
(`sink_k, sink_v: [batch, sinks, kv_heads, d]`); their slots are written but never read.

Codes come in bit-width groups: `oscar` orders channels by importance with non-increasing bits
in segments of 8, so each width is one contiguous run of segments, and a segment of 8 channels at
b bits is b bytes (little-endian, channel i at bits [i b, i b + b)). The kernels take the layout as
segment counts per width (`groups`, `group_args`: run-time counts, compile-time tile sizes): every
load and shift is regular, and levels come from the symmetric level tables (`level_table`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..codecs.oscar import OscarCodec
from ..codecs.quantizers import MAX_BITS
from ..errors import ConfigError

__all__ = ["SCALE_BYTES", "ChannelTable", "LayerTables", "slot_bytes_for", "layer_tables", "level_table",
           "level_polynomials", "group_args", "tile_segments", "shard_tables"]

SCALE_BYTES = 4  # fp16 K scale + fp16 V scale
LEVELS_PER_ROW = 16  # 2**MAX_BITS entries per bit width in the level table


def level_table(codec: OscarCodec) -> torch.Tensor:
    """[(MAX_BITS + 1) * 16] float32: row b holds the b-bit level table (row 0 is zeros). The tables
    must be symmetric (L[c] = -L[2^b - 1 - c]): the attention kernel stores half of each."""
    tab = torch.zeros(MAX_BITS + 1, LEVELS_PER_ROW)
    for b in range(1, MAX_BITS + 1):
        lv = codec._tables[b]
        if not torch.allclose(lv, -lv.flip(0), atol=1e-6):
            raise ConfigError(f"the packed kernels need symmetric level tables; {b}-bit levels are {lv.tolist()}")
        tab[b, : 1 << b] = lv
    return tab.reshape(-1)


POLY_PER_ROW = 8  # odd coefficients per bit width in level_polynomials (2**(MAX_BITS-1))


def level_polynomials(levels: torch.Tensor) -> torch.Tensor:
    """levels: [(MAX_BITS + 1) * 16] (`level_table`) -> [(MAX_BITS + 1) * 8] float32: row b holds
    the odd polynomial through the b-bit levels, L[c] = sum_j a_j x^(2j+1) with x = (c - (2^b - 1)/2)
    / 2^(b-1) in (-1, 1). A symmetric table has 2^(b-1) magnitudes and the polynomial as many
    coefficients, so it passes through every level (float64 solve; Horner in x^2 in float32 is within
    1e-7 relative of the table for the codec's tables, in float16 within 2^-10). The attention kernel
    evaluates it instead of selecting levels one comparison at a time (`kernels/attention.py:
    _group_levels`: float32 with float32 operands, float16 with bf16 operands)."""
    tab = levels.double().view(MAX_BITS + 1, LEVELS_PER_ROW)
    out = torch.zeros(MAX_BITS + 1, POLY_PER_ROW, dtype=torch.float64)
    for b in range(1, MAX_BITS + 1):
        half = 1 << (b - 1)
        x = (torch.arange(half, 2 * half, dtype=torch.float64) - (2 * half - 1) / 2) / half  # the positive half
        powers = x[:, None] ** (2 * torch.arange(half, dtype=torch.float64) + 1)[None, :]
        out[b, :half] = torch.linalg.solve(powers, tab[b, half:2 * half])
        want = tab[b, :2 * half].float()
        scale = max(float(want.abs().max()), 1e-30)
        # float32 (exact operands) and float16 (with bf16 operands, whose own rounding is 2^-8)
        for dtype, tol in ((torch.float32, 1e-5), (torch.float16, 2.0 ** -9)):
            got = evaluate_level_polynomial(out[b].float(), b, dtype)
            err = float((got.float() - want).abs().max())
            if not err <= tol * scale:
                raise ConfigError(f"the {b}-bit level table {want.tolist()} is not smooth enough for the attention "
                                  f"kernel's polynomial levels ({dtype} error {err:.2e}); use the codec's level "
                                  "tables (Lloyd-Max or uniform)")
    return out.float().reshape(-1)


def evaluate_level_polynomial(coef: torch.Tensor, bits: int, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """coef: [8] one row of `level_polynomials` -> [2^bits] levels of codes 0..2^bits-1 in `dtype`, computed
    as the attention kernel computes them (x = c / 2^(b-1) - (2^b - 1) / 2^b, Horner in x^2, times x;
    float16 where its matrix operands are bf16; the GPU fuses each multiply-add, one rounding less)."""
    half = 1 << (bits - 1)
    c = torch.arange(1 << bits, dtype=dtype)
    x = c * (1.0 / half) - (2 * half - 1) / (2 * half)
    x2 = x * x
    k = coef.to(dtype)
    acc = torch.full_like(x, float(k[half - 1]))
    for j in range(half - 2, -1, -1):
        acc = acc * x2 + k[j]
    return acc * x


@dataclass
class ChannelTable:
    """One kind's code region: nbytes of codes in the slot, coded channels (bits > 0)."""

    nbytes: int
    coded: int


def _channel_table(bits: torch.Tensor) -> ChannelTable:
    total = int(bits.sum())
    if total % 8:
        raise ConfigError(f"oscar layout of {total} bits is not whole bytes")
    return ChannelTable(nbytes=total // 8, coded=int((bits > 0).sum()))


def _groups(bits: torch.Tensor, layer: int, kind: str) -> tuple[int, int, int, int]:
    """Segments of 8 channels at 4, 3, 2 and 1 bits; the attention kernel needs bits non-increasing
    (channels in importance order, as `oscar` fits them) so each width is one contiguous group."""
    b = bits.tolist()
    if any(x < y for x, y in zip(b, b[1:])):
        raise ConfigError(f"layer {layer} {kind}: the packed kernels need non-increasing bits per channel "
                          f"(importance order), got {b}")
    counts = [b.count(w) for w in (4, 3, 2, 1)]
    if any(c % 8 for c in counts):
        raise ConfigError(f"layer {layer} {kind}: bit widths must come in segments of 8 channels, got {counts}")
    return tuple(c // 8 for c in counts)


def group_args(prefix: str, counts) -> dict:
    """One kind's layout as kernel arguments: {P4..P1: segments at 4..1 bits (run-time ints), P4P..P1P:
    tile sizes (constexprs): the count rounded up to a power of two, at least 2, or 1 for an absent
    width}. Only the tile sizes are compiled in, so layers whose counts round alike share one
    compiled kernel (SmolLM2's 30 layers: 16 write_kv variants instead of 25;
    benchmarks/results/compile-variants-smollm2-cpu.json)."""
    out = {}
    for b, n in zip((4, 3, 2, 1), counts):
        out[f"{prefix}{b}"] = int(n)
        out[f"{prefix}{b}P"] = tile_segments(int(n))
    return out


def tile_segments(n: int) -> int:
    """Segments of the one tile that holds n: n rounded up to a power of two, at least 2 (tl.dot's
    smallest K is 16 channels); 1 for an absent group (n = 0)."""
    return max(2, 1 << (n - 1).bit_length()) if n > 0 else 1


def slot_bytes_for(codec: OscarCodec) -> int:
    """Bytes of one slot (one token, one KV head, K and V), the same for every layer."""
    most = max(int(cb["k"].bits.sum() + cb["v"].bits.sum()) // 8 for cb in codec.layers.values())
    return most + SCALE_BYTES


@dataclass
class LayerTables:
    """Everything the kernels need for one layer, on one device (float32 unless said).

    Encode (write_kv): k_T, v_T: [H, d, d] forward transforms; k_mean, v_mean, k_std, v_std: [H, d];
    rope_mean: [H, d] pre-RoPE key mean removed as R_p m (zeros when the codec has none);
    inv_freq: [d/2] float64.
    Attend: k_W = T_k^-1 diag(std_k) and k_b = T_k^-1 mean_k, so q.k = (q k_W).(s L[c]) + q.k_b
    + q.R_p m; v_W = diag(std_v) T_v^-T and v_b = T_v^-1 mean_v, so the output row is
    (sum p s L[c]) v_W + (sum p) v_b.
    levels: [(MAX_BITS+1)*16] level table; level_poly: [(MAX_BITS+1)*8] the same levels as odd
    polynomials (`level_polynomials`); k, v: channel tables; slot_bytes: slot size."""

    k_T: torch.Tensor
    v_T: torch.Tensor
    k_mean: torch.Tensor
    v_mean: torch.Tensor
    k_std: torch.Tensor
    v_std: torch.Tensor
    rope_mean: torch.Tensor
    inv_freq: torch.Tensor
    k_W: torch.Tensor
    k_b: torch.Tensor
    v_W: torch.Tensor
    v_b: torch.Tensor
    levels: torch.Tensor
    level_poly: torch.Tensor
    k: ChannelTable
    v: ChannelTable
    slot_bytes: int
    sinks: int
    head_dim: int
    kv_heads: int
    has_rope_mean: bool  # host-side flag: reading it never syncs the device (CUDA graphs)
    groups: tuple  # ((K segments at 4, 3, 2, 1 bits), (V ...)): the layout as the attention kernel takes it
    # host-side: the largest ||rope_mean|| / rms ||k - mean|| over the heads (rope_offset_ratio); the
    # attention kernel computes the RoPE-mean term in split precision above ROPE_SPLIT_RATIO
    rope_offset_ratio: float = 0.0

    @property
    def k_scale_offset(self) -> int:
        return self.slot_bytes - SCALE_BYTES

    @property
    def v_scale_offset(self) -> int:
        return self.slot_bytes - SCALE_BYTES + 2

    def to(self, device) -> "LayerTables":
        """Move every tensor (channel tables included) to `device`, in place; returns self."""
        for name, val in vars(self).items():
            if isinstance(val, ChannelTable):
                for f, t in vars(val).items():
                    if isinstance(t, torch.Tensor):
                        setattr(val, f, t.to(device))
            elif isinstance(val, torch.Tensor):
                setattr(self, name, val.to(device))
        return self


def layer_tables(codec: OscarCodec, layer: int, device: torch.device | str = "cpu",
                 slot_bytes: int | None = None, storage_only: bool = False) -> LayerTables:
    """Build the kernel tables of one layer of a fitted `oscar` codec. storage_only: for `write_kv`
    alone, under a cache that keeps the codec's bf16 recent window itself and hands over only the
    tokens beyond it (`OscarCache` with `KernelEncoder`); the paged attention kernels keep no such
    window, so tables for them refuse a codec with one."""
    if not isinstance(codec, OscarCodec):
        raise ConfigError(f"the packed kernels implement the 'oscar' codec only, got {codec.name!r}")
    if codec.recent and not storage_only:
        raise ConfigError(f"the packed kernels keep no bf16 recent window (codec recent={codec.recent}); "
                          "use recent=0 or the PyTorch reference cache")
    kc, vc = codec.codebook(layer, "k"), codec.codebook(layer, "v")
    d = int(kc.T.shape[-1])
    if d % 16 or d > 256 or d & (d - 1):
        raise ConfigError(f"the packed kernels support head dims 16..256 that are powers of two, got {d}")
    kt = _channel_table(kc.bits)
    vt = _channel_table(vc.bits)
    sb = slot_bytes if slot_bytes is not None else slot_bytes_for(codec)
    if kt.nbytes + vt.nbytes + SCALE_BYTES > sb:
        raise ConfigError(f"layer {layer} needs {kt.nbytes + vt.nbytes + SCALE_BYTES} slot bytes, the cache has {sb}")
    k_Tinv, v_Tinv = kc.T_inv.double(), vc.T_inv.double()
    levels = level_table(codec)
    tables = LayerTables(
        k_T=kc.T.float(), v_T=vc.T.float(), k_mean=kc.mean.float(), v_mean=vc.mean.float(),
        k_std=kc.std.float(), v_std=vc.std.float(), rope_mean=kc.rope_mean.float(),
        inv_freq=kc.inv_freq.double(),
        k_W=(k_Tinv * kc.std.double()[:, None, :]).float(),
        k_b=torch.einsum("hij,hj->hi", k_Tinv, kc.mean.double()).float(),
        v_W=(vc.std.double()[:, :, None] * v_Tinv.transpose(-1, -2)).float(),
        v_b=torch.einsum("hij,hj->hi", v_Tinv, vc.mean.double()).float(),
        levels=levels, level_poly=level_polynomials(levels), k=kt, v=vt, slot_bytes=sb, sinks=codec.sinks, head_dim=d,
        kv_heads=int(kc.T.shape[0]), has_rope_mean=bool(kc.rope_mean.abs().max() > 0),
        groups=(_groups(kc.bits, layer, "k"), _groups(vc.bits, layer, "v")))
    tables.rope_offset_ratio = rope_offset_ratio(tables.rope_mean, tables.k_W)
    return tables.to(device)


def rope_offset_ratio(rope_mean: torch.Tensor, k_W: torch.Tensor) -> float:
    """rope_mean: [H, d]; k_W: [H, d, d] -> max over heads of ||m|| / rms ||k - R_p m||.

    The keys' varying part is k_W (s L) with unit-variance levels, so its mean squared norm is
    ||k_W||_F^2: the ratio compares the RoPE-mean term q.R_p m with the scores' varying part."""
    m = rope_mean.double().norm(dim=-1)
    var = k_W.double().flatten(1).norm(dim=-1).clamp_min(1e-30)
    return float((m / var).max()) if m.numel() else 0.0



_PER_HEAD = ("k_T", "v_T", "k_mean", "v_mean", "k_std", "v_std", "rope_mean", "k_W", "k_b", "v_W", "v_b")


def shard_tables(tables: LayerTables, rank: int, world: int) -> LayerTables:
    """The tables of tensor-parallel rank `rank` of `world`: its contiguous block of KV heads
    (vLLM's TP split of K/V projections), everything per head sliced, the layout shared.
    The rank's pages hold only its heads: [num_blocks, block_size, kv_heads / world, slot_bytes]."""
    H = tables.kv_heads
    if world < 1 or not 0 <= rank < world:
        raise ConfigError(f"rank {rank} is not in 0..{world - 1}")
    if H % world:
        raise ConfigError(f"tensor parallel size {world} does not divide the layer's {H} KV heads; use a divisor "
                          "(KV-head replication across ranks is not supported)")
    lo, n = rank * (H // world), H // world
    fields = {name: val for name, val in vars(tables).items()}
    for name in _PER_HEAD:
        fields[name] = fields[name][lo:lo + n].contiguous()
    fields["kv_heads"] = n
    fields["rope_offset_ratio"] = rope_offset_ratio(fields["rope_mean"], fields["k_W"])
    return LayerTables(**fields)
