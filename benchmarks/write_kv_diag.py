"""write_kv on the GPU against its reference (the codec's encode): the fraction of equal codes and
scales, per kind, with random tokens through a synthetic-statistics codec (d=128, 2 KV heads).

    python benchmarks/write_kv_diag.py --out diag.json
"""

from __future__ import annotations

import argparse
import json

import torch

from _record import provenance, write_result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--tokens", type=int, default=4096)
    args = ap.parse_args()
    from oscar_cluster.kernels.layout import layer_tables
    from oscar_cluster.kernels.write_kv import read_slots, slots_from_codec, write_kv
    from oscar_cluster.synthetic import synthetic_oscar_codec

    dev = "cuda" if torch.cuda.is_available() else "cpu"
    res = {"benchmark": "write_kv vs the codec's encode on the GPU", **provenance(), "rows": []}
    for seed in (0, 1):
        codec = synthetic_oscar_codec(128, 2, 12, layers=1, seed=seed).to(dev)
        t = layer_tables(codec, 0, dev)
        g = torch.Generator().manual_seed(seed)
        k = (torch.randn(args.tokens, 2, 128, generator=g) * 2 + 1).to(dev).bfloat16()
        v = torch.randn(args.tokens, 2, 128, generator=g).to(dev).bfloat16()
        pos = torch.arange(args.tokens, device=dev) + 10
        for tf32 in (False, True):
            torch.backends.cuda.matmul.allow_tf32 = tf32
            ref = slots_from_codec(codec, 0, k, v, pos, t.slot_bytes)
            pages = torch.zeros(args.tokens, 1, 2, t.slot_bytes, dtype=torch.uint8, device=dev)
            write_kv(k, v, pos, torch.arange(args.tokens, device=dev), pages, t)
            got = pages.view(args.tokens, 2, t.slot_bytes)
            kb, vb, sb = t.k.nbytes, t.v.nbytes, t.slot_bytes
            dk, dv = read_slots(codec, 0, got, pos, t)
            rk, rv = read_slots(codec, 0, ref, pos, t)
            row = {"seed": seed, "codec_tf32": tf32,
                   "k_code_bytes_equal": float((got[..., :kb] == ref[..., :kb]).float().mean()),
                   "v_code_bytes_equal": float((got[..., kb:kb + vb] == ref[..., kb:kb + vb]).float().mean()),
                   "k_scale_equal": float((got[..., sb - 4:sb - 2] == ref[..., sb - 4:sb - 2]).all(-1).float().mean()),
                   "v_scale_equal": float((got[..., sb - 2:] == ref[..., sb - 2:]).all(-1).float().mean()),
                   "k_rel_diff": float((dk - rk).norm() / rk.norm()), "v_rel_diff": float((dv - rv).norm() / rv.norm()),
                   "k_err_kernel": float((dk - k.float()).norm() / k.float().norm()),
                   "k_err_codec": float((rk - k.float()).norm() / k.float().norm()),
                   "v_err_kernel": float((dv - v.float()).norm() / v.float().norm()),
                   "v_err_codec": float((rv - v.float()).norm() / v.float().norm())}
            res["rows"].append(row)
            print(json.dumps(row))
    torch.backends.cuda.matmul.allow_tf32 = False
    write_result(args.out, res)


if __name__ == "__main__":
    main()
