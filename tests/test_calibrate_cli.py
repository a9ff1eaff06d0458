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


@pytest.mark.model
def test_a_folder_stands_for_its_text_files(tmp_path, capsys, smollm2):
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "a.rst.txt").write_text("Only a few words of calibration text.")
    (docs / "notes.json").write_text("{}")  # not text: left out
    rc = main(["--data", str(docs), "--out", str(tmp_path / "a"), "--quiet"])
    assert rc == 2 and "tokens" in capsys.readouterr().err  # the folder's one text file was read
    (tmp_path / "none").mkdir()
    assert main(["--data", str(tmp_path / "none"), "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "holds no text files" in capsys.readouterr().err


def test_expand_text_paths_keeps_files_and_sorts_folders(tmp_path):
    from oscar_cluster.corpora import expand_text_paths

    (tmp_path / "d").mkdir()
    for name in ("b.md", "a.rst.txt", "c.rst", "skip.py"):
        (tmp_path / "d" / name).write_text("x")
    got = expand_text_paths([tmp_path / "one.txt", tmp_path / "d"])
    assert got == [str(tmp_path / "one.txt")] + [str(tmp_path / "d" / n) for n in ("a.rst.txt", "b.md", "c.rst")]


def test_missing_and_empty_files_are_clear_errors(tmp_path, capsys):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    assert main(["--data", str(empty), "--out", str(tmp_path / "a"), "--quiet"]) == 2
    assert "empty" in capsys.readouterr().err
    assert main(["--data", str(tmp_path / "nope.txt"), "--out", str(tmp_path / "b"), "--quiet"]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["--codec", "int3", "--out", str(tmp_path / "c"), "--quiet"]) == 2
    assert "oscar-paper" in capsys.readouterr().err


@pytest.mark.model
def test_mean_bits_and_codec_options_reach_the_artifact(tmp_path, capsys, smollm2):
    plain, keyed = tmp_path / "plain", tmp_path / "keyed"
    common = ["--max-tokens", "1536", "--seq-len", "768", "--format", "json", "--quiet"]
    assert main(["--out", str(plain), *common]) == 0
    capsys.readouterr()
    assert main(["--out", str(keyed), "--mean-bits", "2.5", "--option", "key_weight=4", "--option",
                 "levels=uniform", *common]) == 0
    record = json.loads(capsys.readouterr().out)
    assert record["config"]["mean_bits"] == 2.5
    assert record["config"]["codec_options"] == {"key_weight": 4, "levels": "uniform"}
    a, b = load_artifact(plain), load_artifact(keyed)
    assert b.options()["key_weight"] == 4.0 and b.levels == "uniform" and b.mean_bits == 2.5
    # half a bit more per element, and the keys' share of it larger than water-filling alone gives
    assert b.bits_per_element(32768) == pytest.approx(a.bits_per_element(32768) + 0.5, abs=0.02)
    k_share = [float(c.codebook(0, "k").bits.sum()) / float(c.codebook(0, "k").bits.sum() + c.codebook(0, "v").bits.sum())
               for c in (a, b)]
    assert k_share[1] > k_share[0]


@pytest.mark.parametrize("args, says", [
    (["--option", "key_weight"], "KEY=VALUE"),
    (["--option", "key_wieght=2"], "key_wieght"),
    (["--option", "levels=nf4"], "levels"),
    (["--mean-bits", "0"], "mean_bits"),
    (["--option", "sinks=16"], "--sinks"),
])
def test_bad_codec_options_fail_before_any_model_loads(tmp_path, capsys, args, says):
    assert main(["--out", str(tmp_path / "a"), "--quiet", *args]) == 2
    assert says in capsys.readouterr().err
    assert not (tmp_path / "a").exists()
