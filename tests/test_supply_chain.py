"""Supply chain and unsafe loading: no pickle, no torch.load without weights_only=True, no
yaml.load without a safe loader, no trust_remote_code, every dependency and model part pinned."""

import re
from pathlib import Path

import pytest

from oscar_cluster.models import REGISTRY

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [p for d in ("oscar_cluster", "kernels", "planner", "calibration_jobs", "deploy", "benchmarks")
           for p in (ROOT / d).rglob("*.py")]
UNSAFE = [
    (re.compile(r"^\s*(import pickle|from pickle import|import cPickle|import dill)", re.M), "pickle"),
    (re.compile(r"pickle\.loads?\("), "pickle.load"),
    (re.compile(r"torch\.load\((?![^)]*weights_only\s*=\s*True)"), "torch.load without weights_only=True"),
    (re.compile(r"yaml\.(load|load_all|unsafe_load|full_load)\((?![^)]*Loader\s*=\s*yaml\.SafeLoader)"),
     "yaml.load without SafeLoader"),
    (re.compile(r"trust_remote_code\s*=\s*True"), "trust_remote_code=True"),
    (re.compile(r"(?<![.\w])(eval|exec)\("), "eval/exec"),
]


def _findings(text: str) -> list[str]:
    return [what for rx, what in UNSAFE if rx.search(text)]


def test_detector_catches_each_pattern():
    for bad in ("import pickle", "x = pickle.loads(b)", "torch.load(f)", "torch.load(f, map_location='cpu')",
                "yaml.load(s)", "yaml.full_load(s)", "m = f(trust_remote_code=True)", "eval('1')"):
        assert _findings(bad), bad
    for ok in ("torch.load(f, weights_only=True)", "yaml.safe_load(s)", "yaml.load(s, Loader=yaml.SafeLoader)",
               "model.eval()"):
        assert not _findings(ok), ok


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(ROOT)))
def test_no_unsafe_loading(path):
    assert _findings(path.read_text(encoding="utf-8")) == []


def test_requirements_are_pinned():
    for line in (ROOT / "requirements.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][A-Za-z0-9_.\-+]*", line), f"not pinned: {line!r}"
    nodeps = [ln for ln in (ROOT / "requirements-nodeps.txt").read_text().splitlines() if ln and not ln.startswith("#")]
    joined = " ".join(nodeps)
    for pkg in re.findall(r"^([A-Za-z0-9_.\-]+)==", "\n".join(nodeps), re.M):
        assert re.search(rf"{re.escape(pkg)}==\S+\s*\\?\s*--hash=sha256:[0-9a-f]{{64}}", joined), pkg


def test_model_parts_are_pinned_by_version_and_sha256():
    for spec in REGISTRY.values():
        assert re.fullmatch(r"[0-9a-f]{64}", spec.sha256) and spec.total_bytes > 0
        for part in spec.parts:
            assert part.version and re.fullmatch(r"[0-9][0-9a-zA-Z.]*", part.version), (spec.name, part)
