"""Needle ablations of the `oscar` codec in the oscar-eval harness (CPU, the embedded model):
calibration length, bits per element and a bf16 recent window, each against bf16 on the same
prompts. The 8K run on the H200 lost its points on retrieval among many similar needles; this
measures which knobs move those tasks on a model the CPU can run.

    python benchmarks/needle_ablations.py --out benchmarks/results/needle-ablations-smollm2-cpu.json

Each variant's artifact is cached under --work; a re-run resumes (oscar-eval rows are resumable).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from _record import provenance, write_result  # noqa: E402

# name -> (calibration tokens, codec options)
VARIANTS = {
    "oscar, 2k calibration tokens": (2048, {}),
    "oscar, 8k calibration tokens": (8192, {}),
    "oscar, 32k calibration tokens": (32768, {}),
    "oscar, 32k tokens, 2.5 bits": (32768, {"mean_bits": 2.5}),
    "oscar, 32k tokens, 3 bits": (32768, {"mean_bits": 3.0}),
    "oscar, 32k tokens, recent 64 in bf16": (32768, {"recent": 64}),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--tasks", default="niah_single_1,niah_single_2,niah_multikey_2,niah_multivalue")
    ap.add_argument("--ctx", type=int, default=1024)
    ap.add_argument("--samples", type=int, default=20)
    ap.add_argument("--batch", type=int, default=20)
    ap.add_argument("--variants", default=",".join(str(i) for i in range(len(VARIANTS))),
                    help="indices into the variant list (default: all)")
    ap.add_argument("--work", default="runs/needle-ablations")
    ap.add_argument("--out", required=True)
    args = ap.parse_args()

    from oscar_cluster import codecs
    from oscar_cluster.artifact import load_artifact, save_artifact
    from oscar_cluster.calibrate import CalibrationConfig, calibrate_model, codec_options
    from oscar_cluster.corpora import read_texts, shakespeare_files
    from oscar_cluster.evaluation.harness import EvalConfig, read_rows, run_ruler
    from oscar_cluster.models import fingerprint, load

    model, tok = load(args.model)
    work = Path(args.work)
    tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    common = dict(model=args.model, tasks=tasks, lengths=[args.ctx], samples=args.samples, batch=args.batch,
                  prefill_chunk=256)
    t0 = time.perf_counter()
    run_ruler(EvalConfig(out=str(work / "bf16"), codecs=["bf16"], **common), model_and_tokenizer=(model, tok))
    base = {(r["task"], r["sample"]): r["score"] for r in read_rows(work / "bf16" / "ruler.jsonl")}
    stats_by_tokens: dict[int, list] = {}
    rows = []
    names = list(VARIANTS)
    for idx in (int(x) for x in args.variants.split(",")):
        name = names[idx]
        tokens, opts = VARIANTS[name]
        art = work / "artifacts" / f"v{idx}"
        if not (art / "oscar.yaml").exists():
            ccfg = CalibrationConfig(model=args.model, out=str(art), max_tokens=tokens)
            if tokens not in stats_by_tokens:
                _, _, stats_by_tokens[tokens] = calibrate_model(model, tok, read_texts(shakespeare_files()), ccfg,
                                                                progress=False)
            full, _ = codec_options(ccfg, getattr(model.config, "max_position_embeddings", None))
            codec = codecs.get("oscar", **{**full, **opts}).fit(stats_by_tokens[tokens])
            save_artifact(art, codec, fingerprint(model), {"tokens": tokens, "options": opts, "variant": name})
        codec = load_artifact(art, model=model)
        out = work / f"v{idx}"
        run_ruler(EvalConfig(out=str(out), codecs=["oscar"], artifacts={"oscar": str(art)}, **common),
                  model_and_tokenizer=(model, tok))
        got = {(r["task"], r["sample"]): r["score"] for r in read_rows(out / "ruler.jsonl")}
        keys = sorted(set(got) & set(base))
        per_task = {t: {"oscar": statistics.fmean(got[k] for k in keys if k[0] == t),
                        "bf16": statistics.fmean(base[k] for k in keys if k[0] == t)} for t in tasks}
        mean_o, mean_b = statistics.fmean(got[k] for k in keys), statistics.fmean(base[k] for k in keys)
        rows.append({"variant": name, "calibration_tokens": tokens, "options": opts,
                     "bits_per_element": round(codec.bits_per_element(args.ctx), 4), "samples": len(keys),
                     "per_task": per_task, "mean": mean_o, "bf16_mean": mean_b,
                     "ratio": mean_o / mean_b if mean_b else None})
        print(f"{name:40s} {rows[-1]['bits_per_element']:.3f} b  mean {mean_o:5.1f} vs bf16 {mean_b:5.1f}  "
              + "  ".join(f"{t} {v['oscar']:.0f}/{v['bf16']:.0f}" for t, v in per_task.items()), flush=True)
        _write(args, tasks, rows, t0)  # after every variant: a stopped run keeps what it measured


def _write(args, tasks, rows, t0) -> None:
    write_result(args.out, {"benchmark": "oscar needle ablations in oscar-eval (paired with bf16)", **provenance(),
                            "model": args.model, "ctx": args.ctx, "tasks": tasks, "samples": args.samples,
                            "protocol": "chunked, 256-token chunks aligned to the prompt end", "rows": rows,
                            "seconds": round(time.perf_counter() - t0, 1)})


if __name__ == "__main__":
    main()
