"""`oscar-eval`: long-context quality of every codec on one model.

    oscar-eval --model smollm2-135m --artifact runs/demo/artifact --codecs bf16,int2,kivi2,oscar \\
        --tasks ruler --ctx 1k,2k --samples 5 --out runs/eval

Writes ruler.jsonl (one row per sample; a re-run resumes), summary.json, summary.csv and ruler.png.
--tasks niah adds the needle grid (depths 0-100% x --ctx, three distractor needles; niah_grid.png);
--tasks ppl (with --ppl-file) sliding-window perplexity (ppl.json, ppl.png: perplexity vs bits);
--tasks attn the per-layer attention-output error on --attn-tokens tokens of --attn-file (default:
the --ppl-file) (attn.json, attn.png). Calibrated codecs (oscar, oscar-paper) come from
--artifact [CODEC=]DIR, or are fitted once on Shakespeare and cached under OUT/artifacts/.
--merge DIR,DIR combines runs made in parallel (one per GPU) into --out. --batch N runs N samples
of one codec, task and length at once (left-padded); on CUDA `oscar` stores tokens with the Triton
write_kv kernel (--encoder codec: its PyTorch encode).
"""

from __future__ import annotations

import sys
import traceback
from pathlib import Path

from ..cli_util import OneLineParser
from ..corpora import expand_text_paths
from ..errors import ConfigError, OscarError
from .harness import EvalConfig, merge_runs, run_attention_error, run_perplexity, run_ruler
from .ruler import GRID_DEPTHS, TASKS

__all__ = ["main"]


