"""Property-based fuzzing of the artifact loader (hypothesis, bounded examples): mutated oscar.yaml
and transforms.safetensors either raise an OscarError or load a valid codec; nothing executes code,
nothing reaches the codec with non-finite values, nothing allocates beyond the file."""

import hashlib
import shutil
import struct
from pathlib import Path

import pytest
import torch
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file, save_file

from oscar_cluster import codecs
from oscar_cluster.artifact import content_hash, load_artifact, save_artifact
from oscar_cluster.calibration import LayerStatistics
from oscar_cluster.errors import OscarError

D, HQ, H = 32, 4, 2
FP = {"architecture": "llama", "num_layers": 2, "num_heads": HQ, "num_kv_heads": H, "head_dim": D,
      "rope_theta": 10000.0, "max_position_embeddings": 4096, "hidden_size": HQ * D}
# derandomize: CI sees the same bounded set every run; to explore further, run locally with
# derandomize=False and more examples (the random runs that found this session's bugs did so)
FUZZ = settings(max_examples=60, deadline=None, derandomize=True,
                suppress_health_check=[HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    g = torch.Generator().manual_seed(0)
    inv_freq = 1.0 / 10000.0 ** (torch.arange(0, D, 2, dtype=torch.float64) / D)
    stats = [LayerStatistics.from_samples(torch.randn(64, HQ, D, generator=g), torch.randn(64, H, D, generator=g) + 0.2,
                                          torch.randn(64, H, D, generator=g), torch.randn(HQ * D, HQ * D, generator=g) / 8,
                                          layer=layer, sinks=4, inv_freq=inv_freq) for layer in range(2)]
    codec = codecs.get("oscar").fit(stats)
    return save_artifact(tmp_path_factory.mktemp("fuzz") / "art", codec, FP, {"tokens": 128})


def _copy(src: Path, tmp: Path) -> Path:
    dst = tmp / f"a{len(list(tmp.iterdir()))}"
    shutil.copytree(src, dst)
    return dst


def _loads_or_refuses(path: Path) -> None:
    try:
        codec = load_artifact(path, fingerprint=FP)
    except OscarError:
        return
    # it loaded: then it must be a working codec with finite tensors
    for t in codec.state_dict().values():
        assert not t.is_floating_point() or bool(torch.isfinite(t).all())
    x = torch.randn(8, H, D)
    y = codec.roundtrip(x, "k", 0, torch.arange(8) + 10)
    assert bool(torch.isfinite(y).all())


def _resign(path: Path) -> None:
    """Make oscar.yaml agree with the tensor file again, so the deeper checks are reached."""
    meta = yaml.safe_load((path / "oscar.yaml").read_text())
    meta["tensors"]["sha256"] = hashlib.sha256((path / "transforms.safetensors").read_bytes()).hexdigest()
    meta["content_sha256"] = content_hash(meta)
    (path / "oscar.yaml").write_text(yaml.safe_dump(meta, sort_keys=False))


@FUZZ
@given(data=st.data())
def test_yaml_byte_mutations(pristine, tmp_path, data):
    path = _copy(pristine, tmp_path)
    raw = bytearray((path / "oscar.yaml").read_bytes())
    op = data.draw(st.sampled_from(["flip", "truncate", "insert"]))
    i = data.draw(st.integers(0, len(raw) - 1))
    if op == "flip":
        raw[i] ^= data.draw(st.integers(1, 255))
    elif op == "truncate":
        raw = raw[:i]
    else:
        raw[i:i] = data.draw(st.binary(min_size=1, max_size=16))
    (path / "oscar.yaml").write_bytes(bytes(raw))
    _loads_or_refuses(path)


@FUZZ
@given(tag=st.sampled_from(["!!python/object/apply:os.system", "!!python/name:os.system", "!!python/object:object",
                            "!!binary", "!!set", "!custom"]),
       field=st.sampled_from(["codec", "format_version", "options", "model", "tensors"]))
def test_yaml_tags_never_run(pristine, tmp_path, tag, field):
    path = _copy(pristine, tmp_path)
    marker = tmp_path / "pwned"
    meta_text = (path / "oscar.yaml").read_text()
    line = next(ln for ln in meta_text.splitlines() if ln.startswith(f"{field}:"))
    meta_text = meta_text.replace(line, f'{field}: {tag} ["touch {marker}"]', 1)
    (path / "oscar.yaml").write_text(meta_text)
    with pytest.raises(OscarError):
        load_artifact(path)
    assert not marker.exists()


@FUZZ
@given(data=st.data())
def test_tensor_file_byte_mutations(pristine, tmp_path, data):
    path = _copy(pristine, tmp_path)
    f = path / "transforms.safetensors"
    raw = bytearray(f.read_bytes())
    op = data.draw(st.sampled_from(["flip", "truncate", "huge_header"]))
    if op == "flip":
        i = data.draw(st.integers(0, len(raw) - 1))
        raw[i] ^= data.draw(st.integers(1, 255))
    elif op == "truncate":
        raw = raw[:data.draw(st.integers(0, len(raw) - 1))]
    else:  # the 8-byte header length claims far more than the file holds
        raw[:8] = struct.pack("<Q", data.draw(st.integers(len(raw), 2**63 - 1)))
    f.write_bytes(bytes(raw))
    if data.draw(st.booleans()):
        _resign(path)  # also exercise the safetensors parser, not only the sha256 check
    _loads_or_refuses(path)


@FUZZ
@given(data=st.data())
def test_tensor_content_mutations(pristine, tmp_path, data):
    path = _copy(pristine, tmp_path)
    state = load_file(str(path / "transforms.safetensors"))
    key = data.draw(st.sampled_from(sorted(state)))
    op = data.draw(st.sampled_from(["drop", "extra", "shape", "dtype", "nonfinite", "negative", "scale"]))
    t = state[key]
    if op == "drop":
        del state[key]
    elif op == "extra":
        state[data.draw(st.sampled_from(["layers.9.k.T", "evil", "layers.0.k.extra", "layers.x.k.T"]))] = t.clone()
    elif op == "shape":
        state[key] = torch.zeros(*[s + data.draw(st.integers(1, 3)) for s in t.shape]) if t.dim() else torch.zeros(2)
    elif op == "dtype":
        state[key] = t.to(data.draw(st.sampled_from([torch.float16, torch.int32, torch.uint8, torch.float64])))
    elif op == "nonfinite" and t.is_floating_point() and t.numel():
        t = t.clone()
        t.view(-1)[data.draw(st.integers(0, t.numel() - 1))] = data.draw(st.sampled_from([float("nan"), float("inf")]))
        state[key] = t
    elif op == "negative":
        state[key] = -t.abs() - 1
    else:
        state[key] = t * data.draw(st.sampled_from([0.0, 1e30, -1.0]))
    save_file({k: v.contiguous() for k, v in state.items()}, str(path / "transforms.safetensors"))
    _resign(path)
    _loads_or_refuses(path)


def test_valid_artifact_still_loads(pristine):
    load_artifact(pristine, fingerprint=FP)
