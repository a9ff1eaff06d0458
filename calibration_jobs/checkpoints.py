"""Per-layer checkpoints of merged calibration statistics, so a killed job resumes (DESIGN.md section 5).

Format, in `<out>/.checkpoints/`:
    run.json               {"format_version", "run": {...}, "run_sha256"}: the run's identity (model
                           name and fingerprint, data sha256, every option that changes the numbers)
    layer_XXX.safetensors  one layer's merged `LayerStatistics` sums (float64), metadata: layer,
                           head counts, has_pre_rope, max_position and the run_sha256
Every file is written to a temporary name and renamed into place, so a kill leaves either the
previous state or the complete file. A run resumes after the longest prefix of layers 0, 1, ...
whose files load and carry its run_sha256; different arguments are refused by name.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import fields
from pathlib import Path

import torch

from oscar_cluster.calibration import LayerStatistics
from oscar_cluster.errors import ConfigError

__all__ = ["CheckpointStore", "CheckpointMismatchError", "CHECKPOINT_DIR", "FORMAT_VERSION"]

CHECKPOINT_DIR = ".checkpoints"
FORMAT_VERSION = 1
_RUN = "run.json"
_META_FIELDS = ("layer", "num_q_heads", "num_kv_heads", "head_dim", "has_pre_rope", "max_position")


class CheckpointMismatchError(ConfigError):
    """The checkpoints in an output directory belong to a run with other arguments."""


def _run_sha256(run: dict) -> str:
    return hashlib.sha256(json.dumps(run, sort_keys=True).encode()).hexdigest()


def _write_atomic(path: Path, write) -> None:
    """write(tmp_path) then rename to `path` (same directory)."""
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        write(name)
        os.replace(name, path)
    except BaseException:
        Path(name).unlink(missing_ok=True)
        raise


class CheckpointStore:
    """Checkpoints of one run in `out_dir/.checkpoints`; `run` is a JSON-able dict of its identity."""

    def __init__(self, out_dir: str | os.PathLike, run: dict):
        self.dir = Path(out_dir) / CHECKPOINT_DIR
        self.run = json.loads(json.dumps(run, sort_keys=True))  # plain JSON values, as read back
        self.run_sha256 = _run_sha256(self.run)

    def exists(self) -> bool:
        return (self.dir / _RUN).is_file()

    def check(self) -> None:
        """Raise CheckpointMismatchError naming each differing argument if the directory holds
        checkpoints of another run (or unreadable ones)."""
        if not self.exists():
            return
        try:
            saved = json.loads((self.dir / _RUN).read_text())
            old = saved["run"]
        except (OSError, ValueError, KeyError, TypeError):
            raise CheckpointMismatchError(f"{self.dir / _RUN} is unreadable; pass --restart to discard the "
                                          "checkpoints in it") from None
        if saved.get("format_version") != FORMAT_VERSION or _run_sha256(old) != self.run_sha256:
            diffs = [f"{k}: checkpoint {old.get(k)!r} vs now {self.run.get(k)!r}"
                     for k in sorted(set(old) | set(self.run)) if old.get(k) != self.run.get(k)]
            raise CheckpointMismatchError(
                f"{self.dir} holds checkpoints of a run with other arguments ({'; '.join(diffs) or 'format'}); "
                "re-run with the original arguments to resume it, pass --restart to discard it, or choose "
                "another --out")

    def start(self) -> None:
        """Create the directory and run.json (after `check`)."""
        self.dir.mkdir(parents=True, exist_ok=True)
        if not self.exists():
            body = json.dumps({"format_version": FORMAT_VERSION, "run": self.run, "run_sha256": self.run_sha256},
                              indent=2, sort_keys=True)
            _write_atomic(self.dir / _RUN, lambda p: Path(p).write_text(body + "\n"))

    def path(self, layer: int) -> Path:
        return self.dir / f"layer_{layer:03d}.safetensors"

    def save(self, st: LayerStatistics) -> None:
        from safetensors.torch import save_file

        meta = {name: json.dumps(getattr(st, name)) for name in _META_FIELDS}
        meta["run_sha256"] = self.run_sha256
        tensors = {k: v.detach().cpu().contiguous() for k, v in st.tensors().items()}
        _write_atomic(self.path(st.layer), lambda p: save_file(tensors, p, metadata=meta))

    def load(self, layer: int) -> LayerStatistics | None:
        """The layer's statistics, or None if absent, unreadable or of another run."""
        from safetensors import SafetensorError, safe_open

        p = self.path(layer)
        if not p.is_file():
            return None
        try:
            with safe_open(str(p), "pt") as f:
                meta = f.metadata() or {}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            if meta.get("run_sha256") != self.run_sha256:
                return None
            kw = {name: json.loads(meta[name]) for name in _META_FIELDS}
        except (SafetensorError, OSError, ValueError, KeyError):
            return None
        names = {f.name for f in fields(LayerStatistics)}
        tensor_fields = names - set(_META_FIELDS)
        if kw["layer"] != layer or not tensor_fields - {"inv_freq"} <= set(tensors):
            return None
        return LayerStatistics(**kw, **{k: v for k, v in tensors.items() if k in tensor_fields})

    def finished(self, num_layers: int) -> list[LayerStatistics]:
        """Statistics of the longest prefix of layers 0, 1, ... with valid checkpoints."""
        out = []
        for layer in range(num_layers):
            st = self.load(layer)
            if st is None:
                break
            out.append(st)
        return out

    def clear(self) -> None:
        shutil.rmtree(self.dir, ignore_errors=True)


def statistics_equal(a: LayerStatistics, b: LayerStatistics) -> bool:
    """Bitwise equality of two layers' statistics (tests and resume checks)."""
    ta, tb = a.tensors(), b.tensors()
    return (all(getattr(a, n) == getattr(b, n) for n in _META_FIELDS) and ta.keys() == tb.keys()
            and all(torch.equal(ta[k], tb[k]) for k in ta))
