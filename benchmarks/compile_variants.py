"""How many compiled kernel variants an artifact's layers need: with the layout compiled in (counts
and code offsets as constexprs, the kernels before 2026-11-30) and now (only the tile sizes,
`kernels.layout.group_args`). Counting only; the compile time itself is attention.py --sections compile.

    python benchmarks/compile_variants.py --artifact DIR --out benchmarks/results/compile-variants-NAME.json
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    from _record import provenance, write_result
    from oscar_cluster.artifact import load_artifact, read_metadata
    from oscar_cluster.kernels.layout import group_args, layer_tables

    codec = load_artifact(args.artifact)
    meta = read_metadata(args.artifact)

    def tiles(prefix, counts):
        return tuple(v for k, v in group_args(prefix, counts).items() if k.endswith("P"))

    write_before, write_now, attn_before, attn_now = set(), set(), set(), set()
    for layer in sorted(codec.layers):
        tb = layer_tables(codec, layer)
        k, v = (tuple(g) for g in tb.groups)
        write_before |= {("k", k, 0), ("v", v, tb.k.nbytes)}  # counts and the V codes' byte offset
        write_now |= {("k", tiles("G", k)), ("v", tiles("G", v))}
        attn_before.add((k, v))
        attn_now.add((tiles("K", k), tiles("V", v)))
    res = {"benchmark": "compiled kernel variants per artifact", **provenance(), "artifact": args.artifact,
           "artifact_content_sha256": meta.get("content_sha256"), "model": meta.get("model"),
           "layers": len(codec.layers),
           "write_kv_variants": {"layout_compiled_in": len(write_before), "tile_sizes_only": len(write_now)},
           "attention_variants": {"layout_compiled_in": len(attn_before), "tile_sizes_only": len(attn_now)}}
    write_result(args.out, res)
    print(res["write_kv_variants"], res["attention_variants"])


if __name__ == "__main__":
    main()
