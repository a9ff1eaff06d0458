"""Artifacts: `oscar.yaml` + `transforms.safetensors` in a directory (DESIGN.md section 5).

oscar.yaml holds the format version, the codec and its options, the model fingerprint, the
calibration record (data hash, tokens, time), per-layer bit layouts, true bits per element, error
figures and the sha256 of the tensors file. Writes go to a temporary directory renamed into place,
so a reader never sees a half-written artifact. Loading checks version, hash, tensor shapes and
finiteness, and (given a model) the fingerprint, naming every field that differs. YAML is read with
safe_load and tensors with safetensors: nothing is ever unpickled.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import torch
import yaml

from . import codecs
from .errors import ArtifactError, FingerprintMismatchError, OscarError

__all__ = ["FORMAT_VERSION", "save_artifact", "load_artifact", "read_metadata", "check_fingerprint", "content_hash"]

FORMAT_VERSION = 2  # 2: oscar.yaml carries content_sha256 (any edit to it is detected)
YAML_NAME = "oscar.yaml"
TENSORS_NAME = "transforms.safetensors"


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def content_hash(meta: dict) -> str:
    """sha256 of oscar.yaml's content (canonical JSON of every field but `content_sha256`)."""
    import json

    def canon(x):  # keys as strings (an edited file may mix key types), containers recursively
        if isinstance(x, dict):
            return {str(k): canon(v) for k, v in x.items()}
        if isinstance(x, (list, tuple)):
            return [canon(v) for v in x]
        return x

    body = canon({k: v for k, v in meta.items() if k != "content_sha256"})
    return hashlib.sha256(json.dumps(body, sort_keys=True, default=repr).encode()).hexdigest()


