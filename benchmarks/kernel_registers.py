"""Registers and spills of the attention kernel compiled for the H200 (sm_90), without a GPU.

Triton compiles to PTX and Triton's bundled `ptxas` assembles it for sm_90 on the CPU, so the
register count and spill bytes that `benchmarks/attention.py` records on the GPU can be read here
for any kernel revision and tile choice. Decode of the benchmark's layer (a Llama-70B layer: 8 KV
heads, GQA 8, head dim 128, the synthetic `oscar` codec of attention.py) and the same-design bf16
kernel, at the block sizes and warp counts the GPU tuner tries. The RoPE-mean term is compiled both
ways: split (layers whose key offset exceeds attention.ROPE_SPLIT_RATIO) and in one product (the
others: on Qwen2.5-1.5B's real keys 24 of 28 layers have an offset below 3x, by the related measure
of key-offsets-qwen2.5-coder-1.5b-cpu.json), and without the term (codecs fitted with key_mean="global").

    python benchmarks/kernel_registers.py --out benchmarks/results/kernel-registers-sm90.json
    python benchmarks/kernel_registers.py --kernel-file OLD_attention.py ...   # another revision
    python benchmarks/kernel_registers.py --prefill-only --out ...               # chunked prefill's shape

With `nvdisasm`, also the SASS instructions of the loop over key tiles (what one warp issues per
tile: at a fixed tile size, fewer is faster where the kernel is issue-bound, as this one is).

Counting only: speed needs the GPU (attention.py).
"""

from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))

from _record import provenance, write_result  # noqa: E402

# argument types of _attn_kernel by name (pointers by the dtype the host passes, see attention._launch)
_PTR = {"qt_ptr": "*fp32", "qo_ptr": "*fp32", "cm_ptr": "*fp32", "rm_ptr": "*fp32", "invf_ptr": "*fp64",
        "cn_ptr": "*fp32", "sn_ptr": "*fp32", "cache_ptr": "*u8", "kc_ptr": "*bf16", "vc_ptr": "*bf16",
        "bt_ptr": "*i32", "prefix_ptr": "*i32", "cuq_ptr": "*i32", "sk_ptr": "*bf16", "sv_ptr": "*bf16",
        "kn_ptr": "*bf16", "vn_ptr": "*bf16", "lev_ptr": "*fp32", "poly_ptr": "*fp32", "acct_ptr": "*fp32", "acco_ptr": "*fp32",
        "lq_ptr": "*fp32", "m_ptr": "*fp32", "l_ptr": "*fp32"}


def compile_sm90(fn, constexprs: dict, num_warps: int, aligned: tuple[str, ...] = (), ptr_types: dict | None = None,
                 floats: tuple[str, ...] = ("qk_scale",)):
    """Compile `fn` for sm_90 (no GPU needed) -> Triton's compiled kernel. Pointer types from
    `ptr_types` (default: _attn_kernel's), names in `floats` are fp32, other ints i32. As a launch
    from PyTorch would specialize them: pointers and the ints in `aligned` are multiples of 16."""
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    ptr_types = ptr_types or _PTR
    sig, attrs = {}, {}
    for i, name in enumerate(fn.arg_names):
        if name in constexprs:
            sig[name] = "constexpr"
        elif name in ptr_types:
            sig[name] = ptr_types[name]
            attrs[(i,)] = [["tt.divisibility", 16]]
        elif name in floats:
            sig[name] = "fp32"
        else:
            sig[name] = "i32"
            if name in aligned:
                attrs[(i,)] = [["tt.divisibility", 16]]
    src = ASTSource(fn, sig, constexprs=constexprs, attrs=attrs)
    return triton.compile(src, target=GPUTarget("cuda", 90, 32), options={"num_warps": num_warps})


def compile_stats(fn, constexprs: dict, num_warps: int, aligned: tuple[str, ...] = ()) -> dict:
    """`compile_sm90`, then ptxas's registers and spills."""
    return _ptxas_report(compile_sm90(fn, constexprs, num_warps, aligned))


