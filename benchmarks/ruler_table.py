"""Paired RULER table from an oscar-eval ruler.jsonl: per task and length, each codec against bf16 on
the samples both ran (same prompts), the 8-needle mean and its ratio to bf16 with a 95% bootstrap
interval (samples resampled in pairs, within each task), and the median seconds per sample. Writes
JSON (and prints a markdown table).

    python benchmarks/ruler_table.py benchmarks/results/quality/ruler.jsonl --out benchmarks/results/quality/paired.json

Ablations: `--variant NAME=ROWS` adds another run's rows (a needle_ablations.py variant's
ruler.jsonl) as codec NAME; `--same-samples` then pairs every codec on the samples all of them ran
(so a partial variant is compared with the full run on its own samples), and `--lengths`/`--tasks`
keep part of the rows.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from oscar_cluster.evaluation.harness import read_rows  # noqa: E402
from oscar_cluster.evaluation.ruler import NIAH_TASKS  # noqa: E402

from _record import write_result  # noqa: E402


def paired(rows: list[dict], base: str = "bf16", same_samples: bool = False) -> list[dict]:
    """Per codec, length and task: mean score against `base` on the samples both ran (with
    `same_samples`, on the samples every codec ran), then the mean over the needle tasks."""
    by = defaultdict(dict)
    for r in rows:
        by[(r["task"], r["length"], r["sample"], r.get("depth"))][r["codec"]] = r
    out = []
    everyone = {r["codec"] for r in rows}
    codecs = sorted(everyone - {base})
    for c in codecs:
        for n in sorted({r["length"] for r in rows}):
            keys = [k for k, v in by.items() if k[1] == n and c in v and base in v
                    and (not same_samples or everyone <= set(v))]
            for task in sorted({k[0] for k in keys}) + ["niah_mean"]:
                ks = [k for k in keys if (k[0] in NIAH_TASKS if task == "niah_mean" else k[0] == task)]
                if not ks:
                    continue
                sc = statistics.fmean(by[k][c]["score"] for k in ks)
                sb = statistics.fmean(by[k][base]["score"] for k in ks)
                ci = ratio_interval([(k[0], by[k][c]["score"], by[k][base]["score"]) for k in ks])
                out.append({"codec": c, "task": task, "length": n, "samples": len(ks), "score": round(sc, 2),
                            "bf16": round(sb, 2), "ratio": round(sc / sb, 4) if sb else None,
                            "ratio_ci95": ci, "tasks": len({k[0] for k in ks})})
    return out


def ratio_interval(pairs: list[tuple[str, float, float]], iters: int = 2000, seed: int = 0) -> list[float] | None:
    """95% percentile-bootstrap interval of sum(codec) / sum(base) over (task, codec score, base score)
    pairs: each draw resamples the pairs of every task with replacement, keeping the task's sample count
    (a needle mean stays a mean over the same task mix). Draws whose base sum is 0 are dropped; None
    when every draw's is. Seeded: the same rows give the same interval."""
    import numpy as np

    rng = np.random.default_rng(seed)
    num = np.zeros(iters)
    den = np.zeros(iters)
    for task in sorted({t for t, _, _ in pairs}):
        sc = np.array([a for t, a, _ in pairs if t == task], dtype=np.float64)
        sb = np.array([b for t, _, b in pairs if t == task], dtype=np.float64)
        idx = rng.integers(0, len(sc), size=(iters, len(sc)))
        num += sc[idx].sum(axis=1)
        den += sb[idx].sum(axis=1)
    ok = den > 0
    if not ok.any():
        return None
    lo, hi = np.percentile(num[ok] / den[ok], [2.5, 97.5])
    return [round(float(lo), 4), round(float(hi), 4)]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("rows")
    ap.add_argument("--out", required=True)
    ap.add_argument("--variant", action="append", default=[], metavar="NAME=ROWS",
                    help="another ruler.jsonl whose rows join the table as codec NAME (repeatable)")
    ap.add_argument("--same-samples", action="store_true", help="pair every codec on the samples all of them ran")
    ap.add_argument("--lengths", default=None, help="keep these lengths (tokens, comma-separated)")
    ap.add_argument("--tasks", default=None, help="keep these tasks (comma-separated)")
    args = ap.parse_args()
    rows = read_rows(Path(args.rows))
    for spec in args.variant:
        name, sep, path = spec.partition("=")
        if not sep or not name or not Path(path).is_file():
            ap.error(f"--variant wants NAME=ROWS with ROWS an existing ruler.jsonl, got {spec!r}")
        rows += [{**r, "codec": name} for r in read_rows(Path(path))]
    if args.lengths:
        keep = {int(x) for x in args.lengths.split(",")}
        rows = [r for r in rows if r["length"] in keep]
    if args.tasks:
        keep = set(args.tasks.split(","))
        rows = [r for r in rows if r["task"] in keep]
    table = paired(rows, same_samples=args.same_samples)
    speed = {f"{c}@{n}": {"median_seconds_per_sample": statistics.median(s), "rows": len(s)}
             for c in sorted({r["codec"] for r in rows}) for n in sorted({r["length"] for r in rows})
             if (s := [r["seconds"] for r in rows if r["codec"] == c and r["length"] == n])}
    write_result(args.out, {"source": args.rows, "rows": len(rows), "paired_vs_bf16": table, "speed": speed,
                            "command": "python benchmarks/ruler_table.py " + " ".join(sys.argv[1:])})
    print("| codec | length | task | samples | codec score | bf16 score | ratio | 95% interval |\n"
          "|---|---|---|---|---|---|---|---|")
    for t in table:
        ci = "-" if t["ratio_ci95"] is None else f"{t['ratio_ci95'][0]:.3f}-{t['ratio_ci95'][1]:.3f}"
        print(f"| {t['codec']} | {t['length'] // 1024}K | {t['task']} | {t['samples']} | {t['score']:.1f} | "
              f"{t['bf16']:.1f} | {t['ratio'] if t['ratio'] is not None else '-'} | {ci} |")


if __name__ == "__main__":
    main()
