"""oscar-eval's RULER harness on the embedded model (small: 1 task, 300 tokens, 1 sample per codec):
rows per codec, resume without recomputation, summaries equal to the rows, a torn line ignored."""

import csv
import dataclasses
import json

import pytest

from oscar_cluster.evaluation.cli import main
from oscar_cluster.evaluation.harness import EvalConfig, read_rows, run_ruler
from oscar_cluster.errors import ConfigError

pytestmark = pytest.mark.model


def test_ruler_grid_resumes_and_summarizes(smollm2, smollm2_artifact, tmp_path):
    cfg = EvalConfig(model="smollm2-135m", out=str(tmp_path), codecs=["bf16", "int2", "oscar"],
                     tasks=["niah_single_1"], lengths=[300], samples=1, artifact=str(smollm2_artifact))
    first = run_ruler(cfg, progress=False, model_and_tokenizer=smollm2)
    assert first["new_rows"] == 3
    rows = read_rows(tmp_path / "ruler.jsonl")
    assert sorted(r["codec"] for r in rows) == ["bf16", "int2", "oscar"]
    assert len({r["prompt_tokens"] for r in rows}) == 1, "every codec sees the same prompt"
    for r in rows:
        assert 0 <= r["score"] <= 100 and r["references"] and r["protocol"] == "chunked"
    before = (tmp_path / "ruler.jsonl").read_text()
    with open(tmp_path / "ruler.jsonl", "a") as f:
        f.write('{"id": "torn')  # a killed run's last line
    again = run_ruler(cfg, progress=False, model_and_tokenizer=smollm2)
    assert again["new_rows"] == 0, "finished samples are not recomputed"
    assert (tmp_path / "ruler.jsonl").read_text().startswith(before)
    summary = json.loads((tmp_path / "summary.json").read_text())["summary"]
    by = {(s["codec"], s["task"]): s for s in summary}
    for r in rows:
        assert by[(r["codec"], "niah_single_1")]["score"] == r["score"]
        assert by[(r["codec"], "niah_mean")]["score"] == r["score"]
    assert by[("oscar", "niah_single_1")]["bits_per_element"] < 3 < by[("bf16", "niah_single_1")]["bits_per_element"]
    with open(tmp_path / "summary.csv") as f:
        assert len(list(csv.DictReader(f))) == len(summary)
    assert (tmp_path / "ruler.png").stat().st_size > 1000


