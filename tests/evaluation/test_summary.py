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


def test_ruler_figure_keeps_equal_scores_apart_and_names_partial_codecs():
    """Two codecs with the same score at the same length (two collapsed baselines at 0, say) are drawn
    side by side, not on top of each other, and a codec with only a partial needle mean (a hollow
    marker) still has its legend entry."""
    import matplotlib.pyplot as plt

    from oscar_cluster.evaluation.harness import ruler_figure

    def s(codec, task, length, score, tasks=1):
        return {"codec": codec, "task": task, "length": length, "score": score, "tasks": tasks}
    summary = [s("bf16", "niah_mean", 8192, 90.0, 2), s("bf16", "niah_mean", 32768, 70.0, 2),
               s("paper", "niah_mean", 8192, 0.0, 2), s("hadamard", "niah_mean", 8192, 0.0, 1),
               s("paper", "niah_single_1", 8192, 0.0), s("hadamard", "niah_single_1", 8192, 0.0),
               s("bf16", "niah_single_1", 8192, 100.0), s("bf16", "niah_single_1", 32768, 100.0)]
    fig = ruler_figure(summary)
    try:
        mean_ax, single_ax = fig.axes[0], fig.axes[1]
        zeros = [(ln.get_xdata()[0], ln.get_color()) for ln in single_ax.lines if ln.get_ydata()[0] == 0.0]
        assert len(zeros) == 2 and zeros[0][0] != zeros[1][0] and zeros[0][1] != zeros[1][1]
        assert all(abs(x - 8) <= 0.25 * (32 - 8) / 2 for x, _ in zeros)  # within their length's group, in K tokens
        hollow = [ln for ln in mean_ax.lines if ln.get_markerfacecolor() == "none"]
        assert len(hollow) == 1 and hollow[0].get_label() == "hadamard"
        assert sorted(t.get_text() for t in mean_ax.get_legend().get_texts()) == ["bf16", "hadamard", "paper"]
    finally:
        plt.close(fig)
    # one length only, and a wide sweep: still apart, and each length's group stays clear of the next
    for lengths in ((8192,), (4096, 8192, 131072)):
        rows = [s(c, "niah_single_1", n, 0.0) for c in ("a", "b", "c", "d", "e") for n in lengths]
        fig = ruler_figure(rows)
        try:
            xs = sorted(x for ln in fig.axes[0].lines for x in ln.get_xdata())
            assert len(set(xs)) == len(xs)
            groups = [xs[i:i + 5] for i in range(0, len(xs), 5)]
            assert all(g[-1] < h[0] for g, h in zip(groups, groups[1:]))
            assert all(g[0] < n / 1024 < g[-1] for g, n in zip(groups, lengths))
        finally:
            plt.close(fig)