def _plain(x: Any) -> Any:
    """YAML-safe plain Python values."""
    if isinstance(x, dict):
        return {str(k) if not isinstance(k, int) else k: _plain(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_plain(v) for v in x]
    if isinstance(x, torch.Tensor):
        return x.tolist()
    if isinstance(x, bool) or x is None:
        return x
    if isinstance(x, int):
        return int(x)
    if isinstance(x, float):
        return float(x)
    return str(x)


def save_artifact(out_dir: str | os.PathLike, codec: codecs.Codec, fingerprint: dict, calibration: dict,
                  extra: dict | None = None, overwrite: bool = False) -> Path:
    """Write codec state and metadata to `out_dir` atomically; returns the directory."""
    from safetensors.torch import save_file

    out = Path(out_dir)
    if out.exists() and not overwrite:
        if not (out / YAML_NAME).exists() and any(out.iterdir()):
            raise ArtifactError(f"{out} exists and is not an OSCAR artifact; choose an empty or new directory")
        if (out / YAML_NAME).exists():
            raise ArtifactError(f"{out} already holds an artifact; pass overwrite=True (--overwrite) to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)  # mkdtemp makes 0700: give the artifact the usual permissions
    try:
        state = {k: v.detach().cpu().clone().contiguous() for k, v in codec.state_dict().items()}
        save_file(state, str(tmp / TENSORS_NAME), metadata={"format_version": str(FORMAT_VERSION)})
        meta = {
            "format_version": FORMAT_VERSION,
            "codec": codec.name,
            "options": _plain(codec.options()),
            "model": _plain(fingerprint),
            "calibration": _plain(calibration),
            "bits_per_element": {L: round(codec.bits_per_element(L), 6) for L in (4096, 32768, 131072)},
            "tensors": {"file": TENSORS_NAME, "sha256": _sha256(tmp / TENSORS_NAME), "count": len(state)},
        }
        if hasattr(codec, "layouts"):
            meta["layouts"] = {l: {k: [list(r) for r in runs] for k, runs in kinds.items()}
                               for l, kinds in codec.layouts().items()}
        if extra:
            meta.update(_plain(extra))
        meta["content_sha256"] = content_hash(meta)
        with open(tmp / YAML_NAME, "w") as f:
            yaml.safe_dump(meta, f, sort_keys=False, width=120)
        for f in (tmp / TENSORS_NAME, tmp / YAML_NAME):
            os.chmod(f, 0o666 & ~umask)
        if out.exists():
            old = out.with_name(f".{out.name}.old")
            shutil.rmtree(old, ignore_errors=True)
            out.rename(old)
            try:
                tmp.rename(out)
            except BaseException:
                old.rename(out)  # put the previous artifact back
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            tmp.rename(out)
    except OSError as e:  # disk full, permissions, ...: nothing half-written is left, the old artifact stays
        shutil.rmtree(tmp, ignore_errors=True)
        raise ArtifactError(f"writing the artifact to {out} failed ({e.strerror or e}); nothing was changed. "
                            "Free space or choose another --out") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return out


def read_metadata(path: str | os.PathLike) -> dict:
    """Parse and check oscar.yaml (safe_load); raises ArtifactError with the reason."""
    d = Path(path)
    y = d / YAML_NAME
    if not y.is_file():
        raise ArtifactError(f"{d}: no {YAML_NAME}; not an OSCAR artifact (create one with oscar-calibrate)")
    try:
        meta = yaml.safe_load(y.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as e:
        raise ArtifactError(f"{y}: not valid YAML ({str(e).splitlines()[0]})") from None
    if not isinstance(meta, dict):
        raise ArtifactError(f"{y}: expected a mapping at the top level")
    version = meta.get("format_version")
    if not isinstance(version, int):
        raise ArtifactError(f"{y}: format_version missing or not an integer")
    if version > FORMAT_VERSION:
        raise ArtifactError(f"{y}: format version {version} is newer than this oscar-cluster supports "
                            f"({FORMAT_VERSION}); upgrade oscar-cluster")
    if version >= 2:
        if meta.get("content_sha256") != content_hash(meta):
            raise ArtifactError(f"{y}: content hash mismatch: the file was modified after oscar-calibrate wrote it; "
                                "re-run oscar-calibrate")
    for key in ("codec", "options", "model", "tensors"):
        if key not in meta:
            raise ArtifactError(f"{y}: missing field {key!r}")
    if not isinstance(meta["options"], dict) or not isinstance(meta["tensors"], dict):
        raise ArtifactError(f"{y}: 'options' and 'tensors' must be mappings")
    return meta


def check_fingerprint(expected: dict, actual: dict, where: str = "artifact") -> None:
    """Raise FingerprintMismatchError naming every differing field."""
    diffs = [f"{k}: {where} {expected.get(k)!r} vs model {actual.get(k)!r}"
             for k in sorted(set(expected) | set(actual)) if expected.get(k) != actual.get(k)]
    if diffs:
        raise FingerprintMismatchError(f"{where} was calibrated for another model; differing fields: " + "; ".join(diffs)
                                       + ". Calibrate for this model with oscar-calibrate")


def load_artifact(path: str | os.PathLike, model=None, fingerprint: dict | None = None) -> codecs.Codec:
    """Load a codec from an artifact directory, checking integrity and (optionally) the model."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    d = Path(path)
    meta = read_metadata(d)
    if model is not None or fingerprint is not None:
        from .models import fingerprint as model_fingerprint

        check_fingerprint(meta["model"], fingerprint if fingerprint is not None else model_fingerprint(model))
    tfile = d / str(meta["tensors"].get("file", TENSORS_NAME))
    if not tfile.is_file():
        raise ArtifactError(f"{d}: missing {tfile.name}")
    digest = _sha256(tfile)
    if digest != meta["tensors"].get("sha256"):
        raise ArtifactError(f"{tfile}: sha256 {digest} does not match oscar.yaml ({meta['tensors'].get('sha256')}); "
                            "the file is truncated or was modified: re-run oscar-calibrate")
    try:
        state = load_file(str(tfile))
    except (SafetensorError, OSError, ValueError) as e:
        raise ArtifactError(f"{tfile}: unreadable safetensors ({e})") from None
    for k, t in state.items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ArtifactError(f"{tfile}: tensor {k} holds non-finite values")
    try:
        codec = codecs.get(str(meta["codec"]), **meta["options"])
        codec.load_state_dict(state)
    except (OscarError, RuntimeError) as e:
        raise ArtifactError(f"{d}: {e}") from None
    codec.metadata = meta
    return codec
