"""artifact: save/load round trip of a fitted `oscar` codec, and every way a directory can be wrong
(fingerprint, truncation, tampering, version, unsafe YAML, overwrite, failed save) (DESIGN.md
section 5, "Artifact")."""

from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file
from transformers import LlamaConfig

import safetensors.torch
from oscar_cluster import codecs
from oscar_cluster.artifact import FORMAT_VERSION, load_artifact, read_metadata, save_artifact
from oscar_cluster.calibration import LayerStatistics
from oscar_cluster.errors import ArtifactError, FingerprintMismatchError

HEAD_DIM = 64
Q_HEADS, KV_HEADS = 4, 2
HIDDEN = Q_HEADS * HEAD_DIM
LAYERS = [0, 1]
CALIB_TOKENS = 96
ROPE_BASE = 10000.0
KINDS = ["k", "v"]
FINGERPRINT = {"architecture": "llama", "num_layers": len(LAYERS), "num_heads": Q_HEADS, "num_kv_heads": KV_HEADS,
               "head_dim": HEAD_DIM, "rope_theta": ROPE_BASE, "max_position_embeddings": 4096, "hidden_size": HIDDEN}
CALIBRATION = {"data_sha256": "0" * 64, "tokens": CALIB_TOKENS * len(LAYERS), "seed": 0}


def inv_freq() -> torch.Tensor:
    return 1.0 / ROPE_BASE ** (torch.arange(0, HEAD_DIM, 2, dtype=torch.float64) / HEAD_DIM)


@pytest.fixture(scope="module")
def fitted():
    g = torch.Generator().manual_seed(0)
    stats = []
    for layer in LAYERS:
        q = torch.randn(CALIB_TOKENS, Q_HEADS, HEAD_DIM, generator=g)
        k = torch.randn(CALIB_TOKENS, KV_HEADS, HEAD_DIM, generator=g) * torch.linspace(0.2, 3, HEAD_DIM) + 0.3
        v = torch.randn(CALIB_TOKENS, KV_HEADS, HEAD_DIM, generator=g)
        w_o = torch.randn(HIDDEN, Q_HEADS * HEAD_DIM, generator=g) / HEAD_DIM ** 0.5
        stats.append(LayerStatistics.from_samples(q, k, v, w_o, layer=layer, sinks=4, inv_freq=inv_freq()))
    return codecs.get("oscar").fit(stats)


@pytest.fixture()
def saved(fitted, tmp_path):
    return save_artifact(tmp_path / "art", fitted, FINGERPRINT, CALIBRATION)


def kv_input(T: int = 40, seed: int = 1):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(T, KV_HEADS, HEAD_DIM, generator=g), torch.arange(T) + 3


