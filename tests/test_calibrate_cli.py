"""oscar-calibrate end to end on the embedded model, and its bad-input errors."""

import json

import pytest

from oscar_cluster.artifact import load_artifact
from oscar_cluster.calibrate_cli import main
from oscar_cluster.errors import FingerprintMismatchError


@pytest.mark.model
def test_calibrate_writes_a_loadable_artifact(tmp_path, capsys, smollm2):
    out = tmp_path / "art"
    rc = main(["--out", str(out), "--max-tokens", "1536", "--seq-len", "768", "--format", "json", "--quiet"])
    assert rc == 0
    record = json.loads(capsys.readouterr().out)
    assert record["target_context"] == 8192  # the model's maximum by default
    assert len(record["data_sha256"]) == 64
    model, _ = smollm2
    codec = load_artifact(out, model=model)
    assert sorted(codec.layers) == list(range(30))
    assert 2.2 < codec.bits_per_element(32768) < 2.3
    meta = codec.metadata
    assert meta["model"]["num_layers"] == 30 and meta["model"]["head_dim"] == 64
    assert set(meta["layouts"][0]) == {"k", "v"}
    # another model's fingerprint is refused, naming the fields
    fp = dict(meta["model"], num_kv_heads=8, head_dim=128)
    with pytest.raises(FingerprintMismatchError, match="head_dim") as e:
        load_artifact(out, fingerprint=fp)
    assert "num_kv_heads" in str(e.value)
    # refuses to overwrite without --overwrite, leaves the artifact intact
    assert main(["--out", str(out), "--quiet"]) == 2
    assert "overwrite" in capsys.readouterr().err
    assert load_artifact(out).state_dict().keys() == codec.state_dict().keys()


@pytest.mark.model
def test_too_little_text_says_how_much(tmp_path, capsys, smollm2):
    short = tmp_path / "short.txt"
    short.write_text("Only a few words of calibration text.")
    rc = main(["--data", str(short), "--out", str(tmp_path / "a"), "--quiet"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "1024" in err and "tokens" in err
    assert not (tmp_path / "a").exists()


def test_missing_and_empty_files_are_clear_errors(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["--data", str(empty), "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["--codec", "int3", "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert "oscar-paper" in capsys.readouterr().err
