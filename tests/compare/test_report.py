import csv

import numpy as np

from localdpo.compare.plots import accuracy_over_steps, accuracy_vs_drift
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


def test_plots_are_written(tmp_path):
    recs = records()
    rows = summarize(recs, n_boot=200)
    for path in (accuracy_over_steps(recs, tmp_path / "a.png"), accuracy_vs_drift(rows, tmp_path / "b.png")):
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
