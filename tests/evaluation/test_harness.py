"""oscar-eval's RULER harness on the embedded model (small: 1 task, 300 tokens, 1 sample per codec):
rows per codec, resume without recomputation, summaries equal to the rows, a torn line ignored."""

import csv
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
    assert "not built yet" in capsys.readouterr().err
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