def _ptxas_report(kernel) -> dict:
    """Registers and spill stores/loads from `ptxas -v` on the kernel's PTX (sm_90a), and from
    `nvdisasm` on the cubin the SASS instruction count of the kernel and of its largest loop (the
    loop over key tiles: the instructions one warp issues per tile)."""
    import re
    import subprocess
    import tempfile

    from triton.backends.nvidia.compiler import get_ptxas

    ptx = kernel.asm["ptx"]
    with tempfile.TemporaryDirectory() as tmp:
        p = Path(tmp) / "k.ptx"
        p.write_text(ptx)
        ptxas = Path(get_ptxas(90).path)
        out = subprocess.run([str(ptxas), "-v", "--gpu-name=sm_90a", str(p), "-o", str(Path(tmp) / "k.cubin")],
                             capture_output=True, text=True, check=True)
        sass = subprocess.run([str(ptxas.parent / "nvdisasm"), "-c", str(Path(tmp) / "k.cubin")],
                              capture_output=True, text=True, check=True).stdout
    text = out.stderr + out.stdout
    regs = re.search(r"Used (\d+) registers", text)
    spill = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", text)
    stack = re.search(r"(\d+) bytes stack frame", text)
    return {"registers": int(regs.group(1)) if regs else None,
            "spill_store_bytes": int(spill.group(1)) if spill else None,
            "spill_load_bytes": int(spill.group(2)) if spill else None,
            "stack_frame_bytes": int(stack.group(1)) if stack else None,
            **sass_counts(sass)}


def sass_counts(sass: str) -> dict:
    """nvdisasm text -> {"sass_instructions": all, "loop_instructions": the largest innermost loop's
    (from a backward branch's target to the branch), "loop_ops": its 12 most frequent opcodes,
    "loop_ops_with_modifiers": its 16 most frequent with their modifiers (HADD2.F32 is a float16 ->
    float32 conversion, not an add)}."""
    import collections
    import re

    ins, label_at, pending = [], {}, []
    for line in sass.splitlines():
        m = re.match(r"\s*\.(L_x_\d+):", line)
        if m:
            pending.append(m.group(1))
            continue
        m = re.match(r"\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;", line)
        if m:
            addr = int(m.group(1), 16)
            for name in pending:
                label_at[name] = addr
            pending = []
            ins.append((addr, m.group(2)))
    loops = []
    for addr, text in ins:
        m = re.search(r"BRA\s+`\(\.(L_x_\d+)\)", text)
        if m and label_at.get(m.group(1), addr) < addr:
            loops.append((label_at[m.group(1)], addr))
    # innermost loops (no other loop inside), the largest of them: the loop over key tiles, not the
    # loop around it that re-anchors the RoPE-mean angle every ROPE_ANCHOR_TILES tiles
    inner = [(lo, hi) for lo, hi in loops if not any(lo <= a and b <= hi and (a, b) != (lo, hi) for a, b in loops)]
    loop = max(inner, key=lambda x: x[1] - x[0], default=None)
    body = [t for a, t in ins if loop and loop[0] <= a <= loop[1]]
    full = collections.Counter(re.sub(r"^@!?U?P\w+\s+", "", t).split()[0] for t in body)  # with modifiers
    ops = collections.Counter()
    for name, n in full.items():
        ops[name.split(".")[0]] += n
    return {"sass_instructions": len(ins), "loop_instructions": len(body), "loop_ops": dict(ops.most_common(12)),
            "loop_ops_with_modifiers": dict(full.most_common(16))}


