"""Plot a kernel benchmark's decode sweep: OSCAR and the bf16 baselines, time and speedup vs context.

    python benchmarks/plot_attention.py benchmarks/results/attention-h200.json benchmarks/results/attention-h200.png
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def plot(result: dict, out: Path) -> None:
    rows = result["decode"]["rows"]
    batches = sorted({r["batch"] for r in rows})
    fig, (ax_t, ax_s) = plt.subplots(1, 2, figsize=(12, 4.5))
    for b in batches:
        rs = sorted((r for r in rows if r["batch"] == b), key=lambda r: r["context"])
        ctx = [r["context"] // 1024 for r in rs]
        line, = ax_t.plot(ctx, [r["oscar_ms"] for r in rs], "o-", label=f"OSCAR, batch {b}")
        ax_t.plot(ctx, [r["best_bf16_ms"] for r in rs], "s--", color=line.get_color(), alpha=0.6,
                  label=f"best bf16, batch {b}")
        ax_s.plot(ctx, [r["speedup_vs_best_bf16"] for r in rs], "o-", label=f"batch {b}")
    for ax in (ax_t, ax_s):
        ax.set_xscale("log", base=2)
        ax.set_xlabel("context (K tokens)")
        ax.grid(True, alpha=0.3)
    ax_t.set_yscale("log")
    ax_t.set_ylabel("decode attention, one layer (ms, median)")
    ax_t.legend(fontsize=7, ncol=2)
    ax_s.axhline(1.0, color="k", lw=0.8)
    ax_s.axhline(5.0, color="g", lw=0.8, ls=":", label="goal 5x")
    ax_s.set_ylabel("speedup of OSCAR over the best bf16")
    ax_s.legend(fontsize=8)
    lay = result["decode"]["layer"]
    fig.suptitle(f"{result['host'].get('gpu', '')}: decode attention, {lay['q_heads']} q / {lay['kv_heads']} KV heads, "
                 f"d {lay['head_dim']} (date {result['date'][:10]})", fontsize=10)
    fig.tight_layout()
    tmp = out.with_name(f".{out.name}.tmp.png")
    fig.savefig(tmp, dpi=110)
    tmp.replace(out)


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    plot(json.loads(Path(sys.argv[1]).read_text()), Path(sys.argv[2]))
