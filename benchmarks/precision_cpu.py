"""attention.py's precision section on the CPU interpreter: the kernel's error against the float64
reference on keys with a constant offset, with bf16 operands emulated (rounded, then an exact
product) and with float32 operands. No timing (the interpreter's times mean nothing).

    TRITON_INTERPRET=1 python benchmarks/precision_cpu.py --out benchmarks/results/attention-precision-cpu.json
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", required=True)
    ap.add_argument("--prefix", type=int, default=64)
    ap.add_argument("--ratios", type=float, nargs="+", default=[0.0, 1.0, 2.0, 4.0, 9.3, 20.0, 58.0])
    args = ap.parse_args()
    if os.environ.get("TRITON_INTERPRET") != "1":
        raise SystemExit("run with TRITON_INTERPRET=1 (the CPU interpreter); on a GPU use attention.py --sections precision")
    import attention as bench
    from _record import provenance, write_result

    bench.DEV = torch.device("cpu")
    bench.median_ms = lambda fn, graph=True: float("nan")  # not timed here
    res = bench.section_precision(prefix=args.prefix, ratios=tuple(args.ratios))
    for r in res["rows"]:
        for k in [k for k in r if k.startswith("decode_ms_")]:
            r.pop(k)
    write_result(args.out, {"benchmark": "paged_attention precision on offset keys (CPU interpreter, bf16 emulated)",
                            **provenance(triton=__import__("triton").__version__), **res})


if __name__ == "__main__":
    main()
