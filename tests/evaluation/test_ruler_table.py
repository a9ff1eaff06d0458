"""benchmarks/ruler_table.py: pairing against bf16, and an ablation's partial rows on the samples all ran."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "benchmarks" / "ruler_table.py"


def _load(monkeypatch):
    monkeypatch.syspath_prepend(str(SCRIPT.parent))  # the script imports its sibling _record
    spec = importlib.util.spec_from_file_location("ruler_table", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _row(codec, task, sample, score, length=32768):
    return {"codec": codec, "task": task, "length": length, "sample": sample, "depth": None, "score": score,
            "seconds": 1.0}


def _rows():
    rows = [_row("bf16", "niah_multikey_2", i, s) for i, s in enumerate([100, 100, 0, 100])]
    rows += [_row("oscar", "niah_multikey_2", i, s) for i, s in enumerate([100, 0, 0, 0])]
    return rows


def test_pairs_each_codec_with_bf16_on_the_samples_both_ran(monkeypatch):
    rows = _rows() + [_row("kivi2", "niah_multikey_2", 0, 0.0)]  # kivi2 ran sample 0 only
    table = {(t["codec"], t["task"]): t for t in _load(monkeypatch).paired(rows)}
    assert table["oscar", "niah_multikey_2"]["samples"] == 4
    assert table["oscar", "niah_multikey_2"]["score"] == 25.0 and table["oscar", "niah_multikey_2"]["bf16"] == 75.0
    assert table["kivi2", "niah_multikey_2"]["samples"] == 1 and table["kivi2", "niah_multikey_2"]["bf16"] == 100.0


def test_same_samples_restricts_every_codec_to_the_common_samples(monkeypatch):
    rows = _rows() + [_row("v21", "niah_multikey_2", i, s) for i, s in ((1, 100), (2, 0))]
    table = {(t["codec"], t["task"]): t for t in _load(monkeypatch).paired(rows, same_samples=True)}
    for codec in ("oscar", "v21"):
        assert table[codec, "niah_multikey_2"]["samples"] == 2  # samples 1 and 2 only
        assert table[codec, "niah_multikey_2"]["bf16"] == 50.0
    assert table["oscar", "niah_multikey_2"]["score"] == 0.0
    assert table["v21", "niah_multikey_2"]["score"] == 50.0


def test_cli_variant_rows_join_as_a_named_codec(tmp_path):
    main = tmp_path / "ruler.jsonl"
    main.write_text("".join(json.dumps(r) + "\n" for r in _rows() + [_row("bf16", "niah_single_1", 0, 100, 8192)]))
    var = tmp_path / "v.jsonl"
    var.write_text(json.dumps(_row("oscar", "niah_multikey_2", 3, 100)) + "\n")
    out = tmp_path / "paired.json"
    subprocess.run([sys.executable, str(SCRIPT), str(main), "--variant", f"keys-x2={var}", "--same-samples",
                    "--lengths", "32768", "--out", str(out)], check=True, capture_output=True, text=True)
    got = {(t["codec"], t["task"]): t for t in json.loads(out.read_text())["paired_vs_bf16"]}
    assert got["keys-x2", "niah_multikey_2"] == {**got["keys-x2", "niah_multikey_2"], "samples": 1, "score": 100.0,
                                                 "bf16": 100.0}
    assert got["oscar", "niah_multikey_2"]["score"] == 0.0  # sample 3 only
    assert all(t["length"] == 32768 for t in got.values())


def test_cli_refuses_a_variant_without_rows(tmp_path):
    main = tmp_path / "ruler.jsonl"
    main.write_text(json.dumps(_row("bf16", "niah_multikey_2", 0, 100)) + "\n")
    res = subprocess.run([sys.executable, str(SCRIPT), str(main), "--variant", "x=" + str(tmp_path / "missing.jsonl"),
                          "--out", str(tmp_path / "o.json")], capture_output=True, text=True)
    assert res.returncode != 0 and "--variant wants NAME=ROWS" in res.stderr
    assert not (tmp_path / "o.json").exists()


def test_ratio_interval_matches_the_exact_bootstrap_distribution(monkeypatch):
    """Two samples of one task, codec [100, 0] against bf16 [100, 100]: a resample's ratio is the share
    of draws of sample 0, so 0, 0.5 and 1 with probabilities 1/4, 1/2, 1/4; the 95% interval is [0, 1]."""
    mod = _load(monkeypatch)
    assert mod.ratio_interval([("t", 100, 100), ("t", 0, 100)]) == [0.0, 1.0]
    same = [("a", s, s) for s in (100, 0, 100, 50)] + [("b", s, s) for s in (0, 100)]
    assert mod.ratio_interval(same) == [1.0, 1.0]  # a codec equal to bf16 on every sample
    assert mod.ratio_interval([("t", 0, 0), ("t", 0, 0)]) is None  # bf16 never scores: no ratio


def test_ratio_interval_keeps_each_task_and_narrows_with_samples(monkeypatch):
    mod = _load(monkeypatch)
    # task "easy": both always right; task "hard": the codec right on half the samples bf16 gets
    few = [("easy", 100, 100)] * 5 + [("hard", 100 * (i % 2), 100) for i in range(6)]
    many = [("easy", 100, 100)] * 50 + [("hard", 100 * (i % 2), 100) for i in range(60)]
    lo_f, hi_f = mod.ratio_interval(few)
    lo_m, hi_m = mod.ratio_interval(many)
    point = (500 + 300) / 1100  # the pooled ratio of `few`, and of `many` (same proportions)
    assert lo_f <= point <= hi_f and lo_m <= point <= hi_m
    assert hi_m - lo_m < hi_f - lo_f
    # per-task resampling: "easy" always contributes 5 x 100 to both sums, so the ratio never drops
    # below (500 + 0) / 1100 nor exceeds 1
    assert lo_f >= 500 / 1100 - 1e-9 and hi_f <= 1.0
    table = mod.paired([_row("bf16", "niah_single_1", i, 100) for i in range(3)]
                       + [_row("oscar", "niah_single_1", i, 100) for i in range(3)])
    assert all(t["ratio_ci95"] == [1.0, 1.0] for t in table)


def test_ratio_interval_is_95_percent_and_stratified(monkeypatch):
    mod = _load(monkeypatch)
    # one task, codec right on 1 of 3 samples bf16 gets: the resampled ratio is Binomial(3, 1/3) / 3,
    # with P(1) = 1/27 = 3.7% > 2.5%, so a 95% interval reaches 1 where a 90% one would stop at 2/3
    lo, hi = mod.ratio_interval([("t", 100, 100), ("t", 0, 100), ("t", 0, 100)])
    assert lo == 0.0 and hi == 1.0
    # two tasks, the codec equal to bf16 on one and 0 on the other: resampled within each task the
    # sums never move (1000 / 2000), so the interval is the point; pooled resampling would spread it
    pairs = [("a", 100, 100)] * 10 + [("b", 0, 100)] * 10
    assert mod.ratio_interval(pairs) == [0.5, 0.5]
