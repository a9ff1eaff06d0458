"""OscarCache's two storage paths on a real model: the codec's PyTorch encode vs the Triton write_kv
(`KernelEncoder`, what oscar-eval uses on CUDA). Same prompt through both: per-layer difference of
the decoded caches, the last logits, agreement of greedy tokens, and the time of a decode step.

    python benchmarks/encoder_check.py --model qwen2.5-coder-1.5b --artifact DIR --device cuda --out enc.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch

from _record import provenance, write_result  # benchmarks/_record.py


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--artifact", required=True)
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--tokens", type=int, default=4096)
    ap.add_argument("--chunk", type=int, default=1024)
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--steps", type=int, default=16)
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from oscar_cluster.artifact import load_artifact
    from oscar_cluster.cache import OscarCache
    from oscar_cluster.corpora import read_texts, shakespeare_files
    from oscar_cluster.generation import greedy_generate_batch
    from oscar_cluster.kernels import KernelEncoder
    from oscar_cluster.models import load

    model, tok = load(args.model, device=args.device)
    codec = load_artifact(args.artifact, model=model).to(args.device)
    ids = tok(" ".join(read_texts(shakespeare_files()))[: 8 * args.tokens * args.batch])["input_ids"]
    prompts = [torch.tensor(ids[b * args.tokens + 7 * b: (b + 1) * args.tokens]) for b in range(args.batch)]
    res = {"benchmark": "OscarCache storage: codec PyTorch encode vs Triton write_kv (KernelEncoder)",
           **provenance(), "model": args.model, "artifact": args.artifact,
           "prompt_tokens": [int(p.numel()) for p in prompts], "chunk": args.chunk, "steps": args.steps}
    caches, gens, step_ms = {}, {}, {}
    for name, enc in (("codec", None), ("kernels", KernelEncoder(codec, args.device))):
        times = []

        def stop(b, out, times=times):
            if b == 0:
                torch.cuda.synchronize() if args.device == "cuda" else None
                times.append(time.perf_counter())
            return False

        cache = OscarCache(codec, encoder=enc)
        gens[name], _ = greedy_generate_batch(model, prompts, cache, args.steps, prefill_chunk=args.chunk, stop=stop)
        caches[name] = cache
        step_ms[name] = 1000 * statistics.median([b - a for a, b in zip(times, times[1:])])
    layers = []
    for lc, lk in zip(caches["codec"].layers, caches["kernels"].layers):
        lc.settle(), lk.settle()
        n = lc.n_seen
        a, b = lc.view_k[:, :, :n].float(), lk.view_k[:, :, :n].float()
        av, bv = lc.view_v[:, :, :n].float(), lk.view_v[:, :, :n].float()
        layers.append({"k_rel_diff": float((a - b).norm() / a.norm()), "v_rel_diff": float((av - bv).norm() / av.norm()),
                       "k_max_abs": float((a - b).abs().max()), "v_max_abs": float((av - bv).abs().max())})
    agree = [sum(x == y for x, y in zip(gc, gk)) / max(1, len(gc)) for gc, gk in zip(gens["codec"], gens["kernels"])]
    res.update(layers=layers, worst_k_rel_diff=max(x["k_rel_diff"] for x in layers),
               worst_v_rel_diff=max(x["v_rel_diff"] for x in layers), greedy_token_agreement=agree,
               decode_step_ms=step_ms, decode_step_speedup=step_ms["codec"] / step_ms["kernels"],
               stored_bytes={k: c.stored_bytes() for k, c in caches.items()})
    if args.device == "cuda":
        import triton

        res["host"].update(device="cuda", gpu=torch.cuda.get_device_name(), triton=triton.__version__)
    write_result(args.out, res)
    print(json.dumps({k: res[k] for k in ("worst_k_rel_diff", "worst_v_rel_diff", "greedy_token_agreement",
                                          "decode_step_ms", "decode_step_speedup")}, indent=1))


if __name__ == "__main__":
    main()
