"""The RULER part of `oscar-eval`: every codec on the same model, prompts and seeds; per-sample JSONL
(resumable), per codec/task/length summaries (JSON, CSV) and a score-vs-length plot.

Protocols: "chunked" (serving-faithful: the prompt is prefilled in chunks, each attending to the
earlier chunks through the codec) or "bf16-prefill" (the prompt in bf16, the codec from the first
decode step). Sample i of a task and length uses seed i for every codec.
"""

from __future__ import annotations

import csv
import io
import json
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

from .. import codecs
from ..errors import ConfigError
from .ruler import NIAH_TASKS, TASKS, make_grid_sample, make_sample, string_match_all

__all__ = ["EvalConfig", "run_ruler", "run_perplexity", "read_rows", "summarize"]

PROTOCOLS = {"chunked": "chunked", "bf16-prefill": "bf16"}


@dataclass
class EvalConfig:
    model: str
    out: str
    codecs: list[str] = field(default_factory=lambda: ["bf16", "oscar"])
    tasks: list[str] = field(default_factory=lambda: list(TASKS))
    lengths: list[int] = field(default_factory=lambda: [4096])
    samples: int = 10
    protocol: str = "chunked"
    prefill_chunk: int = 1024
    artifact: str | None = None
    device: str = "cpu"
    grid_depths: list[float] = field(default_factory=list)  # needle grid (task "niah_grid"); empty: none

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in TASKS and t != "niah_grid"]
        if unknown:
            raise ConfigError(f"--tasks: unknown RULER task(s) {unknown}; choose from {', '.join(TASKS)}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol must be chunked or bf16-prefill, got {self.protocol!r}")
        if self.samples < 1 or any(n < 256 for n in self.lengths) or not (256 <= self.prefill_chunk):
            raise ConfigError("--samples must be >= 1, --ctx lengths and --prefill-chunk >= 256 tokens")
        for c in self.codecs:
            if c not in codecs.names():
                raise ConfigError(f"--codecs: unknown codec {c!r}; choose from {', '.join(codecs.names())}")


def _row_id(codec: str, task: str, length: int, i: int, depth: float | None = None) -> str:
    return f"{codec}|{task}|{length}|{i}" + ("" if depth is None else f"|{depth:g}")


