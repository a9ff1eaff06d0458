"""How many compiled kernel variants an artifact's layers need: with the layout compiled in (counts
and code offsets as constexprs, the kernels before 2026-11-30) and now (only the tile sizes:
`kernels.layout.group_args` for write_kv, `attention._group_args` for attention). With --time-sm90,
also how long compiling its write_kv variants for the H200 (sm_90) takes on this CPU (Triton
compiles and runs ptxas without a GPU): one after the other, as the first batch of a run did, and in
--workers processes, as `kernels.precompile` does.
On a GPU the first-call times are attention.py --sections compile.

    python benchmarks/compile_variants.py --artifact DIR --out benchmarks/results/compile-variants-NAME.json
    python benchmarks/compile_variants.py --artifact DIR --time-sm90 --workers 2 --out ...
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--artifact", help="artifact DIR (oscar.yaml + transforms.safetensors)")
    ap.add_argument("--layouts", help="or only an oscar.yaml: its bit layouts on a synthetic codec of the same shape "
                                      "(variants depend on the layouts alone; for artifacts whose tensors are not here)")
    ap.add_argument("--out", required=True)
    ap.add_argument("--time-sm90", action="store_true", help="time compiling the write_kv variants for sm_90")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    from _record import provenance, write_result
    from oscar_cluster.artifact import load_artifact, read_metadata
    from oscar_cluster.kernels.layout import layer_tables

    if bool(args.artifact) == bool(args.layouts):
        ap.error("give --artifact DIR or --layouts oscar.yaml")
    if args.artifact:
        codec = load_artifact(args.artifact)
        meta = read_metadata(args.artifact)
    else:
        codec, meta = codec_with_layouts(args.layouts)

    from oscar_cluster.kernels.precompile import write_kv_variants

    from oscar_cluster.kernels.attention import _group_args

    def attention_tiles(groups):  # the attention kernel's tiles (it splits groups: attention.split_tiles)
        return tuple(v for k, v in _group_args(groups).items() if k.endswith("P"))

    write_before, attn_before, attn_now = set(), set(), set()
    for layer in sorted(codec.layers):
        tb = layer_tables(codec, layer)
        k, v = (tuple(g) for g in tb.groups)
        write_before |= {("k", k, 0), ("v", v, tb.k.nbytes)}  # counts and the V codes' byte offset
        attn_before.add((k, v))
        attn_now.add(attention_tiles((k, v)))
    write_now = write_kv_variants(codec)  # what kernels.precompile compiles
    res = {"benchmark": "compiled kernel variants per artifact", **provenance(), "artifact": args.artifact or args.layouts,
           "artifact_content_sha256": meta.get("content_sha256"), "model": meta.get("model"),
           "layers": len(codec.layers),
           "write_kv_variants": {"layout_compiled_in": len(write_before), "tile_sizes_only": len(write_now)},
           "attention_variants": {"layout_compiled_in": len(attn_before), "tile_sizes_only": len(attn_now)}}
    if args.time_sm90:
        res["write_kv_compile_sm90"] = time_write_kv_compiles(codec, args.workers)
    write_result(args.out, res)
    print(res["write_kv_variants"], res["attention_variants"])


def codec_with_layouts(yaml_path: str):
    """A synthetic `oscar` codec with the model shape, layers and bit layouts of an artifact's YAML
    (the transforms are random; only the layouts matter for the variants) -> (codec, metadata)."""
    import yaml

    from oscar_cluster.synthetic import synthetic_oscar_codec

    meta = yaml.safe_load(Path(yaml_path).read_text(encoding="utf-8"))
    m, layouts = meta["model"], meta["layouts"]
    codec = synthetic_oscar_codec(int(m["head_dim"]), int(m["num_kv_heads"]), int(m["num_heads"]),
                                  layers=len(layouts), seed=0)
    for layer, kinds in layouts.items():
        for kind in ("k", "v"):
            bits = [int(b) for w, b in kinds[kind] for _ in range(int(w))]
            codec.layers[int(layer)][kind].bits = torch.tensor(bits, dtype=torch.int64)
    return codec, {"model": m, "content_sha256": None, "layouts_from": yaml_path}


_WRITE_PTR = {"x_ptr": "*bf16", "pos_ptr": "*i32", "slot_ptr": "*i64", "cache_ptr": "*u8", "t_ptr": "*fp32",
              "mean_ptr": "*fp32", "std_ptr": "*fp32", "rm_ptr": "*fp32", "invf_ptr": "*fp64", "lev_ptr": "*fp32"}


def compile_write_kv_sm90(tiles: tuple, rope: bool, head_dim: int, transform: str = "kernel", block_t: int = 32,
                          num_warps: int = 4):
    """One write_kv variant compiled for sm_90, as write_kv launches it on the GPU: the transform
    fused ("kernel", bf16 input) or done before it ("host", float32 input), tf32x3 products."""
    import importlib

    from kernel_registers import compile_sm90

    wkv = importlib.import_module("oscar_cluster.kernels.write_kv")
    fused = transform == "kernel"
    const = dict(D=head_dim, HALF=head_dim // 2, BLOCK_T=block_t, SCALE_ITERS=2, TRANSFORM=fused, SX_H_UNIT=16,
                 HAS_ROPE=rope and fused, PRECISION="tf32x3", **dict(zip(("G4P", "G3P", "G2P", "G1P"), tiles)))
    ptr = dict(_WRITE_PTR, x_ptr="*bf16" if fused else "*fp32")
    # the token stride is a multiple of 16 at d = 64/128/256, which a launch specializes on
    return compile_sm90(wkv._write_kind_kernel, const, num_warps, aligned=("sx_t",), ptr_types=ptr,
                        floats=("inv_coded",))


def _compile_write_kv(key: tuple, head_dim: int, cache_dir: str) -> float:
    """Compile one write_kv variant (kind, tile sizes, RoPE mean) at write_kv's defaults (the host
    transform, DEFAULT_TILES["host"]) into a fresh Triton cache (no hit from an earlier run) -> seconds.
    The host transform's `_prep_kernel` (two variants per model: keys with the RoPE mean, values) is
    not counted here."""
    import os
    import time

    from oscar_cluster.kernels.write_kv import DEFAULT_TILES

    os.environ["TRITON_CACHE_DIR"] = cache_dir
    _, tiles, rope = key
    block_t, warps = DEFAULT_TILES["host"]
    t0 = time.perf_counter()
    compile_write_kv_sm90(tiles, rope, head_dim, "host", block_t=block_t, num_warps=warps)
    return time.perf_counter() - t0


def time_write_kv_compiles(codec, workers: int) -> dict:
    """Seconds to compile every write_kv variant of `codec` for sm_90: one by one, and in a pool."""
    import tempfile
    import time
    from concurrent.futures import ProcessPoolExecutor
    from multiprocessing import get_context

    from oscar_cluster.kernels.precompile import write_kv_variants

    keys = sorted(write_kv_variants(codec))
    d = int(codec.head_dim)
    with tempfile.TemporaryDirectory() as one:
        each = [_compile_write_kv(k, d, one) for k in keys]
    with tempfile.TemporaryDirectory() as many:
        t0 = time.perf_counter()
        with ProcessPoolExecutor(workers, mp_context=get_context("spawn")) as pool:
            list(pool.map(_compile_write_kv, keys, [d] * len(keys), [many] * len(keys)))
        parallel = time.perf_counter() - t0
    print(f"write_kv for sm_90: {len(keys)} variants, {sum(each):.1f} s one by one, {parallel:.1f} s in {workers} "
          "processes", flush=True)
    return {"variants": len(keys), "seconds_one_by_one": round(sum(each), 1),
            "seconds_each": [round(x, 2) for x in each], "workers": workers, "seconds_in_pool": round(parallel, 1)}


if __name__ == "__main__":
    main()
