"""oscar-plan: GPUs, parallel shape and cost for serving a model at a context and batch, for bf16,
fp8, int4 and OSCAR INT2 KV caches side by side (DESIGN.md section 8).

    oscar-plan --model 70b --ctx 128k --batch 32
    oscar-plan --model path/to/config.json --ctx 32k --batch 8 --weights int4 --gpu h200 --explain
    oscar-plan --model 70b --ctx 128k --batch 32 --emit serve-config --out deploy/plan
"""

from __future__ import annotations

import argparse
import shlex
import sys
import traceback
from dataclasses import replace

from oscar_cluster.errors import ConfigError, OscarError

__all__ = ["main", "build_parser"]


class _Parser(argparse.ArgumentParser):
    """argparse that raises ConfigError (one `error:` line, exit 2) instead of printing usage."""

    def error(self, message: str):
        raise ConfigError(f"{message} (see oscar-plan --help)")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="oscar-plan", description=__doc__.split("\n\n")[0],
                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__.split("\n\n", 1)[1])
    p.add_argument("--model", required=True, help="preset name or alias (8b, 70b, 405b, qwen2.5-7b, 72b, qwen3-32b, "
                   "mistral-7b, mixtral, deepseek-v3, gpt-oss-120b) or a transformers config.json path")
    p.add_argument("--ctx", required=True, help="context length in tokens: 131072, 128k or 1m (k = 1024)")
    p.add_argument("--batch", type=int, default=1, help="concurrent sequences to hold (default 1)")
    p.add_argument("--gpu", default="h100", help="GPU from the catalog: h100, h200, a100, l40s, b200 (default h100)")
    p.add_argument("--gpus", type=int, default=None, help="GPUs available; a plan needing more does not fit")
    p.add_argument("--weights", choices=("bf16", "fp8", "int4"), default="bf16", help="weight format (default bf16)")
    p.add_argument("--gpu-mem-util", type=float, default=0.9, help="vLLM gpu_memory_utilization (default 0.9)")
    p.add_argument("--gpu-price", type=float, default=None, help="USD per GPU-hour, overriding the catalog")
    p.add_argument("--catalog", default=None, help="YAML GPU catalog whose entries replace or extend the built-in one")
    p.add_argument("--kv", default="bf16,fp8,int4,oscar-int2", help="KV formats to compare, comma separated")
    p.add_argument("--oscar-bits", type=float, default=None,
                   help="OSCAR bits per element (default: from the codec, or 2.25 if it is not importable)")
    p.add_argument("--format", choices=("table", "json", "csv"), default="table")
    p.add_argument("--explain", action="store_true", help="print every figure's arithmetic")
    p.add_argument("--emit", choices=("serve-config", "rayservice", "rayjob", "kustomize-overlay"), default=None,
                   help="write deployable files for the oscar-int2 plan into --out")
    p.add_argument("--out", default=None, help="directory for --emit")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def _request(args):
    from .presets import find_gpu, load_gpus, resolve_model
    from .specs import PlanRequest, parse_tokens

    gpu = find_gpu(args.gpu, args.catalog)
    if args.gpu_price is not None:
        if not args.gpu_price > 0:
            raise ConfigError(f"--gpu-price must be a positive USD amount per GPU-hour, got {args.gpu_price}")
        gpu = replace(gpu, usd_per_gpu_hour=args.gpu_price, price_source="--gpu-price", price_date="given")
    if args.emit and not args.out:
        raise ConfigError(f"--emit {args.emit} needs --out DIR")
    req = PlanRequest(model=resolve_model(args.model), gpu=gpu, ctx=parse_tokens(args.ctx), batch=args.batch,
                      weights=args.weights, gpu_mem_util=args.gpu_mem_util, max_gpus=args.gpus,
                      kv_formats=tuple(f.strip() for f in args.kv.split(",") if f.strip()),
                      oscar_bits=args.oscar_bits)
    return req, tuple(replace(g, usd_per_gpu_hour=args.gpu_price) if args.gpu_price and g.name == gpu.name else g
                      for g in load_gpus(args.catalog))


def run(args, argv: list[str]) -> int:
    from .emit import emit
    from .plan import plan
    from .render import explain, print_table, to_csv, to_json

    req, catalog = _request(args)
    p = plan(req, catalog)
    emitted = None
    if args.emit:  # first: a plan that cannot be emitted prints one error and nothing else
        emitted = emit(args.emit, p, args.out, command=" ".join(["oscar-plan", *map(shlex.quote, argv)]))
    if args.format == "json":
        print(to_json(p))
    elif args.format == "csv":
        print(to_csv(p), end="")
    else:
        print_table(p)
    if args.explain:
        print(("\n" if args.format == "table" else "") + explain(p), file=sys.stdout if args.format == "table" else sys.stderr)
    if emitted:
        path, how = emitted
        print(f"wrote {path} ({how})", file=sys.stderr)
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    debug = "--debug" in argv
    try:
        return run(build_parser().parse_args(argv), argv)
    except OscarError as e:
        if debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    except BrokenPipeError:  # output piped into `head` and the like
        sys.stderr.close()
        return 0


if __name__ == "__main__":
    sys.exit(main())