def _sizes(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        p = part.strip().lower()
        try:
            out.append(int(float(p[:-1]) * 1024) if p.endswith("k") else int(p))
        except ValueError:
            raise ConfigError(f"--ctx: {part!r} is not a length (e.g. 4k,8k or 4096)") from None
    return out


def _artifacts(text: str | None) -> dict[str, str]:
    """`DIR` (the oscar artifact) or `CODEC=DIR,CODEC=DIR`."""
    if not text:
        return {}
    if "=" not in text:
        return {"oscar": text}
    out = {}
    for part in (x.strip() for x in text.split(",") if x.strip()):
        name, sep, path = part.partition("=")
        if not sep or not name or not path:
            raise ConfigError(f"--artifact: {part!r} is not CODEC=DIR (e.g. oscar=artifacts/qwen,oscar-paper=DIR)")
        out[name.strip()] = path.strip()
    return out


def _print_results(res: dict, ppl: dict | None, attn: dict | None, few_tasks: bool) -> None:
    for s in res["summary"]:
        if s["task"] == "niah_mean" or few_tasks:
            depth = "" if s.get("depth") is None else f" depth {s['depth']:.0%}"
            tasks = f", {s['tasks']} tasks" if s["task"] == "niah_mean" else ""
            print(f"{s['codec']:>11} {s['task']:>16} {s['length']:>7} {s['score']:6.1f}  ({s['samples']} samples{tasks}){depth}")
    if ppl:
        for name, r in ppl["codecs"].items():
            inc = "" if r["increase_vs_bf16"] is None else f"  ({100 * r['increase_vs_bf16']:+.2f}% vs bf16)"
            print(f"{name:>11} ppl {r['ppl']:.3f} over {r['tokens']} tokens, {r['bits_per_element']:.3f} bits{inc}")
    if attn:
        for name, r in attn["codecs"].items():
            print(f"{name:>11} attention-output error (geomean over layers) {r['geomean']:.4f}, "
                  f"{r['bits_per_element']:.3f} bits")


def main(argv: list[str] | None = None) -> int:
    p = OneLineParser(prog="oscar-eval", description=__doc__.splitlines()[0])
    p.add_argument("--model", help="model name (oscar-models list)")
    p.add_argument("--artifact", default=None, help="oscar artifact DIR, or CODEC=DIR[,CODEC=DIR]")
    p.add_argument("--codecs", default="bf16,oscar")
    p.add_argument("--tasks", default="ruler", help=f"ruler (all), niah, ppl, attn, or any of: {', '.join(TASKS)}")
    p.add_argument("--ctx", default="4k")
    p.add_argument("--samples", type=int, default=10)
    p.add_argument("--protocol", default="chunked", choices=("chunked", "bf16-prefill"))
    p.add_argument("--prefill-chunk", type=int, default=1024)
    p.add_argument("--out", required=True)
    p.add_argument("--device", default="cpu")
    p.add_argument("--ppl-file", default=None, help="text for --tasks ppl (e.g. ../shared/data/wikitext-2-raw/wiki.test.raw)")
    p.add_argument("--ppl-windows", type=int, default=8, help="windows scored for ppl (bounds the run time)")
    p.add_argument("--attn-file", default=None, help="text for --tasks attn (default: --ppl-file)")
    p.add_argument("--attn-tokens", type=int, default=2048)
    p.add_argument("--calib-tokens", type=int, default=16384, help="calibration tokens for codecs fitted here")
    p.add_argument("--calib-data", nargs="*", default=[], metavar="PATH",
                   help="their calibration text, files or folders (default: Shakespeare); e.g. runs/python-docs after "
                        "`make python-docs`, which retrieved far more needles in the ablations")
    p.add_argument("--batch", type=int, default=1, help="samples per batch (left-padded; same codec, task and length)")
    p.add_argument("--batch-tokens", type=int, default=262144, help="at most this many prompt tokens per batch")
    p.add_argument("--encoder", default="auto", choices=("auto", "kernels", "codec"),
                   help="how oscar stores tokens: the Triton write_kv (auto: on CUDA) or its PyTorch encode")
    p.add_argument("--merge", default=None, help="DIR,DIR: combine parallel runs into --out (no model needed)")
    p.add_argument("--quiet", action="store_true")
    p.add_argument("--debug", action="store_true")
    args = p.parse_args(argv)
    try:
        if args.merge:
            res = merge_runs([d.strip() for d in args.merge.split(",") if d.strip()], args.out)
            print(f"merged {res['rows']} samples; wrote {', '.join(res['files'])}", file=sys.stderr)
            return 0
        if not args.model:
            raise ConfigError("--model is required (e.g. --model smollm2-135m; oscar-models list)")
        tasks, want_ppl, want_grid, want_attn = [], False, False, False
        for t in (x.strip() for x in args.tasks.split(",") if x.strip()):
            if t == "ppl":
                want_ppl = True
            elif t == "niah":
                want_grid = True
            elif t == "attn":
                want_attn = True
            else:
                tasks += list(TASKS) if t == "ruler" else [t]
        if want_ppl and not args.ppl_file:
            raise ConfigError("--tasks ppl needs --ppl-file TEXT (wikitext-2: ../shared/data/wikitext-2-raw/wiki.test.raw)")
        attn_file = args.attn_file or args.ppl_file
        if want_attn and not attn_file:
            raise ConfigError("--tasks attn needs --attn-file TEXT (or --ppl-file)")
        cfg = EvalConfig(model=args.model, out=args.out, codecs=[c.strip() for c in args.codecs.split(",") if c.strip()],
                         tasks=tasks, lengths=_sizes(args.ctx), samples=args.samples,
                         protocol=args.protocol, prefill_chunk=args.prefill_chunk, artifacts=_artifacts(args.artifact),
                         device=args.device, grid_depths=list(GRID_DEPTHS) if want_grid else [],
                         calib_tokens=args.calib_tokens, calib_data=expand_text_paths(args.calib_data), batch=args.batch,
                         batch_tokens=args.batch_tokens,
                         encoder=args.encoder)
        for flag, f in (("--ppl-file", args.ppl_file if want_ppl else None), ("--attn-file", attn_file if want_attn else None)):
            if f is not None and not Path(f).is_file():
                raise ConfigError(f"{flag} {f}: no such file (wikitext-2: ../shared/data/wikitext-2-raw/wiki.test.raw)")
        if want_attn and args.attn_tokens < 64:
            raise ConfigError(f"--attn-tokens must be >= 64, got {args.attn_tokens}")
        from ..models import load

        model_tok = load(cfg.model, device=cfg.device)  # once for every task
        attn = (run_attention_error(cfg, attn_file, args.attn_tokens, model_and_tokenizer=model_tok,
                                    progress=not args.quiet) if want_attn else None)
        ppl = (run_perplexity(cfg, args.ppl_file, args.ppl_windows, model_and_tokenizer=model_tok,
                              progress=not args.quiet) if want_ppl else None)
        res = (run_ruler(cfg, progress=not args.quiet, model_and_tokenizer=model_tok) if tasks or want_grid
               else {"summary": [], "new_rows": 0, "files": []})
    except OscarError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    _print_results(res, ppl, attn, len(cfg.tasks) <= 3)
    extra = (["ppl.json", "ppl.png"] if ppl else []) + (["attn.json", "attn.png"] if attn else [])
    print(f"{res['new_rows']} new samples; wrote {', '.join(res['files'] + extra)}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
