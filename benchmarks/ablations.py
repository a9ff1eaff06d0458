"""Ablations of the `oscar` codec on the embedded model (CPU), with baselines from the same run.

    python benchmarks/ablations.py --out benchmarks/results/ablations-smollm2-135m-cpu.json

Calibrates once (Shakespeare), captures held-out essays once, then measures the geomean relative
attention-output error (all tokens but 4 sinks quantized) for each variant. Writes JSON with the
host, versions, date and command.
"""

from __future__ import annotations

import argparse
import time

from _record import provenance, write_result  # benchmarks/ is on sys.path when run as a script


VARIANTS = {
    "oscar (default: target = model max)": {},
    "target = calibrated context": {"target_context": None},
    "no water-filling (2 bits everywhere)": {"waterfill": False},
    "no query whitening (PCA keys)": {"whiten": False},
    "no value transform": {"value_transform": False},
    "global key mean (no RoPE-aware mean)": {"key_mean": "global"},
    "uniform levels": {"levels": "uniform"},
    "no least-squares scale refit": {"scale_iters": 0},
    "one least-squares scale round (default 2)": {"scale_iters": 1},
    "unweighted value covariance": {"value_weighting": "none"},
    "unweighted key covariance": {"key_weighting": "none"},
    "ridge 0.01": {"ridge": 0.01},
    "segment width 16": {"segment_width": 16},
    "mean 2.5 bits": {"mean_bits": 2.5},
}
BASELINES = ("kivi2", "hadamard2", "oscar-paper")


def run(out: str, max_tokens: int, eval_tokens: int) -> dict:
    from oscar_cluster import codecs
    from oscar_cluster.attention_error import capture_layers, geomean, layer_output_error
    from oscar_cluster.calibration import collect_statistics, tokenize_corpus
    from oscar_cluster.corpora import essay_files, read_texts, shakespeare_files
    from oscar_cluster.models import load

    model, tok = load("smollm2-135m")
    target = int(model.config.max_position_embeddings)
    t0 = time.perf_counter()
    stats = collect_statistics(model, tok, read_texts(shakespeare_files()), max_tokens=max_tokens, progress=False)
    t_cal = time.perf_counter() - t0
    samples = capture_layers(model, tokenize_corpus(tok, read_texts(essay_files())[::-1], eval_tokens))
    rows = []
    for label, opts in [(b, None) for b in BASELINES] + list(VARIANTS.items()):
        if opts is None:
            c = codecs.get(label, sinks=4, recent=0).fit(stats)
        else:
            c = codecs.get("oscar", **{"target_context": target, **opts}).fit(stats)
        errs = [layer_output_error(c, s) for s in samples]
        rows.append({"variant": label, "codec": c.name, "options": c.options(),
                     "bits_per_element_32k": c.bits_per_element(32768),
                     "attn_output_error_geomean": geomean(errs), "per_layer": errs})
        print(f"{label:42s} {rows[-1]['bits_per_element_32k']:.3f} bpe  {rows[-1]['attn_output_error_geomean']:.4f}",
              flush=True)
    result = {
        "benchmark": "oscar ablations, geomean relative attention-output error (all but 4 sinks quantized)",
        "model": "smollm2-135m", "calibration_tokens": max_tokens, "calibration_seconds": round(t_cal, 1),
        "eval_tokens": eval_tokens, "target_context": target, "rows": rows,
        **provenance(),
    }
    return write_result(out, result)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="benchmarks/results/ablations-smollm2-135m-cpu.json")
    p.add_argument("--max-tokens", type=int, default=16384)
    p.add_argument("--eval-tokens", type=int, default=2048)
    a = p.parse_args()
    run(a.out, a.max_tokens, a.eval_tokens)