def test_bad_arguments_are_one_line(tmp_path, capsys):
    assert main(["--model", "smollm2-135m", "--tasks", "attn", "--out", str(tmp_path)]) == 2
    assert "--attn-file" in capsys.readouterr().err
    assert main(["--model", "smollm2-135m", "--tasks", "ppl", "--ppl-file", str(tmp_path / "nope.txt"),
                 "--out", str(tmp_path)]) == 2
    assert "no such file" in capsys.readouterr().err
    assert main(["--model", "smollm2-135m", "--artifact", "oscar=a,kivi2", "--out", str(tmp_path)]) == 2
    assert "CODEC=DIR" in capsys.readouterr().err
    assert main(["--model", "smollm2-135m", "--artifact", "kivi2=somewhere", "--out", str(tmp_path)]) == 2
    assert "not in --codecs" in capsys.readouterr().err
    assert main(["--merge", str(tmp_path / "missing"), "--out", str(tmp_path / "m")]) == 2
    assert "not a directory" in capsys.readouterr().err
    assert main(["--model", "smollm2-135m", "--tasks", "ppl", "--out", str(tmp_path)]) == 2
    assert "--ppl-file" in capsys.readouterr().err
    assert main(["--model", "smollm2-135m", "--ctx", "4q", "--out", str(tmp_path)]) == 2
    assert main(["--model", "smollm2-135m", "--codecs", "zip", "--out", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 2 and all(e.startswith("error:") for e in err)
    with pytest.raises(ConfigError, match="bf16-prefill"):
        EvalConfig(model="m", out=str(tmp_path), protocol="eager")


def test_ppl_task_writes_ppl_json(smollm2, smollm2_artifact, tmp_path, capsys):
    from oscar_cluster.corpora import essay_files

    rc = main(["--model", "smollm2-135m", "--artifact", str(smollm2_artifact), "--codecs", "bf16,oscar",
               "--tasks", "ppl", "--ppl-file", str(essay_files()[0]), "--ctx", "256", "--prefill-chunk", "256",
               "--ppl-windows", "2", "--out", str(tmp_path), "--quiet"])
    assert rc == 0
    doc = json.loads((tmp_path / "ppl.json").read_text())
    assert doc["codecs"]["bf16"]["increase_vs_bf16"] == 0 and doc["codecs"]["oscar"]["ppl"] > 1
    assert doc["codecs"]["bf16"]["tokens"] == doc["codecs"]["oscar"]["tokens"] == 256 + 128 - 1
    assert "ppl" in capsys.readouterr().out


def test_needle_grid_rows_and_heatmap(smollm2, tmp_path):
    cfg = EvalConfig(model="smollm2-135m", out=str(tmp_path), codecs=["bf16", "int2"], tasks=[], lengths=[300],
                     samples=1, grid_depths=[0.0, 1.0])
    res = run_ruler(cfg, progress=False, model_and_tokenizer=smollm2)
    assert res["new_rows"] == 4
    rows = read_rows(tmp_path / "ruler.jsonl")
    assert sorted((r["codec"], r["depth"]) for r in rows) == [("bf16", 0.0), ("bf16", 1.0), ("int2", 0.0), ("int2", 1.0)]
    cells = {(s["codec"], s["depth"]): s["score"] for s in res["summary"]}
    assert cells == {(r["codec"], r["depth"]): r["score"] for r in rows}
    assert (tmp_path / "niah_grid.png").stat().st_size > 1000 and not (tmp_path / "ruler.png").exists()
    assert run_ruler(cfg, progress=False, model_and_tokenizer=smollm2)["new_rows"] == 0


def test_attention_error_task(smollm2, smollm2_artifact, tmp_path):
    """Per-layer errors for every layer; bf16 is bf16 rounding, oscar beats plain INT2 (known order)."""
    from oscar_cluster.corpora import essay_files
    from oscar_cluster.evaluation.harness import run_attention_error

    cfg = EvalConfig(model="smollm2-135m", out=str(tmp_path), codecs=["bf16", "int2", "oscar"], tasks=[],
                     lengths=[300], artifact=str(smollm2_artifact))
    doc = run_attention_error(cfg, str(essay_files()[1]), tokens=256, model_and_tokenizer=smollm2, progress=False)
    errs = {c: r["per_layer"] for c, r in doc["codecs"].items()}
    assert all(len(e) == 30 for e in errs.values()), "one error per layer of SmolLM2"
    assert max(errs["bf16"]) < 1e-2 and min(errs["int2"]) > 1e-2
    assert doc["codecs"]["oscar"]["geomean"] < doc["codecs"]["int2"]["geomean"]
    on_disk = json.loads((tmp_path / "attn.json").read_text())
    assert on_disk["codecs"]["oscar"]["per_layer"] == errs["oscar"] and on_disk["tokens"] == 256
    assert (tmp_path / "attn.png").stat().st_size > 1000


def test_calibrated_codec_is_fitted_once_and_cached(smollm2, smollm2_artifact, tmp_path):
    from oscar_cluster.evaluation.harness import _codecs

    cfg = EvalConfig(model="smollm2-135m", out=str(tmp_path), codecs=["oscar-paper"], tasks=["niah_single_1"],
                     lengths=[300], samples=1, calib_tokens=1024)
    res = run_ruler(cfg, progress=False, model_and_tokenizer=smollm2)
    art = tmp_path / "artifacts" / "oscar-paper"
    assert res["new_rows"] == 1 and (art / "oscar.yaml").exists()
    stamp = (art / "transforms.safetensors").stat().st_mtime_ns
    first = _codecs(cfg, smollm2[0], smollm2[1], progress=False)["oscar-paper"]
    assert (art / "transforms.safetensors").stat().st_mtime_ns == stamp, "the cached artifact is reused, not refitted"
    assert first.metadata["calibration"]["tokens"] >= 1024
    # the cache is tied to its text and token count: other text is refused, not silently reused
    from oscar_cluster.artifact import read_metadata
    from oscar_cluster.corpora import shakespeare_files

    other = dataclasses.replace(cfg, calib_data=[str(p) for p in shakespeare_files()[3:6]])
    with pytest.raises(ConfigError, match="other calibration text"):
        _codecs(other, smollm2[0], smollm2[1], progress=False)
    with pytest.raises(ConfigError, match="calib-tokens"):
        _codecs(dataclasses.replace(cfg, calib_tokens=2048), smollm2[0], smollm2[1], progress=False)
    # and --calib-data fits on that text (recorded by its hash)
    fresh = dataclasses.replace(other, out=str(tmp_path / "other"))
    _codecs(fresh, smollm2[0], smollm2[1], progress=False)
    rec = read_metadata(tmp_path / "other" / "artifacts" / "oscar-paper")["calibration"]
    assert rec["data_sha256"] != first.metadata["calibration"]["data_sha256"]
    assert rec["config"]["data"] == other.calib_data
    bad = EvalConfig(model="smollm2-135m", out=str(tmp_path / "x"), codecs=["oscar-paper"], tasks=[], lengths=[300],
                     artifacts={"oscar-paper": str(smollm2_artifact)})
    with pytest.raises(ConfigError, match="holds a 'oscar' codec"):
        _codecs(bad, smollm2[0], smollm2[1], progress=False)


def test_parallel_runs_merge_into_one_report(smollm2, tmp_path):
    from oscar_cluster.evaluation.harness import merge_runs

    a, b = tmp_path / "gpu0", tmp_path / "gpu1"
    for out, codec in ((a, "bf16"), (b, "int2")):
        run_ruler(EvalConfig(model="smollm2-135m", out=str(out), codecs=[codec], tasks=["niah_single_1"],
                             lengths=[300], samples=2), progress=False, model_and_tokenizer=smollm2)
    assert main(["--merge", f"{a},{b},{a}", "--out", str(tmp_path / "all"), "--quiet"]) == 0
    rows = read_rows(tmp_path / "all" / "ruler.jsonl")
    assert sorted(r["id"] for r in rows) == sorted(r["id"] for d in (a, b) for r in read_rows(d / "ruler.jsonl"))
    summary = json.loads((tmp_path / "all" / "summary.json").read_text())["summary"]
    got = {(s["codec"], s["task"]): (s["score"], s["samples"], s["bits_per_element"]) for s in summary}
    for d, codec in ((a, "bf16"), (b, "int2")):
        part = {(s["codec"], s["task"]): (s["score"], s["samples"], s["bits_per_element"])
                for s in json.loads((d / "summary.json").read_text())["summary"]}
        assert {k: v for k, v in got.items() if k[0] == codec} == part
    (a / "ppl.json").write_text(json.dumps({"file": "w", "window": 512, "codecs": {"bf16": {"ppl": 10.0, "bits_per_element": 16}}}))
    (b / "ppl.json").write_text(json.dumps({"file": "w", "window": 1024, "codecs": {"int2": {"ppl": 30.0, "bits_per_element": 2.5}}}))
    with pytest.raises(ConfigError, match="other settings"):
        merge_runs([str(a), str(b)], str(tmp_path / "bad"))


def test_batches_give_the_rows_of_single_samples(smollm2, tmp_path):
    """--batch 3 (left-padded) writes the same scores and predictions as one sample at a time (the
    first 40 characters: batched float32 matmuls round differently, which a long greedy run can
    amplify), and a sample stops once its prediction holds every reference."""
    rows = {}
    for batch in (1, 3):
        cfg = EvalConfig(model="smollm2-135m", out=str(tmp_path / str(batch)), codecs=["bf16", "kivi2"],
                         tasks=["niah_single_1"], lengths=[400], samples=3, batch=batch,
                         prefill_chunk=256)
        assert run_ruler(cfg, progress=False, model_and_tokenizer=smollm2)["new_rows"] == 6
        rows[batch] = {r["id"]: r for r in read_rows(tmp_path / str(batch) / "ruler.jsonl")}
    assert rows[1].keys() == rows[3].keys()
    assert {r["batch"] for r in rows[3].values()} == {3} and {r["batch"] for r in rows[1].values()} == {1}
    for key, r in rows[1].items():
        assert (rows[3][key]["prediction"][:40], rows[3][key]["score"]) == (r["prediction"][:40], r["score"]), key
    for r in rows[3].values():
        assert r["stopped"] in ("references", "eos", "budget") and r["new_tokens"] >= 1
        assert (r["stopped"] == "references") == (r["score"] == 100.0 and r["new_tokens"] < 128)
    assert any(r["stopped"] == "references" for r in rows[3].values())
