"""The `oscar` codec's PyTorch encode (OscarCache's storage step off the kernels, and oscar-eval's
`--encoder codec`): median time and ATen ops per call, against a baseline in the same run that
packs codes and recomputes level thresholds on every scale pass (the encode before 2026-11-30).
On a GPU each non-view op is a kernel launch, which is what a decode step's encode is bound by.

    python benchmarks/codec_encode.py --out benchmarks/results/codec-encode-cpu.json [--device cuda]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import provenance, write_result  # noqa: E402

from oscar_cluster.codecs.quantizers import nearest_level, pack_bits  # noqa: E402
from oscar_cluster.synthetic import synthetic_oscar_codec  # noqa: E402


def baseline_encode(codec, x, kind, layer, positions):
    """The earlier encode: every scale pass quantizes, looks up levels and packs."""
    cb = codec.codebook(layer, kind)
    if cb.position_mean:
        x = x - cb.mean_at(positions)
    z = (codec.transform(x, layer, kind) - cb.mean) / cb.std
    scale = z[..., cb.bits > 0].pow(2).mean(-1).sqrt().clamp_min(1e-6)
    weight = cb.std.pow(2)

    def quantize(zn):
        T, H, d = zn.shape
        lev, packed = torch.zeros_like(zn), []
        for start, w, b in cb.segments:
            if b == 0:
                continue
            table = codec._tables[b].to(zn.device)
            idx = nearest_level(zn[..., start:start + w].reshape(T * H, w), table)
            lev[..., start:start + w] = table[idx.long()].reshape(T, H, w)
            packed.append(pack_bits(idx, b))
        return torch.cat(packed, dim=-1), lev

    for _ in range(codec.scale_iters):
        _, lev = quantize(z / scale[..., None])
        num, den = (weight * z * lev).sum(-1), (weight * lev * lev).sum(-1).clamp_min(1e-12)
        scale = torch.where(num > 0, num / den, scale).clamp_min(1e-6)
    scale = scale.half()
    codes, _ = quantize(z / scale.float()[..., None])
    return codes, scale


def ops_per_call(fn) -> int:
    """Top-level ATen ops of one call (views included; on a GPU most of the rest launch a kernel)."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    return sum(1 for e in prof.events() if e.name.startswith("aten::")
               and (e.cpu_parent is None or not e.cpu_parent.name.startswith("aten::")))


def median_ms(fn, device, reps: int = 15) -> float:
    ts = []
    for _ in range(reps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        t = time.perf_counter()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        ts.append(time.perf_counter() - t)
    return statistics.median(ts) * 1e3


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--tokens", default="64,4096", help="tokens per call (64: a batch-64 decode step)")
    args = ap.parse_args()
    dev = torch.device(args.device)
    codec = synthetic_oscar_codec(128, 2, 12, seed=3).to(dev)  # Qwen2.5-1.5B's head shape
    rows = []
    for T in (int(t) for t in args.tokens.split(",")):
        x = torch.randn(T, 2, 128, device=dev) * 2
        pos = torch.arange(T, device=dev) + 100
        enc = codec._encode(x, "k", 0, pos)
        base_codes, base_scale = baseline_encode(codec, x, "k", 0, pos)
        same = bool(torch.equal(enc["codes"].reshape(base_codes.shape), base_codes)
                    and torch.equal(enc["scale"], base_scale))
        row = {"tokens": T, "identical_codes_and_scales": same,
               "encode_ms": median_ms(lambda: codec._encode(x, "k", 0, pos), dev),
               "baseline_ms": median_ms(lambda: baseline_encode(codec, x, "k", 0, pos), dev),
               "encode_ops": ops_per_call(lambda: codec._encode(x, "k", 0, pos)),
               "baseline_ops": ops_per_call(lambda: baseline_encode(codec, x, "k", 0, pos))}
        row["speedup"] = row["baseline_ms"] / row["encode_ms"]
        rows.append(row)
        print(row, flush=True)
    prov = provenance()
    if dev.type == "cuda":
        prov["host"]["device"] = torch.cuda.get_device_name()
    write_result(args.out, {"benchmark": "oscar codec encode (keys, d 128, 2 KV heads): current vs baseline",
                            **prov, "rows": rows})


if __name__ == "__main__":
    main()