def read_rows(path: Path) -> list[dict]:
    """Rows of a JSONL file; a torn last line (killed run) is ignored."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            rows.append(json.loads(line))
        except ValueError:
            continue
    return rows


def _codecs(cfg: EvalConfig, model) -> dict[str, codecs.Codec]:
    from ..models import fingerprint

    fp = fingerprint(model)
    out = {}
    for name in cfg.codecs:
        if name == "oscar":
            if not cfg.artifact:
                raise ConfigError("--codecs oscar needs --artifact DIR (oscar-calibrate on text disjoint from the eval)")
            from ..artifact import load_artifact

            out[name] = load_artifact(cfg.artifact, model=model)
            continue
        c = codecs.get(name, head_dim=fp["head_dim"])
        if not c.fitted:
            raise ConfigError(f"--codecs {name}: needs calibration statistics, which oscar-eval does not fit yet; "
                              "drop it or use oscar with an artifact")
        out[name] = c
    return out


def summarize(rows: list[dict], bits: dict[str, dict[int, float]]) -> list[dict]:
    """Mean score per (codec, task, length), plus the 8-needle mean ("niah_mean") per codec and length."""
    groups: dict[tuple, list[float]] = {}
    for r in rows:
        depth = r.get("depth")
        groups.setdefault((r["codec"], r["task"], r["length"], -1.0 if depth is None else depth), []).append(r["score"])
        if r["task"] in NIAH_TASKS:
            groups.setdefault((r["codec"], "niah_mean", r["length"], -1.0), []).append(r["score"])
    return [{"codec": c, "task": t, "length": n, "depth": None if d < 0 else d, "samples": len(v),
             "score": sum(v) / len(v), "bits_per_element": bits.get(c, {}).get(n)}
            for (c, t, n, d), v in sorted(groups.items())]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _plot(summary: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({s["task"] for s in summary})
    cols = min(4, len(tasks))
    rows_n = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.6 * rows_n), squeeze=False)
    for ax, task in zip(axes.flat, tasks):
        for codec in sorted({s["codec"] for s in summary}):
            pts = sorted((s["length"], s["score"]) for s in summary if s["task"] == task and s["codec"] == codec)
            ax.plot([p[0] // 1024 or p[0] / 1024 for p in pts], [p[1] for p in pts], "o-", label=codec)
        ax.set_title(task, fontsize=9)
        ax.set_ylim(-5, 105)
        ax.set_xlabel("context (K tokens)", fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def run_ruler(cfg: EvalConfig, progress: bool = True, model_and_tokenizer=None) -> dict:
    """Run (or resume) the RULER grid; returns {"new_rows", "summary", "files"}."""
    import torch
    from tqdm import tqdm

    from ..cache import OscarCache
    from ..generation import greedy_generate
    from ..models import load

    model, tok = model_and_tokenizer or load(cfg.model, device=cfg.device)
    codec_objs = _codecs(cfg, model)
    out = Path(cfg.out)  # created only once the model and codecs are known good
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "ruler.jsonl"
    done = {r["id"] for r in read_rows(rows_path)}
    count = (lambda text: len(tok(text, add_special_tokens=False)["input_ids"]))
    todo = [(c, t, n, i, None) for n in cfg.lengths for t in cfg.tasks if t != "niah_grid"
            for i in range(cfg.samples) for c in cfg.codecs if _row_id(c, t, n, i) not in done]
    todo += [(c, "niah_grid", n, i, dp) for n in cfg.lengths for dp in cfg.grid_depths for i in range(cfg.samples)
             for c in cfg.codecs if _row_id(c, "niah_grid", n, i, dp) not in done]
    new = 0
    samples: dict[tuple, object] = {}
    with open(rows_path, "a", encoding="utf-8") as f:
        for c, t, n, i, dp in tqdm(todo, desc="oscar-eval ruler", disable=not progress, unit="sample"):
            if (t, n, i, dp) not in samples:
                samples[(t, n, i, dp)] = (make_grid_sample(count, n, dp, seed=i) if t == "niah_grid"
                                          else make_sample(t, count, n, seed=i))
            s = samples[(t, n, i, dp)]
            ids = torch.tensor(tok(s.prompt, add_special_tokens=True)["input_ids"])
            t0 = time.perf_counter()
            cache = OscarCache(codec_objs[c], prefill=PROTOCOLS[cfg.protocol])
            gen = greedy_generate(model, ids, cache, s.max_new_tokens, prefill_chunk=cfg.prefill_chunk,
                                  eos_token_id=tok.eos_token_id)
            pred = tok.decode(gen, skip_special_tokens=True)
            row = {"id": _row_id(c, t, n, i, dp), "codec": c, "task": t, "length": n, "sample": i, "depth": dp,
                   "score": string_match_all(pred, s.references), "prediction": pred, "references": s.references,
                   "prompt_tokens": int(ids.numel()), "seconds": round(time.perf_counter() - t0, 3),
                   "protocol": cfg.protocol}
            f.write(json.dumps(row) + "\n")  # one write per row: a kill leaves at most a torn last line
            f.flush()
            new += 1
    wanted = set(cfg.tasks) | ({"niah_grid"} if cfg.grid_depths else set())
    rows = [r for r in read_rows(rows_path) if r["codec"] in cfg.codecs and r["task"] in wanted
            and r["length"] in cfg.lengths and r["sample"] < cfg.samples
            and (r["task"] != "niah_grid" or r.get("depth") in cfg.grid_depths)]
    bits = {c: {n: codec_objs[c].bits_per_element(n) for n in cfg.lengths} for c in cfg.codecs}
    summary = summarize(rows, bits)
    meta = {"config": asdict(cfg), "protocol": cfg.protocol, "rows": len(rows), "summary": summary}
    _write_atomic(out / "summary.json", json.dumps(meta, indent=2) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["codec", "task", "length", "depth", "samples", "score", "bits_per_element"])
    w.writeheader()
    w.writerows(summary)
    _write_atomic(out / "summary.csv", buf.getvalue())
    files = [str(rows_path), str(out / "summary.json"), str(out / "summary.csv")]
    if any(x["task"] != "niah_grid" for x in summary):
        _plot([x for x in summary if x["task"] != "niah_grid"], out / "ruler.png")
        files.append(str(out / "ruler.png"))
    if cfg.grid_depths:
        _heatmaps([x for x in summary if x["task"] == "niah_grid"], out / "niah_grid.png")
        files.append(str(out / "niah_grid.png"))
    return {"new_rows": new, "summary": summary, "files": files}


def _heatmaps(summary: list[dict], path: Path) -> None:
    """One depth x length heatmap of the needle-grid score per codec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    codecs_ = sorted({s["codec"] for s in summary})
    lengths = sorted({s["length"] for s in summary})
    depths = sorted({s["depth"] for s in summary})
    fig, axes = plt.subplots(1, len(codecs_), figsize=(2.2 + 1.1 * len(lengths) * len(codecs_), 3.2), squeeze=False)
    for ax, c in zip(axes[0], codecs_):
        grid = [[next((s["score"] for s in summary if s["codec"] == c and s["length"] == n and s["depth"] == d),
                      float("nan")) for n in lengths] for d in depths]
        im = ax.imshow(grid, vmin=0, vmax=100, cmap="RdYlGn", aspect="auto")
        ax.set_xticks(range(len(lengths)), [f"{n // 1024}K" if n >= 1024 else str(n) for n in lengths], fontsize=7)
        ax.set_yticks(range(len(depths)), [f"{d:.0%}" for d in depths], fontsize=7)
        ax.set_title(c, fontsize=9)
        ax.set_xlabel("context", fontsize=8)
    axes[0][0].set_ylabel("needle depth", fontsize=8)
    fig.colorbar(im, ax=axes[0].tolist(), shrink=0.8)
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def run_perplexity(cfg: EvalConfig, text_file: str, max_windows: int = 8, model_and_tokenizer=None) -> dict:
    """wikitext-style perplexity of every codec (window = the largest --ctx, stride half of it);
    writes ppl.json. The same tokens and windows for every codec."""
    from ..models import load
    from .perplexity import perplexity

    path = Path(text_file)
    if not path.is_file():
        raise ConfigError(f"--ppl-file {path}: no such file (wikitext-2: ../shared/data/wikitext-2-raw/wiki.test.raw)")
    model, tok = model_and_tokenizer or load(cfg.model, device=cfg.device)
    codec_objs = _codecs(cfg, model)
    import torch

    ids = torch.tensor(tok(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"])
    window = max(cfg.lengths)
    res = {}
    for name, codec in codec_objs.items():
        r = perplexity(model, ids, codec, window=window, stride=window // 2, chunk=cfg.prefill_chunk,
                       prefill=PROTOCOLS[cfg.protocol], max_windows=max_windows)
        res[name] = {**r, "bits_per_element": codec.bits_per_element(window)}
    base = res.get("bf16", {}).get("ppl")
    for r in res.values():
        r["increase_vs_bf16"] = (r["ppl"] / base - 1) if base else None
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"file": str(path), "window": window, "stride": window // 2, "max_windows": max_windows,
           "protocol": cfg.protocol, "codecs": res}
    _write_atomic(out / "ppl.json", json.dumps(doc, indent=2) + "\n")
    return doc