def rewrite_yaml(path: Path, resign: bool = True, **changes) -> None:
    """Edit oscar.yaml; `resign` recomputes its content hash (to reach the checks behind it)."""
    from oscar_cluster.artifact import content_hash

    meta = yaml.safe_load((path / "oscar.yaml").read_text())
    meta.update(changes)
    if resign and isinstance(meta.get("format_version"), int):
        meta["content_sha256"] = content_hash(meta)
    (path / "oscar.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


def rehash(path: Path) -> None:
    """Make oscar.yaml's sha256 agree with the (modified) tensor file, to reach the later checks."""
    import hashlib

    from oscar_cluster.artifact import content_hash

    meta = yaml.safe_load((path / "oscar.yaml").read_text())
    meta["tensors"]["sha256"] = hashlib.sha256((path / "transforms.safetensors").read_bytes()).hexdigest()
    meta["content_sha256"] = content_hash(meta)
    (path / "oscar.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


# ----- round trip -----------------------------------------------------------------------------------
@pytest.mark.parametrize("layer", LAYERS)
@pytest.mark.parametrize("kind", KINDS)
def test_loaded_codec_decodes_like_the_original(fitted, saved, kind, layer):
    loaded = load_artifact(saved)
    x, pos = kv_input(seed=10 * layer + len(kind))
    enc = fitted.encode(x, kind, layer, positions=pos)
    ref = fitted.decode(enc)
    assert torch.equal(loaded.decode(enc), ref)
    enc2 = loaded.encode(x, kind, layer, positions=pos)
    assert enc2.payload.keys() == enc.payload.keys()
    for name, t in enc.payload.items():
        assert torch.equal(enc2.payload[name], t), name
    assert torch.equal(loaded.decode(enc2), ref)
    assert float((ref[3:] - x[3:]).pow(2).mean()) < float(x.pow(2).mean())  # it is a working codec


def test_loaded_state_options_and_metadata(fitted, saved):
    loaded = load_artifact(saved)
    assert loaded.name == "oscar" and loaded.options() == fitted.options()
    a, b = fitted.state_dict(), loaded.state_dict()
    assert a.keys() == b.keys()
    for name in a:
        assert a[name].dtype == b[name].dtype and torch.equal(a[name], b[name]), name
    meta = read_metadata(saved)
    assert meta["format_version"] == FORMAT_VERSION and meta["codec"] == "oscar"
    assert meta["model"] == FINGERPRINT and meta["calibration"] == CALIBRATION
    assert meta["tensors"]["count"] == len(a)
    assert {l: {k: [tuple(r) for r in runs] for k, runs in kinds.items()}
            for l, kinds in meta["layouts"].items()} == fitted.layouts()
    for L, bpe in meta["bits_per_element"].items():
        assert bpe == pytest.approx(fitted.bits_per_element(L), abs=1e-6)
    assert loaded.metadata["model"] == FINGERPRINT


def test_matching_fingerprint_and_config_load(saved):
    load_artifact(saved, fingerprint=dict(FINGERPRINT))
    cfg = LlamaConfig(hidden_size=HIDDEN, num_attention_heads=Q_HEADS, num_key_value_heads=KV_HEADS,
                      head_dim=HEAD_DIM, num_hidden_layers=len(LAYERS), rope_theta=ROPE_BASE,
                      max_position_embeddings=4096)
    load_artifact(saved, model=cfg)


# ----- fingerprint ----------------------------------------------------------------------------------
def test_fingerprint_mismatch_names_each_differing_field(saved):
    other = {**FINGERPRINT, "head_dim": 128, "rope_theta": 500000.0, "num_kv_heads": 8}
    del other["max_position_embeddings"]
    with pytest.raises(FingerprintMismatchError) as e:
        load_artifact(saved, fingerprint=other)
    msg = str(e.value)
    for field, ours, theirs in [("head_dim", 64, 128), ("rope_theta", 10000.0, 500000.0), ("num_kv_heads", 2, 8),
                                ("max_position_embeddings", 4096, None)]:
        assert f"{field}: artifact {ours!r} vs model {theirs!r}" in msg
    for same in ("architecture", "num_layers", "num_heads", "hidden_size"):
        assert f"{same}:" not in msg
    assert isinstance(e.value, ArtifactError)


# ----- damaged files ----------------------------------------------------------------------------------
def test_truncated_tensor_file(saved):
    f = saved / "transforms.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size // 2])
    with pytest.raises(ArtifactError, match="truncated or was modified"):
        load_artifact(saved)


def test_truncated_tensor_file_with_matching_hash_is_unreadable(saved):
    f = saved / "transforms.safetensors"
    f.write_bytes(f.read_bytes()[: f.stat().st_size - 100])
    rehash(saved)
    with pytest.raises(ArtifactError, match="unreadable safetensors"):
        load_artifact(saved)


@pytest.mark.parametrize("where", [0.01, 0.5, 0.99])
def test_one_flipped_byte(saved, where):
    f = saved / "transforms.safetensors"
    data = bytearray(f.read_bytes())
    data[int(len(data) * where)] ^= 0x01
    f.write_bytes(bytes(data))
    with pytest.raises(ArtifactError, match="sha256"):
        load_artifact(saved)


def test_missing_tensor_file(saved):
    (saved / "transforms.safetensors").unlink()
    with pytest.raises(ArtifactError, match="missing transforms.safetensors"):
        load_artifact(saved)


def test_non_finite_tensor(saved):
    f = saved / "transforms.safetensors"
    state = load_file(str(f))
    state["layers.1.v.std"][0, 5] = float("nan")
    save_file(state, str(f))
    rehash(saved)
    with pytest.raises(ArtifactError, match="layers.1.v.std holds non-finite"):
        load_artifact(saved)


def test_missing_tensor(saved):
    f = saved / "transforms.safetensors"
    state = load_file(str(f))
    del state["layers.0.k.T_inv"]
    save_file(state, str(f))
    rehash(saved)
    with pytest.raises(ArtifactError, match="layer 0 k: missing tensors.*T_inv"):
        load_artifact(saved)


def test_unexpected_tensor(saved):
    """A tensor the codec does not know is refused by name, not silently dropped."""
    f = saved / "transforms.safetensors"
    state = load_file(str(f))
    state["layers.0.k.extra"] = torch.zeros(3)
    save_file(state, str(f))
    rehash(saved)
    with pytest.raises(ArtifactError, match="layers.0.k.extra"):
        load_artifact(saved)


def test_wrong_tensor_shape(saved):
    """The module docstring promises a shape check: a head-dim-32 transform in a head-dim-64
    artifact must not load."""
    f = saved / "transforms.safetensors"
    state = load_file(str(f))
    state["layers.1.k.T"] = state["layers.1.k.T"][:, :32, :32].contiguous()
    save_file(state, str(f))
    rehash(saved)
    with pytest.raises(ArtifactError):
        load_artifact(saved)


# ----- oscar.yaml -----------------------------------------------------------------------------------
@pytest.mark.parametrize("change", [{"options": {"mean_bits": 3.0}}, {"bits_per_element": {4096: 1.0}},
                                    {"calibration": {"tokens": 1}}])
def test_any_unsigned_edit_is_detected(saved, change):
    rewrite_yaml(saved, resign=False, **change)
    with pytest.raises(ArtifactError, match="content hash mismatch"):
        load_artifact(saved)


def test_newer_format_version_asks_for_upgrade(saved):
    rewrite_yaml(saved, format_version=99)
    with pytest.raises(ArtifactError, match="format version 99 is newer.*upgrade"):
        load_artifact(saved)


@pytest.mark.parametrize("version", [None, "1", 1.0])
def test_bad_format_version(saved, version):
    rewrite_yaml(saved, format_version=version)
    with pytest.raises(ArtifactError, match="format_version missing or not an integer"):
        load_artifact(saved)


def test_python_tag_is_refused_and_never_runs(saved, tmp_path):
    marker = tmp_path / "pwned"
    text = (saved / "oscar.yaml").read_text()
    text = text.replace("codec: oscar", f'codec: !!python/object/apply:os.system ["touch {marker}"]', 1)
    assert "!!python" in text
    (saved / "oscar.yaml").write_text(text)
    with pytest.raises(ArtifactError, match="not valid YAML"):
        load_artifact(saved)
    assert not marker.exists()


@pytest.mark.parametrize("text", ["- a list\n- not a mapping\n", "format_version: 1\ncodec: oscar\n", "key: [unclosed\n"])
def test_malformed_yaml(saved, text):
    (saved / "oscar.yaml").write_text(text)
    with pytest.raises(ArtifactError):
        load_artifact(saved)


def test_not_an_artifact(tmp_path):
    with pytest.raises(ArtifactError, match="not an OSCAR artifact"):
        load_artifact(tmp_path)


# ----- saving -----------------------------------------------------------------------------------------
def test_save_over_existing_artifact_needs_overwrite(fitted, saved, tmp_path):
    before = (saved / "transforms.safetensors").read_bytes()
    with pytest.raises(ArtifactError, match="already holds an artifact.*overwrite"):
        save_artifact(saved, fitted, FINGERPRINT, CALIBRATION)
    assert (saved / "transforms.safetensors").read_bytes() == before
    save_artifact(saved, fitted, {**FINGERPRINT, "max_position_embeddings": 8192}, CALIBRATION, overwrite=True)
    assert read_metadata(saved)["model"]["max_position_embeddings"] == 8192
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


def test_save_into_foreign_directory_refused(fitted, tmp_path):
    out = tmp_path / "notes"
    out.mkdir()
    (out / "readme.txt").write_text("mine")
    with pytest.raises(ArtifactError, match="not an OSCAR artifact"):
        save_artifact(out, fitted, FINGERPRINT, CALIBRATION)
    assert (out / "readme.txt").read_text() == "mine"


def _boom(*args, **kwargs):
    raise RuntimeError("disk full")


@pytest.mark.parametrize("stage", ["tensors", "yaml"])
def test_failed_save_leaves_nothing(fitted, tmp_path, monkeypatch, stage):
    if stage == "tensors":
        monkeypatch.setattr(safetensors.torch, "save_file", _boom)
    else:
        monkeypatch.setattr(yaml, "safe_dump", _boom)
    out = tmp_path / "sub" / "art"
    with pytest.raises(RuntimeError, match="disk full"):
        save_artifact(out, fitted, FINGERPRINT, CALIBRATION)
    assert not out.exists()
    assert list((tmp_path / "sub").iterdir()) == []  # no temporary directory either


@pytest.mark.parametrize("stage", ["tensors", "yaml"])
def test_failed_overwrite_keeps_the_previous_artifact(fitted, saved, tmp_path, monkeypatch, stage):
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    monkeypatch.setattr(safetensors.torch if stage == "tensors" else yaml,
                        "save_file" if stage == "tensors" else "safe_dump", _boom)
    with pytest.raises(RuntimeError):
        save_artifact(saved, fitted, FINGERPRINT, CALIBRATION, overwrite=True)
    monkeypatch.undo()
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]
    load_artifact(saved)


def test_failed_final_rename_keeps_the_previous_artifact(fitted, saved, tmp_path, monkeypatch):
    """If moving the new directory into place fails after the old one was moved aside, the old
    artifact must be back at its path (not left hidden as .art.old)."""
    before = {p.name: p.read_bytes() for p in saved.iterdir()}
    real_rename = Path.rename

    def rename(self, target):
        if Path(target) == saved and self.name.startswith(".art.") and not self.name.endswith(".old"):
            raise OSError("rename failed")
        return real_rename(self, target)

    monkeypatch.setattr(Path, "rename", rename)
    with pytest.raises(ArtifactError, match="rename failed.*nothing was changed"):
        save_artifact(saved, fitted, FINGERPRINT, CALIBRATION, overwrite=True)
    monkeypatch.undo()
    assert saved.is_dir() and {p.name: p.read_bytes() for p in saved.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["art"]


@pytest.mark.parametrize("stage", ["tensors", "yaml"])
def test_disk_full_is_a_clear_error_and_keeps_the_previous_artifact(fitted, saved, monkeypatch, stage):
    import errno

    before = {p.name: p.read_bytes() for p in saved.iterdir()}

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(safetensors.torch if stage == "tensors" else yaml,
                        "save_file" if stage == "tensors" else "safe_dump", full)
    with pytest.raises(ArtifactError, match="No space left on device.*nothing was changed"):
        save_artifact(saved, fitted, FINGERPRINT, CALIBRATION, overwrite=True)
    assert {p.name: p.read_bytes() for p in saved.iterdir()} == before
    assert [p.name for p in saved.parent.iterdir()] == [saved.name], "no temporary directory left behind"
    load_artifact(saved)
