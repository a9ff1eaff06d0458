"""Summaries of per-sample rows (no model): the needle mean and the task count it covers."""

import csv

import pytest

from oscar_cluster.evaluation.harness import summarize, write_report


def test_needle_mean_counts_the_tasks_it_covers(tmp_path):
    """niah_mean averages the samples of the needle tasks that ran and says how many tasks those are,
    so a baseline run on two hard tasks is not read as comparable with a full 8-task mean."""
    def row(codec, task, length, score, i):
        return {"id": f"{codec}-{task}-{length}-{i}", "codec": codec, "task": task, "length": length,
                "score": score, "depth": None, "bits_per_element": 2.0}
    rows = [row("a", "niah_single_1", 4096, 100.0, 0), row("a", "niah_single_1", 4096, 50.0, 1),
            row("a", "niah_multikey_3", 4096, 0.0, 0), row("b", "niah_multikey_3", 4096, 30.0, 0),
            row("a", "vt", 4096, 10.0, 0)]
    by = {(s["codec"], s["task"]): s for s in summarize(rows)}
    assert by[("a", "niah_mean")]["score"] == pytest.approx(50.0)  # (100 + 50 + 0) / 3; vt is no needle task
    assert by[("a", "niah_mean")]["tasks"] == 2 and by[("a", "niah_mean")]["samples"] == 3
    assert by[("b", "niah_mean")]["tasks"] == 1 and by[("b", "niah_mean")]["score"] == 30.0
    assert by[("a", "vt")]["tasks"] == 1
    write_report(rows, tmp_path)
    with open(tmp_path / "summary.csv") as f:
        means = {r["codec"]: r["tasks"] for r in csv.DictReader(f) if r["task"] == "niah_mean"}
    assert means == {"a": "2", "b": "1"}
    assert (tmp_path / "ruler.png").stat().st_size > 1000