def load_kernel_module(path: str | None):
    """oscar_cluster.kernels.attention, or the same file at `path` (another revision, imported as
    part of the installed package so its relative imports resolve)."""
    import oscar_cluster.kernels.attention as current

    if path is None:
        return current
    spec = importlib.util.spec_from_file_location("oscar_cluster.kernels._attention_rev", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--kernel-file", default=None, help="an attention.py of another revision (default: installed)")
    ap.add_argument("--label", default="current")
    ap.add_argument("--write-kv", metavar="OSCAR_YAML", default=None,
                    help="also write_kv's variants for an artifact's layouts (oscar.yaml), transform fused or on the host")
    ap.add_argument("--reduce-only", action="store_true",
                    help="only the split-K reduction kernel, at the split tiles reduce_width gives")
    ap.add_argument("--prefill-only", action="store_true",
                    help="only the chunked-prefill shape (16-token query blocks x GQA 8 = 128 rows, 16-key tiles)")
    ap.add_argument("--write-kv-only", metavar="G4P,G3P,G2P,G1P", default=None,
                    help="only write_kv, one layout's tile sizes (head dim 128, no RoPE mean), both transforms")
    ap.add_argument("--split-layouts", metavar="OSCAR_YAML", default=None,
                    help="only packed decode (64 keys x 2 warps, one-product RoPE term) on every layer layout of an "
                         "artifact's oscar.yaml: groups split into two tiles (attention.split_tiles), not, and keys only")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()
    if args.split_layouts:
        write_result(args.out, {"benchmark": "packed decode SASS instructions per key on an artifact's layer layouts, "
                                             "groups split into two tiles or not (sm_90, ptxas, no GPU)",
                                **provenance(), "layouts": args.split_layouts, **split_layout_rows(args.split_layouts)})
        return
    if args.write_kv_only:
        tiles = tuple(int(t) for t in args.write_kv_only.split(","))
        write_result(args.out, {"benchmark": "write_kv registers, spills and SASS instructions for sm_90 (no GPU)",
                                **provenance(), "rows": write_kv_layout_rows(tiles),
                                "note": "sass_instructions is the static count: the scale loop's body "
                                        "(loop_instructions) runs SCALE_ITERS = 2 times"})
        return
    if args.reduce_only:
        write_result(args.out, {"benchmark": "split-K reduction kernel registers and spills for sm_90 (ptxas, no GPU)",
                                **provenance(), "rows": reduce_rows()})
        return

    from attention import synthetic_codec

    from oscar_cluster.kernels.layout import group_args, layer_tables

    mod = load_kernel_module(args.kernel_file)
    d, H, Hq = 128, 8, 64
    codec = synthetic_codec(d, H, Hq)
    tb = layer_tables(codec, 0)
    G = Hq // H
    rows = []
    # the kernel's own layout arguments (tile sizes, and remainder tiles where it splits groups);
    # older kernel files without _group_args took layout.group_args'
    tile_args = getattr(mod, "_group_args", None) or (lambda g: {**group_args("K", g[0]), **group_args("V", g[1])})
    split_arg = "ROPE_SPLIT" in mod._attn_kernel.arg_names  # revisions before 2026-11-30 always split
    # (name, packed pages, RoPE-mean term split, RoPE-mean term present, LOWP); without the term: a codec
    # fitted with key_mean="global"; LOWP 1: bf16 operands, 3: the level products in float16
    # (paged_attention's operand_precision="fp16")
    kinds = [("oscar", True, True, True, 1), ("oscar, RoPE term in one product", True, False, True, 1),
             ("oscar, no RoPE-mean term", True, False, False, 1), ("bf16", False, False, False, 1)]
    if "_mm_levels" in vars(mod):  # revisions since the float16 level operands
        kinds.insert(2, ("oscar, RoPE term in one product, fp16 levels", True, False, True, 3))
    # n_qblocks is 1 in decode: a constexpr where the revision lets Triton specialize it
    jit = mod._attn_kernel
    dns = set(getattr(jit, "do_not_specialize", None) or getattr(jit, "kwargs", {}).get("do_not_specialize", ()))
    dns |= {jit.arg_names[i] for i in dns if isinstance(i, int)}
    per_call_one = {} if "n_qblocks" in dns else {"n_qblocks": 1}
    # decode: one query row block per sequence, split-K; prefill: 16-token query blocks, 16-key tiles
    # (the default there: attention._launch), one split
    block_q = 16 if args.prefill_only else 1
    tilings = [(16, w) for w in (4, 8)] if args.prefill_only else [(b, w) for b in (16, 32, 64) for w in (2, 4, 8)]
    for name, packed, split, rope, lowp in kinds:
        if packed and rope and not split and not split_arg:
            continue
        groups = tb.groups if packed else ((0, 0, 0, 0), (0, 0, 0, 0))
        for block_n, num_warps in tilings:
            extra = {"ROPE_SPLIT": split} if split_arg else {}
            const = dict(D=d, HALF=d // 2, BLOCK_Q=block_q, G_P2=G, BLOCK_M=max(16, block_q * G), BLOCK_N=block_n,
                         BLOCK_S=16, SPLIT=not args.prefill_only, HAS_ROPE=packed and rope and tb.has_rope_mean,
                         PACKED=packed, LOWP=lowp, **extra,
                         **{k: v for k, v in tile_args(groups).items() if k.endswith("P")})
            # 64 query heads, pages of 16 slots; decode: one query block per sequence
            st = compile_stats(mod._attn_kernel, {**const, **({} if args.prefill_only else per_call_one)}, num_warps,
                               aligned=("Hq", "block_size"))
            rows.append({"kernel": name, "block_n": block_n, "num_warps": num_warps, **st})
            print(f"{name:32s} block_n {block_n:2d} warps {num_warps}: {st}", flush=True)
    res = {"benchmark": "attention kernel registers and spills for sm_90 (ptxas, no GPU)",
           **provenance(), "revision": args.label, "kernel_file": args.kernel_file or "installed",
           "layer": {"kv_heads": H, "q_heads": Hq, "head_dim": d, "groups": [list(g) for g in tb.groups]},
           "shape": ("chunked prefill: 16-token query blocks x GQA 8 = 128 rows, one split" if args.prefill_only
                     else "decode: one token per sequence, split-K"),
           "rows": rows}
    if args.write_kv:
        res["write_kv"] = write_kv_rows(args.write_kv)
    write_result(args.out, res)


def reduce_rows() -> list[dict]:
    """_reduce_kernel (packed, head dim 128, 4 warps) at split tiles 8 (the old width for 5-8 splits) and 64."""
    import importlib

    att = importlib.import_module("oscar_cluster.kernels.attention")
    ptr = {n: "*fp32" for n in att._reduce_kernel.arg_names if n.endswith("_ptr")}
    rows = []
    for s_p2 in (8, att.reduce_width(8)):
        st = _ptxas_report(compile_sm90(att._reduce_kernel, dict(S_P2=s_p2, D=128, PACKED=True), 4, ptr_types=ptr,
                                        floats=()))
        rows.append({"S_P2": s_p2, "num_warps": 4, **st})
        print(f"reduce S_P2 {s_p2}: {st}", flush=True)
    return rows


def split_layout_rows(yaml_path: str, block_n: int = 64, num_warps: int = 2) -> dict:
    """Per distinct layer layout of `yaml_path`: instructions per key and spills of the packed decode
    kernel with `attention._group_args` (groups split where two tiles pad fewer channels), with every
    group as one tile (the kernels before the split), and with only the key groups split; head dim
    128, GQA 8, LOWP 1, RoPE term in one product; and the means over the layers."""
    from compile_variants import codec_with_layouts

    import oscar_cluster.kernels.attention as att
    from oscar_cluster.kernels.layout import group_args, layer_tables

    def one_tile(groups):
        out = {**group_args("K", groups[0]), **group_args("V", groups[1])}
        return {**out, **{k[:-1] + "RP": 1 for k in out if k.endswith("P")}}

    def keys_split(groups):  # split key groups, value groups as one tile
        values_one_tile = {k: v for k, v in one_tile(groups).items() if k.startswith("V")}
        return {**att._group_args(groups), **values_one_tile}

    codec, _ = codec_with_layouts(yaml_path)
    layers: dict = {}
    for layer in sorted(codec.layers):
        layers.setdefault(tuple(tuple(int(x) for x in g) for g in layer_tables(codec, layer).groups), []).append(layer)
    rows, total = [], {"split": 0.0, "one_tile": 0.0, "keys_split": 0.0}
    for groups, where in layers.items():
        row = {"k_groups": list(groups[0]), "v_groups": list(groups[1]), "layers": where}
        for name, args_of in (("split", att._group_args), ("one_tile", one_tile), ("keys_split", keys_split)):
            const = dict(D=128, HALF=64, BLOCK_Q=1, G_P2=8, BLOCK_M=16, BLOCK_N=block_n, BLOCK_S=16, SPLIT=True,
                         HAS_ROPE=True, PACKED=True, LOWP=1, ROPE_SPLIT=False,
                         **{k: v for k, v in args_of(groups).items() if k.endswith("P")})
            st = compile_stats(att._attn_kernel, const, num_warps, aligned=("Hq", "block_size"))
            per_key = st["loop_instructions"] * num_warps / block_n
            row[name] = {"instructions_per_key": round(per_key, 1), "spill_store_bytes": st["spill_store_bytes"]}
            total[name] += per_key * len(where)
        rows.append(row)
        print(groups, where, row["one_tile"], row["split"], flush=True)
    n = sum(len(r["layers"]) for r in rows)
    return {"block_n": block_n, "num_warps": num_warps, "rows": rows,
            "mean_instructions_per_key_over_layers": {k: round(v / n, 1) for k, v in total.items()}}


def write_kv_rows(yaml_path: str) -> dict:
    """write_kv's registers and spills for every variant of the layouts in `yaml_path`, with the
    transform fused in the kernel (bf16 input) and on the host (float32 input, TRANSFORM=False)."""
    from compile_variants import codec_with_layouts, compile_write_kv_sm90

    from oscar_cluster.kernels.precompile import write_kv_variants

    codec, _ = codec_with_layouts(yaml_path)
    d = int(codec.head_dim)
    rows = []
    for kind, tiles, rope in sorted(write_kv_variants(codec)):
        for transform in ("kernel", "host"):
            for block_t in (16, 32, 64):
                for num_warps in (4, 8):
                    st = _ptxas_report(compile_write_kv_sm90(tiles, rope, d, transform, block_t, num_warps))
                    rows.append({"kind": kind, "tiles": list(tiles), "transform": transform, "block_t": block_t,
                                 "num_warps": num_warps, **st})
                    print(f"write_kv {kind} {tiles} {transform:6s} block_t {block_t:2d} warps {num_warps}: {st}",
                          flush=True)
    return {"layouts": yaml_path, "variants": len(rows) // 12, "rows": rows}


def write_kv_layout_rows(tiles: tuple, head_dim: int = 128) -> list[dict]:
    """write_kv for one layout's tile sizes, transform fused and on the host, 16-64 tokens, 4 and 8 warps."""
    from compile_variants import compile_write_kv_sm90

    rows = []
    for transform in ("kernel", "host"):
        for block_t in (16, 32, 64):
            for num_warps in (4, 8):
                st = _ptxas_report(compile_write_kv_sm90(tiles, False, head_dim, transform, block_t, num_warps))
                per_token = (st["sass_instructions"] + st["loop_instructions"]) * num_warps / block_t
                rows.append({"tiles": list(tiles), "transform": transform, "block_t": block_t, "num_warps": num_warps,
                             **st, "warp_instructions_per_token": round(per_token, 1)})
                print(f"write_kv {tiles} {transform:6s} block_t {block_t:2d} warps {num_warps}: {rows[-1]}", flush=True)
    return rows


if __name__ == "__main__":
    main()
