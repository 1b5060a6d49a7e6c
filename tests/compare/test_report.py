import csv
import struct

import numpy as np
import pytest

from localdpo.compare.plots import (
    accuracy_over_steps,
    accuracy_vs_drift,
    draw_accuracy_over_steps,
    draw_accuracy_vs_drift,
)
from localdpo.compare.report import RunRecord, markdown_tables, summarize, write_csv, write_markdown


def records():
    rng = np.random.default_rng(0)
    out = [RunRecord("base", 0, {"task_accuracy": np.zeros(40), "drift_kl": np.zeros(40)})]
    for seed in range(3):
        out.append(
            RunRecord(
                "sft",
                seed,
                {"task_accuracy": (rng.random(40) < 0.3).astype(float), "drift_kl": rng.random(40) * 0.1},
                history=[{"step": 0, "task_accuracy": 0.0}, {"step": 10, "task_accuracy": 0.3}],
            )
        )
        out.append(
            RunRecord(
                "ldpo",
                seed,
                {"task_accuracy": np.ones(40), "drift_kl": rng.random(40) * 0.1 + 1.0},
                history=[{"step": 0, "task_accuracy": 0.0}, {"step": 10, "task_accuracy": 1.0}],
            )
        )
    return out


def test_summary_pairs_against_baseline_and_writes_files(tmp_path):
    rows = summarize(records(), baseline="sft", n_boot=500)
    by = {(r.method, r.metric): r for r in rows}
    assert by[("ldpo", "task_accuracy")].value.mean == 1.0
    assert by[("ldpo", "task_accuracy")].difference.low > 0
    assert by[("sft", "task_accuracy")].difference is None
    assert by[("base", "task_accuracy")].n_seeds == 1
    # one-seed base is paired with sft by item: sft minus... base minus sft is negative
    assert by[("base", "task_accuracy")].difference.mean < 0

    table = markdown_tables(rows, baseline="sft")
    lines = table.splitlines()
    assert lines[0] == "| method | seeds | task accuracy (%) | drift KL |"
    assert lines[3].startswith("| sft | 3 | ")
    assert "| ldpo | 3 | 100.0 [100.0, 100.0] | " in table
    ldpo_difference = [line for line in lines if line.startswith("| ldpo |")][-1]
    # more accurate than sft (better), but more drift (worse): each column judged in its own direction
    assert ldpo_difference.split("|")[2].strip().endswith("better")
    assert ldpo_difference.split("|")[3].strip().endswith("worse")

    write_csv(rows, tmp_path / "results.csv", baseline="sft")
    with open(tmp_path / "results.csv") as handle:
        table_rows = list(csv.DictReader(handle))
    assert len(table_rows) == 6 and table_rows[0]["method"] == "base"
    write_markdown(rows, tmp_path / "results.md", baseline="sft", title="t", notes=["3 seeds"])
    assert (tmp_path / "results.md").read_text().startswith("# t\n")


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def test_accuracy_over_steps_draws_one_mean_line_per_method(tmp_path):
    fig = draw_accuracy_over_steps(records())
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["sft", "ldpo"]  # `base` has no history
    assert lines["sft"].get_xdata().tolist() == [0, 10]
    assert lines["sft"].get_ydata() == pytest.approx([0.0, 30.0])  # percent, mean over 3 seeds
    assert lines["ldpo"].get_ydata() == pytest.approx([0.0, 100.0])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["sft", "ldpo"]
    assert len(ax.collections) == 2  # one min..max band per method
    assert ax.get_ylabel() == "task accuracy (%)"
    # the file is that figure: 6.4 x 4.0 inches at 120 dpi
    assert _png_size(accuracy_over_steps(records(), tmp_path / "a.png")) == (768, 480)


def test_accuracy_vs_drift_draws_each_method_at_its_means(tmp_path):
    rows = summarize(records(), n_boot=200)
    by = {(r.method, r.metric): r.value for r in rows}
    (ax,) = draw_accuracy_vs_drift(rows).axes
    points = {c.get_label(): c.lines[0].get_xydata().tolist() for c in ax.containers}
    assert list(points) == ["base", "sft", "ldpo"]
    for method, [[drift, accuracy]] in points.items():
        assert drift == pytest.approx(by[(method, "drift_kl")].mean)
        assert accuracy == pytest.approx(by[(method, "task_accuracy")].mean * 100)
    assert points["ldpo"][0][1] == pytest.approx(100.0) and points["base"][0] == pytest.approx([0.0, 0.0])
    assert _png_size(accuracy_vs_drift(rows, tmp_path / "b.png")) == (768, 480)
