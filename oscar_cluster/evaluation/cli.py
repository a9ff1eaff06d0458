"""`oscar-eval`: long-context quality of every codec on one model (RULER tasks so far).

    oscar-eval --model smollm2-135m --artifact runs/demo/artifact --codecs bf16,int2,kivi2,oscar \\
        --tasks ruler --ctx 1k,2k --samples 5 --out runs/eval

Writes ruler.jsonl (one row per sample; a re-run resumes), summary.json, summary.csv and ruler.png.
--tasks ppl (with --ppl-file) adds sliding-window perplexity (ppl.json). The needle grid and the
per-layer attention error are not built yet (the eval issue).
"""

from __future__ import annotations

import sys
import traceback

from ..cli_util import OneLineParser
from ..errors import ConfigError, OscarError
from .harness import EvalConfig, run_perplexity, run_ruler
from .ruler import TASKS

__all__ = ["main"]

NOT_YET = ("niah", "attn")


def _sizes(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        p = part.strip().lower()
        try:
            out.append(int(float(p[:-1]) * 1024) if p.endswith("k") else int(p))
        except ValueError:
            raise ConfigError(f"--ctx: {part!r} is not a length (e.g. 4k,8k or 4096)") from None
    return out


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="oscar-eval", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True)
    p.add_argument("--artifact", default=None)
    p.add_argument("--codecs", default="bf16,oscar")
    p.add_argument("--tasks", default="ruler", help=f"ruler (all), or any of: {', '.join(TASKS)}")
    p.add_argument("--ctx", default="4k")
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--protocol", default="chunked", choices=("chunked", "bf16-prefill"))
    p.add_argument("--prefill-chunk", type=int, default=1024)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--ppl-file", default=None, help="text for --tasks ppl (e.g. ../shared/data/wikitext-2-raw/wiki.test.raw)")
    p.add_argument("--ppl-windows", type=int, default=8, help="windows scored for ppl (bounds the run time)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    try:
        tasks, want_ppl = [], False
        for t in (x.strip() for x in args.tasks.split(",") if x.strip()):
            if t in NOT_YET:
                raise ConfigError(f"--tasks {t}: not built yet (the eval issue); use ruler, ppl or RULER task names")
            if t == "ppl":
                want_ppl = True
                continue
            tasks += list(TASKS) if t == "ruler" else [t]
        if want_ppl and not args.ppl_file:
            raise ConfigError("--tasks ppl needs --ppl-file TEXT (wikitext-2: ../shared/data/wikitext-2-raw/wiki.test.raw)")
        cfg = EvalConfig(model=args.model, out=args.out, codecs=[c.strip() for c in args.codecs.split(",") if c.strip()],
                         tasks=tasks or ["niah_single_1"], lengths=_sizes(args.ctx), samples=args.samples,
                         protocol=args.protocol, prefill_chunk=args.prefill_chunk, artifact=args.artifact,
                         device=args.device)
        ppl = run_perplexity(cfg, args.ppl_file, args.ppl_windows) if want_ppl else None
        res = run_ruler(cfg, progress=not args.quiet) if tasks else {"summary": [], "new_rows": 0, "files": []}
    except OscarError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    for s in res["summary"]:
        if s["task"] == "niah_mean" or len(cfg.tasks) <= 3:
            print(f"{s['codec']:>10} {s['task']:>16} {s['length']:>7} {s['score']:6.1f}  ({s['samples']} samples)")
    if ppl:
        for name, r in ppl["codecs"].items():
            inc = "" if r["increase_vs_bf16"] is None else f"  ({100 * r['increase_vs_bf16']:+.2f}% vs bf16)"
            print(f"{name:>10} ppl {r['ppl']:.3f} over {r['tokens']} tokens, {r['bits_per_element']:.3f} bits{inc}")
    print(f"{res['new_rows']} new samples; wrote {', '.join(res['files'] + (['ppl.json'] if ppl else []))}",
          file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
