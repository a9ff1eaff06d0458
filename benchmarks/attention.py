"""Kernel benchmark on one GPU: checks, copy bandwidth, decode attention, write_kv, model-level capacity.

    python benchmarks/attention.py --out results/attention-h200.json [--quick]

One call builds, checks and times everything (issue: Triton INT2 kernels):
1. checks: write_kv bytes vs the codec's encoding, decode and chunked-prefill attention vs the
   PyTorch reference, for head dims 64/128/256 and GQA 3/6/8 on the GPU;
2. copy bandwidth (device-to-device, bytes read + written), the ceiling for memory-bound kernels;
3. decode step of one Llama-70B attention layer (8 KV heads, 64 query heads, d 128, pages of 16)
   for context 4K..128K and batch 1..64: torch SDPA on a contiguous bf16 cache (every backend
   that runs, best kept), the bf16 paged Triton kernel of the same design, and OSCAR; split count
   and tile size swept for both Triton kernels (best kept); times are medians of CUDA-graph
   replays; achieved GB/s counts the cache bytes read;
4. write_kv for 8K tokens of that layer against its bf16 causal prefill attention (SDPA);
5. model level: a Qwen2.5-1.5B-shaped model (random weights, bf16), 32K-token sequences: the
   largest batch whose cache fits beside the weights and a workspace, bf16 pages vs OSCAR pages,
   and decode tokens/s at that batch (same attention kernel design for both).
On request (--sections): precision (keys with a constant offset, bf16 vs float32 operands, error
against the float64 reference), compile (first-call cost over random bit layouts), prefill_time (a
2,048-token chunk over an 8K and a 30K packed prefix against SDPA and the bf16 paged kernel) and
transform_fused (write_kv's transform as one Triton kernel against prep + cuBLAS bmm).
Each section is written to the JSON as it completes (atomic), so a failure loses nothing before it.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
import traceback
import warnings
from pathlib import Path

import torch
import triton
from triton.testing import do_bench, do_bench_cudagraph

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _record import provenance, write_result  # noqa: E402

from oscar_cluster import codecs  # noqa: E402
from oscar_cluster.errors import ConfigError  # noqa: E402
from oscar_cluster.kernels import (layer_tables, paged_attention, paged_attention_bf16, prefill_attention,  # noqa: E402
                                   paged_attention_reference, write_kv, write_kv_reference)
from oscar_cluster.kernels.paged_cache import PagedKVCache, paged_attention_enabled  # noqa: E402
from oscar_cluster.kernels.attention import ROPE_SPLIT_RATIO  # noqa: E402
from oscar_cluster.synthetic import offset_key_codec, synthetic_oscar_codec  # noqa: E402

DEV = torch.device("cuda")
TUNE_BLOCK_N, TUNE_WARPS = (16, 32, 64), (2, 4, 8)
MODEL_STORAGES = ("bf16", "oscar")


def synthetic_codec(d: int, H: int, Hq: int, layers: int = 1, seed: int = 0):
    """An `oscar` codec fitted on synthetic statistics (keys with outliers and a mean); the bit
    layout is what water-filling gives (2.0 bits mean), which is all the speed depends on."""
    return synthetic_oscar_codec(d, H, Hq, layers=layers, seed=seed, samples=256, w_o_rows=256)


def median_ms(fn, graph: bool = True, rep: int = 60) -> float:
    """Median time of fn in ms over about `rep` ms of repeats (do_bench: at least one)."""
    if graph:
        return float(do_bench_cudagraph(fn, rep=rep, return_mode="median"))
    return float(do_bench(fn, warmup=10, rep=rep, return_mode="median"))


# ------------------------------------------------------------------------------------------------
def section_checks(modes=("decode",), configs=((128, 8, 64, 16), (64, 3, 9, 32), (256, 2, 8, 64)),
                   variants=({},)) -> dict:
    rows = []
    for d, H, Hq, bs in configs:
        codec = synthetic_codec(d, H, Hq, seed=d + Hq)
        tb = layer_tables(codec, 0, DEV)
        g = torch.Generator(device=DEV).manual_seed(0)
        prefix, B = [3000, 17, 1029], 3
        max_blocks = max(-(-p // bs) for p in prefix)
        nb = B * max_blocks + 5
        bt = torch.randperm(nb, device=DEV)[: B * max_blocks].view(B, max_blocks).int()
        got = torch.full((nb, bs, H, tb.slot_bytes), 0xA5, dtype=torch.uint8, device=DEV)
        want = got.clone()
        sk = torch.zeros(B, tb.sinks, H, d, dtype=torch.bfloat16, device=DEV)
        sv = sk.clone()
        for b, P in enumerate(prefix):
            k = torch.randn(P, H, d, device=DEV, generator=g).bfloat16() * 2 + 0.5
            v = torch.randn(P, H, d, device=DEV, generator=g).bfloat16()
            pos = torch.arange(P, device=DEV)
            slots = bt[b, pos // bs].long() * bs + pos % bs
            write_kv(k, v, pos, slots, got, tb)
            write_kv_reference(codec, 0, k, v, pos, slots, want)
            sk[b], sv[b] = k[:4], v[:4]
        same = float((got == want).float().mean())
        sm = d ** -0.5
        for mode, q_lens in (("decode", [1, 1, 1]), ("prefill", [300, 5, 77])):
            if mode not in modes:
                continue
            cu = torch.tensor([0] + list(torch.tensor(q_lens).cumsum(0)), dtype=torch.int32, device=DEV)
            Tq = int(cu[-1])
            q = torch.randn(Tq, Hq, d, device=DEV, generator=g).bfloat16()
            kn = torch.randn(Tq, H, d, device=DEV, generator=g).bfloat16()
            vn = torch.randn(Tq, H, d, device=DEV, generator=g).bfloat16()
            pl = torch.tensor(prefix, dtype=torch.int32, device=DEV)
            ref = None
            for var in variants:
                try:
                    out = paged_attention(q, kn, vn, got, bt, pl, cu, sk, sv, tb, sm, **var).float()
                    torch.cuda.synchronize()
                    if ref is None:
                        ref = paged_attention_reference(q, kn, vn, got, bt, pl, cu, sk, sv, codec, 0, tb, sm)
                    err = float((out - ref).abs().max() / ref.abs().max())
                except Exception as e:  # record it; a refusal is harmless, any other error may have ended
                    # the CUDA context, so the section stops there and keeps the rows it has
                    err_text = f"{type(e).__name__}: {e}"[:300]
                    rows.append({"head_dim": d, "mode": mode, "variant": var, "error": err_text})
                    print(f"check d={d} {mode} {var}: {err_text}", flush=True)
                    if isinstance(e, ConfigError):
                        continue
                    return {"rows": rows, "all_ok": False, "error": err_text}
                rows.append({"head_dim": d, "kv_heads": H, "q_heads": Hq, "block_size": bs, "mode": mode,
                             "variant": var, "write_kv_bytes_equal": same, "attention_max_err_rel": err,
                             "ok": bool(same >= 0.995 and err < 2e-2)})
                print(f"check d={d} G={Hq // H} bs={bs} {mode} {var}: bytes equal {same:.5f}, attention err {err:.2e}",
                      flush=True)
    return {"rows": rows, "all_ok": all(r.get("ok", False) for r in rows)}


def section_copy() -> dict:
    n = 2 << 30
    src = torch.empty(n, dtype=torch.uint8, device=DEV).random_(0, 255)
    dst = torch.empty_like(src)
    ms = median_ms(lambda: dst.copy_(src), graph=False)
    del src, dst
    return {"bytes_copied": n, "median_ms": ms, "GBps_read_plus_write": 2 * n / ms / 1e6}


def _sdpa_best(q, k, v) -> tuple[float, str]:
    from torch.nn.attention import SDPBackend, sdpa_kernel

    best = (math.inf, "none")
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
        backend = getattr(SDPBackend, name)
        try:
            with sdpa_kernel([backend]):
                torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                torch.cuda.synchronize()
                ms = median_ms(lambda: torch.nn.functional.scaled_dot_product_attention(q, k, v, enable_gqa=True),
                               graph=False)
        except Exception as e:  # backend does not take this shape
            print(f"  sdpa {name}: {type(e).__name__}: {str(e)[:100]}", flush=True)
            continue
        best = min(best, (ms, name))
    return best


def _tune(run, splits_default: int) -> dict:
    """Tile size and warps for one Triton kernel, tuned once at the reference shape (compiles are
    the slow part); the split count is then chosen per shape by `_best_splits`."""
    best = (math.inf, {})
    for block_n in TUNE_BLOCK_N:
        for warps in TUNE_WARPS:
            stats: dict = {}
            try:
                run(num_splits=splits_default, block_n=block_n, num_warps=warps, stats=stats)
                ms = median_ms(lambda: run(num_splits=splits_default, block_n=block_n, num_warps=warps))
            except Exception as e:
                print(f"  variant block_n={block_n} warps={warps}: {type(e).__name__}: {str(e)[:160]}", flush=True)
                continue
            print(f"  tune block_n={block_n} warps={warps}: {ms:.3f} ms, regs {stats.get('n_regs')}, "
                  f"spills {stats.get('n_spills')}", flush=True)
            best = min(best, (ms, {**stats, "num_warps": warps, "median_ms": ms}), key=lambda x: x[0])
    return best[1]


def _best_splits(run, cfg: dict, splits_default: int, tiles: int) -> tuple[float, dict]:
    best = (math.inf, {})
    for s in sorted({max(1, min(x, tiles, 256)) for x in (splits_default, 2 * splits_default, 4 * splits_default)}):
        stats: dict = {}
        run(num_splits=s, block_n=cfg["block_n"], num_warps=cfg["num_warps"], stats=stats)
        ms = median_ms(lambda: run(num_splits=s, block_n=cfg["block_n"], num_warps=cfg["num_warps"]))
        best = min(best, (ms, {**stats, "num_warps": cfg["num_warps"]}), key=lambda x: x[0])
    return best


def section_decode(quick: bool, contexts=None, batches=None) -> dict:
    d, H, Hq, bs = 128, 8, 64, 16
    codec = synthetic_codec(d, H, Hq)
    tb = layer_tables(codec, 0, DEV)
    sm = d ** -0.5
    sms = torch.cuda.get_device_properties(DEV).multi_processor_count
    rows = []
    tuned: dict = {}  # tile size and warps per kernel, tuned at the first shape of the sweep
    contexts = contexts or ([4096, 32768] if quick else [4096, 8192, 16384, 32768, 65536, 131072])
    batches = batches or ([1, 8] if quick else [1, 8, 32, 64])
    shapes = [(32768, 8)] + [(L, B) for L in contexts for B in batches if (L, B) != (32768, 8)]  # tune at 32K x 8
    for L, B in shapes:
        torch.cuda.empty_cache()
        P = L - 1  # cached tokens; the new token is the L-th
        nblk = -(-P // bs)
        bt = torch.randperm(B * nblk, device=DEV).view(B, nblk).int()
        pl = torch.full((B,), P, dtype=torch.int32, device=DEV)
        cu = torch.arange(B + 1, dtype=torch.int32, device=DEV)
        q = torch.randn(B, Hq, d, device=DEV, dtype=torch.bfloat16)
        kn = torch.randn(B, H, d, device=DEV, dtype=torch.bfloat16)
        vn = torch.randn_like(kn)
        s0 = max(1, math.ceil(2 * sms / (B * H)))
        row = {"context": L, "batch": B}
        # SDPA on a contiguous bf16 cache
        kc = torch.randn(B, H, L, d, device=DEV, dtype=torch.bfloat16)
        vc = torch.randn_like(kc)
        ms, name = _sdpa_best(q[:, :, None], kc, vc)
        row.update(sdpa_ms=ms, sdpa_backend=name)
        del kc, vc
        # bf16 paged kernel, same design
        kp = torch.randn(B * nblk, bs, H, d, device=DEV, dtype=torch.bfloat16)
        vp = torch.randn_like(kp)
        run_bf16 = lambda **kw: paged_attention_bf16(q, kn, vn, kp, vp, bt, pl, cu, sm, max_q_len=1,  # noqa: E731
                                                     max_prefix=P, **kw)
        if "bf16" not in tuned:
            tuned["bf16"] = _tune(run_bf16, s0)
        ms, cfg = _best_splits(run_bf16, tuned["bf16"], s0, -(-P // tuned["bf16"]["block_n"]))
        row.update(bf16_paged_ms=ms, bf16_paged_cfg=cfg)
        del kp, vp
        # OSCAR packed pages
        pages = torch.randint(0, 256, (B * nblk, bs, H, tb.slot_bytes), dtype=torch.uint8, device=DEV)
        pages[..., tb.slot_bytes - 4:].view(torch.float16).fill_(0.5)
        sk = torch.randn(B, tb.sinks, H, d, device=DEV, dtype=torch.bfloat16)
        sv = torch.randn_like(sk)
        run_oscar = lambda **kw: paged_attention(q, kn, vn, pages, bt, pl, cu, sk, sv, tb, sm, max_q_len=1,  # noqa: E731
                                                 max_prefix=P, **kw)
        if "oscar" not in tuned:
            tuned["oscar"] = _tune(run_oscar, s0)
        ms, cfg = _best_splits(run_oscar, tuned["oscar"], s0, -(-P // tuned["oscar"]["block_n"]))
        row.update(oscar_ms=ms, oscar_cfg=cfg)
        # the level products in float16 (operand_precision="fp16"), at the same tiling and split count
        kw16 = {k: cfg[k] for k in ("num_splits", "block_n", "num_warps")}
        run_oscar(operand_precision="fp16", **kw16)  # compiled outside the graph capture, as in _best_splits
        row["oscar_fp16_levels_ms"] = median_ms(lambda: run_oscar(operand_precision="fp16", **kw16))
        del pages
        bf16_bytes = B * H * P * d * 2 * 2
        oscar_bytes = B * H * P * tb.slot_bytes
        best_bf16 = min(row["sdpa_ms"], row["bf16_paged_ms"])
        row.update(bf16_cache_bytes=bf16_bytes, oscar_cache_bytes=oscar_bytes,
                   best_bf16_ms=best_bf16, speedup_vs_best_bf16=best_bf16 / row["oscar_ms"],
                   speedup_vs_sdpa=row["sdpa_ms"] / row["oscar_ms"],
                   oscar_GBps=oscar_bytes / row["oscar_ms"] / 1e6,
                   bf16_paged_GBps=bf16_bytes / row["bf16_paged_ms"] / 1e6,
                   sdpa_GBps=bf16_bytes / row["sdpa_ms"] / 1e6)
        rows.append(row)
        print(f"decode L={L} B={B}: sdpa {row['sdpa_ms']:.3f} ms ({name}), bf16 paged {row['bf16_paged_ms']:.3f}, "
              f"oscar {row['oscar_ms']:.3f} -> x{row['speedup_vs_best_bf16']:.2f}, oscar {row['oscar_GBps']:.0f} GB/s, "
              f"oscar fp16 levels {row['oscar_fp16_levels_ms']:.3f}", flush=True)
    return {"layer": {"kv_heads": H, "q_heads": Hq, "head_dim": d, "block_size": bs, "slot_bytes": tb.slot_bytes,
                      "sinks": tb.sinks}, "timing": "median of CUDA-graph replays (triton do_bench_cudagraph); "
                                                    "SDPA timed eagerly (do_bench)", "tuned_at": "context 32768, batch 8", "tuned": tuned, "rows": rows}


def _write_kv_breakdown(k, v, pos, slots, cache, tb, by_transform: dict) -> dict:
    """Where write_kv's time goes, at each transform's best tiling: the host transform alone (its Triton
    prep pass and bmm, against the torch reference; each with its GPU kernels profiled), the bmm alone,
    the two kernel launches alone at 0, 1 and 2 scale-refinement rounds, and the write side's floor:
    the same slot bytes scattered by torch from a ready payload (index_copy_; reading k and v, 33 MB
    at 8K, is not in it)."""
    from oscar_cluster.kernels.write_kv import host_transform, host_transform_reference, launch_write_kind

    out: dict = {}
    pos32, sl = pos.to(torch.int32).contiguous(), slots.to(torch.int64).contiguous()
    host_src = {kind: host_transform(x, pos, kind, tb) for kind, x in (("k", k), ("v", v))}
    for name, fn in (("host_transform_ms", host_transform), ("host_transform_reference_ms", host_transform_reference)):
        out[name] = median_ms(lambda: [fn(x, pos, kind, tb) for kind, x in (("k", k), ("v", v))])
    # the float32 matmul alone (K and V), on inputs already in the head-major layout
    xf = {kind: torch.randn(tb.kv_heads, x.shape[0], x.shape[2], device=x.device) for kind, x in (("k", k), ("v", v))}
    res = {kind: torch.empty_like(t) for kind, t in xf.items()}
    Ts = {"k": tb.k_T.transpose(1, 2), "v": tb.v_T.transpose(1, 2)}
    out["host_bmm_only_ms"] = median_ms(lambda: [torch.bmm(xf[kd], Ts[kd], out=res[kd]) for kd in ("k", "v")])
    for name, fn in (("host_transform_kernels_us", host_transform),
                     ("host_transform_reference_kernels_us", host_transform_reference)):
        out[name] = _kernel_profile(lambda: [fn(x, pos, kind, tb) for kind, x in (("k", k), ("v", v))])
    for transform, (_, cfg) in by_transform.items():
        in_kernel = transform == "kernel"
        src = {"k": k.contiguous(), "v": v.contiguous()} if in_kernel else host_src
        for iters in (0, 1, 2):
            out[f"{transform}_kernels_only_scale_iters_{iters}_ms"] = median_ms(lambda: [
                launch_write_kind(kind, src[kind], pos32, sl, cache, tb, in_kernel, iters, cfg["block_t"],
                                  cfg["num_warps"]) for kind in ("k", "v")])
    flat = cache.view(-1, cache.shape[2], cache.shape[3])
    payload = flat[sl].clone()
    out["torch_scatter_floor_ms"] = median_ms(lambda: flat.index_copy_(0, sl, payload))
    print("  write_kv breakdown: " + ", ".join(f"{key} {ms:.4f}" for key, ms in out.items() if key.endswith("_ms")),
          flush=True)
    for key in ("host_transform_kernels_us", "host_transform_reference_kernels_us"):
        print(f"  {key}: " + "; ".join(f"{r['kernel'][:60]} x{r['calls']} {r['us']:.1f} us" for r in out[key]), flush=True)
    return out


def _cuda_kernel_times(fn, reps: int = 5) -> list[dict]:
    """GPU time per kernel of one fn() call (torch.profiler, the mean over `reps` calls after a warm-up),
    largest first: [{"kernel", "calls", "us"}]."""
    from collections import defaultdict

    from torch.autograd import DeviceType
    from torch.profiler import ProfilerActivity, profile

    fn()
    torch.cuda.synchronize()
    with profile(activities=[ProfilerActivity.CPU, ProfilerActivity.CUDA]) as prof:
        for _ in range(reps):
            fn()
        torch.cuda.synchronize()
    us, calls = defaultdict(float), defaultdict(int)
    for e in prof.events():  # the kernels themselves (device events), not the CPU ops that launched them
        if e.device_type == DeviceType.CUDA:
            us[e.name] += e.time_range.elapsed_us() / reps
            calls[e.name] += 1
    rows = [{"kernel": name, "calls": calls[name] // reps, "us": t} for name, t in us.items()]
    return sorted(rows, key=lambda r: -r["us"])[:12]


def _write_kv_layer(d: int = 128, H: int = 8, Hq: int = 64, T: int = 8192):
    """The layer write_kv is measured on: tables of a synthetic codec, T tokens of bf16 k and v
    [T, H, d] and their positions."""
    tb = layer_tables(synthetic_codec(d, H, Hq), 0, DEV)
    k = torch.randn(T, H, d, device=DEV, dtype=torch.bfloat16)
    return tb, k, torch.randn_like(k), torch.arange(T, device=DEV)


def _kernel_profile(fn) -> list[dict]:
    """`_cuda_kernel_times(fn)`, or one row saying why the profiler failed: a profile is a diagnosis,
    the timings around it stand without it."""
    try:
        return _cuda_kernel_times(fn)
    except Exception as e:
        return [{"kernel": f"profiler failed: {type(e).__name__}: {str(e)[:200]}", "calls": 0, "us": 0.0}]


def section_prefill_time(chunk: int = 2048, prefixes=(8192, 30720)) -> dict:
    """One chunk of a chunked prefill (batch 1) over a packed prefix, Llama-70B's layer: OSCAR at the
    CUDA default (one query token per program, 16-key tiles: the tiling the prefill checks found
    exact), with decode's 64 x 2 tiling, and with 16-token query blocks (found wrong on the H200:
    timed to price the default, not used); the bf16 paged kernel at its default and with 16-token
    blocks; SDPA over the prefix and the chunk without a mask (the chunk's causal part attended in
    full: a little more work than the causal chunk). Eager medians over about 2 s of repeats."""
    d, H, Hq, bs = 128, 8, 64, 16
    codec = synthetic_codec(d, H, Hq)
    tb = layer_tables(codec, 0, DEV)
    sm = d ** -0.5
    rows = []
    for P in prefixes:
        torch.cuda.empty_cache()
        nblk = -(-P // bs)
        bt = torch.randperm(nblk, device=DEV).view(1, nblk).int()
        pl = torch.tensor([P], dtype=torch.int32, device=DEV)
        cu = torch.tensor([0, chunk], dtype=torch.int32, device=DEV)
        q = torch.randn(chunk, Hq, d, device=DEV, dtype=torch.bfloat16)
        kn = torch.randn(chunk, H, d, device=DEV, dtype=torch.bfloat16)
        vn = torch.randn_like(kn)
        row = {"prefix": P, "chunk": chunk}
        kc = torch.randn(1, H, P + chunk, d, device=DEV, dtype=torch.bfloat16)
        ms, name = _sdpa_best(q.transpose(0, 1)[None], kc, torch.randn_like(kc))
        row.update(sdpa_ms=ms, sdpa_backend=name)
        del kc
        kp = torch.randn(nblk, bs, H, d, device=DEV, dtype=torch.bfloat16)
        vp = torch.randn_like(kp)
        pages = torch.randint(0, 256, (nblk, bs, H, tb.slot_bytes), dtype=torch.uint8, device=DEV)
        pages[..., tb.slot_bytes - 4:].view(torch.float16).fill_(0.5)
        sk = torch.randn(1, tb.sinks, H, d, device=DEV, dtype=torch.bfloat16)
        sv = torch.randn_like(sk)
        blocks16 = {"block_q": 16, "block_n": 16, "unverified_query_blocks": True}
        bf16 = lambda **kw: paged_attention_bf16(q, kn, vn, kp, vp, bt, pl, cu, sm, max_q_len=chunk,  # noqa: E731
                                                 max_prefix=P, **kw)
        oscar = lambda **kw: prefill_attention(q, kn, vn, pages, bt, pl, cu, sk, sv, tb, sm,  # noqa: E731
                                               max_q_len=chunk, max_prefix=P, **kw)
        for key, fn, kw in (("bf16_paged_ms", bf16, {}), ("bf16_paged_block_q16_ms", bf16, blocks16),
                            ("oscar_ms", oscar, {}), ("oscar_64x2_ms", oscar, {"block_n": 64, "num_warps": 2}),
                            ("oscar_block_q16_ms", oscar, blocks16)):
            fn(**kw)  # compiled before timing
            torch.cuda.synchronize()
            # calls of up to about 0.5 s: about 2 s of repeats for a median of several
            row[key] = median_ms(lambda: fn(**kw), graph=False, rep=2000)  # noqa: B023 (used within the iteration)
        del kp, vp, pages
        row["oscar_vs_sdpa"] = row["sdpa_ms"] / row["oscar_ms"]
        rows.append(row)
        print(f"prefill chunk {chunk} over {P}: sdpa {row['sdpa_ms']:.3f} ms ({name}), bf16 paged "
              f"{row['bf16_paged_ms']:.3f} (16-token blocks {row['bf16_paged_block_q16_ms']:.3f}), oscar "
              f"{row['oscar_ms']:.3f} (64 x 2 {row['oscar_64x2_ms']:.3f}, 16-token blocks "
              f"{row['oscar_block_q16_ms']:.3f})", flush=True)
    return {"layer": {"kv_heads": H, "q_heads": Hq, "head_dim": d, "block_size": bs}, "rows": rows}


def section_transform_fused() -> dict:
    """`host_transform_fused` (the host transform's prep and its product with T in one Triton kernel,
    tf32x3 tensor-core products) against `host_transform` (prep pass + cuBLAS float32 bmm) on
    section_write_kv's 8K-token layer: first how far its output lands from the bmm's (relative to the
    largest coordinate, per kind), then both timed and profiled. A section of its own, run last (a
    fault in a kernel ends the process's CUDA context); first run: attention-h200-7.json."""
    from oscar_cluster.kernels.write_kv import host_transform, host_transform_fused

    tb, k, v, pos = _write_kv_layer()
    T, H, d = k.shape
    both = lambda fn: [fn(x, pos, kind, tb) for kind, x in (("k", k), ("v", v))]  # noqa: E731
    out: dict = {"tokens": T, "kv_heads": H, "head_dim": d}
    ref, got = both(host_transform), both(host_transform_fused)
    out["max_rel_diff"] = {kind: ((g - r).abs().max() / r.abs().max()).item() for kind, g, r in zip("kv", got, ref)}
    print(f"  host_transform_fused vs bmm: max rel diff {out['max_rel_diff']}", flush=True)
    out["host_transform_ms"] = median_ms(lambda: both(host_transform))
    out["host_transform_fused_ms"] = median_ms(lambda: both(host_transform_fused))
    for name, fn in (("host_transform_kernels_us", host_transform), ("host_transform_fused_kernels_us", host_transform_fused)):
        out[name] = _kernel_profile(lambda: both(fn))
    print(f"transform 8K (K and V): prep + bmm {out['host_transform_ms']:.4f} ms, fused {out['host_transform_fused_ms']:.4f} ms",
          flush=True)
    return out


def section_write_kv() -> dict:
    Hq = 64
    tb, k, v, pos = _write_kv_layer(Hq=Hq)
    T, H, d = k.shape
    slots = torch.randperm(T, device=DEV)
    cache = torch.zeros(T // 16, 16, H, tb.slot_bytes, dtype=torch.uint8, device=DEV)
    best = (math.inf, {})
    by_transform = {}  # the fused transform spills KBs when compiled for sm_90 (kernel_registers.py --write-kv)
    # host first: the fused transform at 64 tokens and 8 warps hit an illegal memory access on 2026-11-30,
    # which ends the process's CUDA context; write_kv now refuses that combination (ConfigError)
    for transform in ("host", "kernel"):
        for bt_ in (16, 32, 64):
            for warps in (4, 8):
                try:
                    ms = median_ms(lambda: write_kv(k, v, pos, slots, cache, tb, block_t=bt_, num_warps=warps,
                                                    transform=transform))
                except Exception as e:
                    print(f"  write_kv {transform} block_t={bt_} warps={warps}: {type(e).__name__}: {str(e)[:120]}",
                          flush=True)
                    continue
                cfg = {"transform": transform, "block_t": bt_, "num_warps": warps}
                best = min(best, (ms, cfg), key=lambda x: x[0])
                by_transform[transform] = min(by_transform.get(transform, (math.inf, {})), (ms, cfg), key=lambda x: x[0])
    q = torch.randn(1, Hq, T, d, device=DEV, dtype=torch.bfloat16)
    kk = k.transpose(0, 1)[None].contiguous()
    vv = v.transpose(0, 1)[None].contiguous()
    from torch.nn.attention import SDPBackend, sdpa_kernel

    prefill = (math.inf, "none")
    for name in ("FLASH_ATTENTION", "EFFICIENT_ATTENTION", "CUDNN_ATTENTION"):
        try:
            with sdpa_kernel([getattr(SDPBackend, name)]):
                f = lambda: torch.nn.functional.scaled_dot_product_attention(q, kk, vv, is_causal=True, enable_gqa=True)  # noqa: E731
                f()
                prefill = min(prefill, (median_ms(f, graph=False), name))
        except Exception as e:
            print(f"  prefill sdpa {name}: {type(e).__name__}", flush=True)
    breakdown = _write_kv_breakdown(k, v, pos, slots, cache, tb, by_transform)
    # decode-sized calls (a step of a batch of that many sequences), each transform at its defaults:
    # the default transform was chosen at 8K tokens
    small = {}
    for n in (1, 8, 64, 512):
        small[n] = {t: median_ms(lambda: write_kv(k[:n], v[:n], pos[:n], slots[:n], cache, tb, transform=t))
                    for t in ("host", "kernel")}
        print(f"  write_kv {n} tokens: host {small[n]['host']:.4f} ms, kernel {small[n]['kernel']:.4f} ms", flush=True)
    res = {"tokens": T, "kv_heads": H, "q_heads": Hq, "head_dim": d, "write_kv_ms": best[0], "write_kv_cfg": best[1],
           "prefill_attention_ms": prefill[0], "prefill_backend": prefill[1],
           "write_kv_fraction_of_prefill": best[0] / prefill[0],
           "write_kv_best_by_transform": {t: {"ms": ms, **cfg} for t, (ms, cfg) in by_transform.items()},
           "write_kv_GBps_in": 2 * T * H * d * 2 / best[0] / 1e6, "breakdown": breakdown,
           "decode_sized_ms": {str(n): ms for n, ms in small.items()}}
    print(f"write_kv 8K: {best[0]:.4f} ms vs prefill {prefill[0]:.3f} ms ({prefill[1]}) -> "
          f"{100 * res['write_kv_fraction_of_prefill']:.2f}%", flush=True)
    return res


def section_model(quick: bool) -> dict:
    from transformers import Qwen2Config, Qwen2ForCausalLM

    L = 32768
    cfg = Qwen2Config(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                      num_attention_heads=12, num_key_value_heads=2, max_position_embeddings=L, rope_theta=1e6,
                      tie_word_embeddings=True)
    torch.manual_seed(0)
    with torch.device(DEV):
        model = Qwen2ForCausalLM(cfg).to(torch.bfloat16).eval()
    layers, H, Hq, d = 28, 2, 12, 128
    # one fitted layer's transforms and layout copied to all 28 (speed depends on the layout only;
    # one layout means one kernel compile instead of one per distinct layer layout)
    one = synthetic_codec(d, H, Hq, layers=1)
    codec = codecs.get("oscar")
    codec.load_state_dict({k.replace("layers.0.", f"layers.{i}.", 1): v for i in range(layers)
                           for k, v in one.state_dict().items()})
    torch.cuda.empty_cache()
    free, total = torch.cuda.mem_get_info()
    reserve = 6 << 30  # activations, logits, allocator slack
    out = {"model": "Qwen2.5-1.5B shape (random bf16 weights)", "context": L, "gpu_free_bytes_after_weights": free,
           "workspace_reserve_bytes": reserve, "rows": []}
    for storage in MODEL_STORAGES:
        probe = PagedKVCache(codec if storage == "oscar" else None, batch_size=1, max_tokens=L, storage=storage)
        per_layer = probe.layer(0)
        per_layer.lazy_initialization(torch.empty(1, H, 0, d, device=DEV, dtype=torch.bfloat16),
                                      torch.empty(1, H, 0, d, device=DEV, dtype=torch.bfloat16))
        per_seq = per_layer.nbytes() * layers
        del probe, per_layer
        torch.cuda.empty_cache()
        logits_per_seq = cfg.vocab_size * 4 * 2
        B = int((free - reserve) // (per_seq + logits_per_seq))
        row = {"storage": storage, "cache_bytes_per_sequence": per_seq, "max_batch": B}
        while B > 0:  # confirm by allocating; back off if the allocator disagrees
            try:
                cache = PagedKVCache(codec if storage == "oscar" else None, batch_size=B, max_tokens=L, storage=storage)
                for i in range(layers):
                    lay = cache.layer(i)
                    lay.lazy_initialization(torch.empty(B, H, 0, d, device=DEV, dtype=torch.bfloat16),
                                            torch.empty(B, H, 0, d, device=DEV, dtype=torch.bfloat16))
                    lay.fill_random_(L - 1)
                ids = torch.randint(0, cfg.vocab_size, (B, 1), device=DEV)
                pos = torch.full((B, 1), L - 1, device=DEV)
                with torch.inference_mode(), paged_attention_enabled(model):
                    def step():
                        for lay in cache.layers:
                            lay.n_seen = lay.prefix = L - 1
                        return model(input_ids=ids, position_ids=pos, past_key_values=cache, oscar_cache=cache,
                                     use_cache=True, logits_to_keep=1).logits
                    step()
                    torch.cuda.synchronize()
                    times = []
                    for _ in range(3 if quick else 7):
                        t0 = time.perf_counter()
                        step()
                        torch.cuda.synchronize()
                        times.append(time.perf_counter() - t0)
                times.sort()
                med = times[len(times) // 2]
                row.update(max_batch=B, decode_step_ms=1e3 * med, decode_tokens_per_s=B / med,
                           cache_bytes=cache.nbytes(), peak_memory_bytes=torch.cuda.max_memory_allocated())
                del cache
                break
            except torch.OutOfMemoryError:
                torch.cuda.empty_cache()
                B = int(B * 0.95)
        out["rows"].append(row)
        print(f"model {storage}: batch {row['max_batch']} x 32K, step {row.get('decode_step_ms', float('nan')):.1f} ms, "
              f"{row.get('decode_tokens_per_s', float('nan')):.0f} tok/s", flush=True)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    r = {x["storage"]: x for x in out["rows"]}
    if "bf16" in r and "oscar" in r and r["bf16"]["max_batch"]:
        out["capacity_ratio"] = r["oscar"]["max_batch"] / r["bf16"]["max_batch"]
        if "decode_tokens_per_s" in r["bf16"] and "decode_tokens_per_s" in r["oscar"]:
            out["throughput_ratio"] = r["oscar"]["decode_tokens_per_s"] / r["bf16"]["decode_tokens_per_s"]
    return out


def section_precision(prefix: int = 4096, ratios=(1.0, 9.3, 58.0)) -> dict:
    """The kernel's error against the float64 reference on layers whose keys carry a constant
    offset (Qwen2.5: 58x in layer 0, 9.3x in layer 1), decode at `prefix` tokens, with bf16 and with
    float32 matrix operands, and the decode time of each mode (one call, CUDA-graph median)."""
    d, H, Hq, bs = 128, 2, 12, 16  # Qwen2.5-1.5B's attention shape
    torch.manual_seed(0)
    rows = []
    for ratio in ratios:
        codec, keys = offset_key_codec(d, H, Hq, ratio, seed=int(ratio * 10))
        tb = layer_tables(codec, 0, DEV)
        B = 4
        nblk = -(-prefix // bs)
        bt = torch.randperm(B * nblk + 3, device=DEV)[: B * nblk].view(B, nblk).int()
        cache = torch.zeros(B * nblk + 3, bs, H, tb.slot_bytes, dtype=torch.uint8, device=DEV)
        sk = torch.zeros(B, tb.sinks, H, d, dtype=torch.bfloat16, device=DEV)
        sv = sk.clone()
        pos = torch.arange(prefix, device=DEV)
        for b in range(B):
            k = keys(pos).to(DEV).bfloat16()
            v = torch.randn(prefix, H, d, device=DEV).bfloat16()
            write_kv(k, v, pos, bt[b, pos // bs].long() * bs + pos % bs, cache, tb)
            sk[b], sv[b] = k[:tb.sinks], v[:tb.sinks]
        pl = torch.full((B,), prefix, dtype=torch.int32, device=DEV)
        cu = torch.arange(B + 1, dtype=torch.int32, device=DEV)
        # bf16 values (as a model gives them) held in float32: the output keeps q's dtype, and a bf16
        # output alone would be ~0.2% off the reference
        q = (torch.randn(B, Hq, d, device=DEV) * 0.1).bfloat16().float()
        kn = keys(torch.full((B,), prefix)).to(DEV).bfloat16().float()
        vn = torch.randn(B, H, d, device=DEV).bfloat16().float()
        sm = d ** -0.5
        ref = paged_attention_reference(q, kn, vn, cache, bt, pl, cu, sk, sv, codec, 0, tb, sm).double()
        row = {"offset_ratio": ratio, "measured_offset_ratio": tb.rope_offset_ratio, "prefix": prefix, "batch": B,
               "rope_split_default": tb.has_rope_mean and tb.rope_offset_ratio > ROPE_SPLIT_RATIO}
        # bf16: the default (RoPE-mean term split above ROPE_SPLIT_RATIO); bf16_split / bf16_single:
        # the term forced to three products / one; fp32: exact
        for mode, prec, split in (("bf16", "bf16", None), ("bf16_split", "bf16", True),
                                  ("bf16_single", "bf16", False), ("fp32", "fp32", None)):
            def run(prec=prec, split=split):
                return paged_attention(q, kn, vn, cache, bt, pl, cu, sk, sv, tb, sm, operand_precision=prec,
                                       rope_split=split, max_q_len=1, max_prefix=prefix)
            out = run().double()
            row[f"rel_err_{mode}"] = float((out - ref).norm() / ref.norm())
            row[f"decode_ms_{mode}"] = median_ms(run)
        rows.append(row)
        print(f"precision: offset {ratio:5.1f}x  " + "  ".join(
            f"{m} {row[f'rel_err_{m}']:.2e} ({row[f'decode_ms_{m}']:.3f} ms)"
            for m in ("bf16", "bf16_split", "bf16_single", "fp32")), flush=True)
    return {"rows": rows, "rope_split_ratio": ROPE_SPLIT_RATIO,
            "bf16_within_1pct": all(r["rel_err_bf16"] < 1e-2 for r in rows)}


def section_compile(layouts: int = 8, seed: int = 0) -> dict:
    """Cold-start cost: write_kv and a decode call on `layouts` random bit layouts of one shape
    (d 128, 2 KV heads, 12 query heads), first call (compile included) against a second call; and
    how many distinct tile-size tuples the layouts need (kernels.layout.group_args for write_kv, the
    attention kernel's own _group_args, which also splits groups, for decode). The random layouts
    also change the slot size, which Triton specializes on (divisibility by 16), so that count can be
    low and the first-call times are the measure; in an artifact every layer has the same slot size."""
    from oscar_cluster.kernels.attention import _group_args
    from oscar_cluster.kernels.layout import group_args

    g = torch.Generator().manual_seed(seed)
    d, H, Hq, bs, n = 128, 2, 12, 16, 256
    base = synthetic_codec(d, H, Hq, seed=7)
    rows, keys_w, keys_a = [], set(), set()
    for i in range(layouts):
        for kind in ("k", "v"):
            seg = torch.randint(0, 5, (d // 8,), generator=g).sort(descending=True).values
            base.layers[0][kind].bits = seg.repeat_interleave(8).to(torch.int64)
            base.layers[0][kind].__dict__.pop("segments", None)
        tb = layer_tables(base, 0, DEV)
        kg, vg = tb.groups
        tiles = [tuple(x for name, x in group_args(p, c).items() if name.endswith("P")) for p, c in (("K", kg), ("V", vg))]
        keys_w.update({("k", tiles[0]), ("v", tiles[1])})
        keys_a.add(tuple(x for name, x in _group_args(tb.groups).items() if name.endswith("P")))
        k = torch.randn(n, H, d, device=DEV).bfloat16()
        v = torch.randn(n, H, d, device=DEV).bfloat16()
        pos = torch.arange(n, device=DEV)
        cache = torch.zeros(n // bs + 1, bs, H, tb.slot_bytes, dtype=torch.uint8, device=DEV)
        bt = torch.arange(n // bs, device=DEV, dtype=torch.int32)[None]
        sk = torch.zeros(1, tb.sinks, H, d, dtype=torch.bfloat16, device=DEV)
        q = torch.randn(1, Hq, d, device=DEV).bfloat16()
        pl = torch.tensor([n], dtype=torch.int32, device=DEV)
        cu = torch.tensor([0, 1], dtype=torch.int32, device=DEV)
        row = {"layout": i, "k_groups": list(kg), "v_groups": list(vg)}
        for name, fn in (("write_kv", lambda: write_kv(k, v, pos, pos, cache, tb)),
                         ("decode", lambda: paged_attention(q, k[:1], v[:1], cache, bt, pl, cu, sk, sk, tb, d ** -0.5))):
            for call in ("first", "second"):
                torch.cuda.synchronize()
                t0 = time.perf_counter()
                fn()
                torch.cuda.synchronize()
                row[f"{name}_{call}_s"] = round(time.perf_counter() - t0, 4)
        rows.append(row)
        print(f"compile: layout {i} K {kg} V {vg}: write_kv first {row['write_kv_first_s']:.2f} s, "
              f"decode first {row['decode_first_s']:.2f} s", flush=True)
    return {"rows": rows, "layouts": layouts, "write_kv_variants": len(keys_w), "attention_variants": len(keys_a),
            "write_kv_first_calls_s": round(sum(r["write_kv_first_s"] for r in rows), 2),
            "decode_first_calls_s": round(sum(r["decode_first_s"] for r in rows), 2)}


def main() -> None:
    global TUNE_BLOCK_N, TUNE_WARPS, MODEL_STORAGES  # set once from the command line
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--quick", action="store_true", help="fewer contexts and batches")
    ap.add_argument("--sections", default="checks,copy,decode,write_kv,model,prefill",
                    help="comma-separated, in order; also: precision (offset keys, bf16 vs fp32 operands), "
                         "compile (first-call cost over random layouts), transform_fused (write_kv's host "
                         "transform as one Triton kernel vs prep + bmm; run it last), prefill_time (a "
                         "2,048-token chunk over 8K and 30K packed prefixes)")
    ap.add_argument("--contexts", type=lambda x: [int(v) for v in x.split(",")], default=None)
    ap.add_argument("--batches", type=lambda x: [int(v) for v in x.split(",")], default=None)
    ap.add_argument("--model-storages", default="bf16,oscar")
    ap.add_argument("--tune", default=None, help="block_n values x warps to try, e.g. 32,64x4,8")
    args = ap.parse_args()
    MODEL_STORAGES = tuple(args.model_storages.split(","))
    if args.tune:
        bn, w = args.tune.split("x")
        TUNE_BLOCK_N, TUNE_WARPS = tuple(map(int, bn.split(","))), tuple(map(int, w.split(",")))
    warnings.filterwarnings("ignore", category=UserWarning)  # SDPA explains each backend it skips
    if not torch.cuda.is_available():
        raise SystemExit("benchmarks/attention.py needs a CUDA GPU (the CPU tests cover correctness)")
    import transformers

    result = {"benchmark": "OSCAR Triton kernels vs bf16 attention on one GPU", **provenance(
        triton=triton.__version__, transformers=transformers.__version__)}
    result["host"].update(device="cuda", gpu=torch.cuda.get_device_name(), cuda=torch.version.cuda)
    for name in args.sections.split(","):
        t0 = time.time()
        try:
            # decode checks: the default tiles (64 keys x 2 warps for packed decode since 2026-11-30),
            # the earlier default (16 x 4), 32 x 2, and float16 level operands at the default tiles
            fn = {"checks": lambda: section_checks(variants=({}, {"block_n": 16, "num_warps": 4},
                                                             {"block_n": 32, "num_warps": 2},
                                                             {"operand_precision": "fp16"})),
                  "copy": section_copy, "precision": section_precision,
                  "compile": section_compile, "decode": lambda: section_decode(args.quick, args.contexts, args.batches),
                  "write_kv": section_write_kv, "transform_fused": section_transform_fused,
                  "prefill_time": section_prefill_time,
                  "model": lambda: section_model(args.quick),
                  # chunked-prefill checks last: the CUDA default (one query token per program, 16-key
                  # tiles), the same with decode's 64 x 2 tiling, and the multi-token query blocks
                  # attention-h200-7.json found wrong (64 and 128 rows), with 16 and 32 rows between
                  "prefill": lambda: section_checks(
                      modes=("prefill",), configs=((128, 8, 64, 16), (64, 3, 9, 32), (256, 2, 8, 64)),
                      variants=({}, {"block_n": 64, "num_warps": 2}, {"block_q": 2},
                                {"block_q": 4, "unverified_query_blocks": True},
                                {"block_q": 16, "unverified_query_blocks": True},
                                {"block_q": 16, "num_warps": 8, "unverified_query_blocks": True}))}[name]
            result[name] = fn()
        except Exception as e:
            traceback.print_exc()
            result[name] = {"error": f"{type(e).__name__}: {e}"}
        result.setdefault("section_seconds", {})[name] = round(time.time() - t0, 1)
        write_result(args.out, result)
        print(f"== {name} done in {time.time() - t0:.1f} s", flush=True)


if __name__ == "__main__":
    main()
