import csv

import numpy as np
import pytest

from localdpo.compare.report import (
    RunRecord,
    intervals_note,
    markdown_tables,
    primary_metric,
    summarize,
    write_csv,
    write_markdown,
)
from localdpo.compare.results import load_summary

from .conftest import records


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


def _spread_seeds_records():
    """`sft` right on no item; `spread` right on 10, 20 and 80 of 200 items in seeds 0, 1, 2 (per-seed
    differences 0.05, 0.10, 0.40). The bootstrap's lowest resamples (every seed drawn = seed 0) still sit near
    0.05 > 0, but the seed-level t interval, 0.183 +- 4.303 * 0.189 / sqrt(3) = [-0.287, 0.654], contains 0."""
    out = []
    for seed, right in enumerate((10, 20, 80)):
        out.append(RunRecord("sft", seed, {"task_accuracy": np.zeros(200)}))
        out.append(RunRecord("spread", seed, {"task_accuracy": (np.arange(200) < right).astype(float)}))
    return out


def test_a_difference_the_bootstrap_separates_but_the_seed_t_interval_does_not_is_not_separated(tmp_path):
    rows = summarize(_spread_seeds_records(), baseline="sft", n_boot=1000)
    spread = next(r for r in rows if r.method == "spread")
    assert spread.difference.low > 0
    assert spread.seed_test.interval.low == pytest.approx(-0.287, abs=1e-3)
    assert spread.seed_test.interval.high == pytest.approx(0.654, abs=1e-3)
    assert not spread.separated
    row = [
        line for line in markdown_tables(rows, baseline="sft").splitlines() if line.startswith("| spread |")
    ][-1]
    assert row.endswith("t [-28.7, 65.4] not separated |")
    write_csv(rows, tmp_path / "results.csv", baseline="sft")
    csv_row = next(r for r in load_summary(tmp_path) if r["method"] == "spread")
    assert csv_row["separated"] == "False" and csv_row["diff_ci_low"] > 0
    assert (
        csv_row["diff_t_low"] == pytest.approx(-0.287, abs=1e-3) and csv_row["holm_p"] == csv_row["diff_t_p"]
    )


def test_holm_line_names_the_variants_that_survive_and_leaves_out_the_starting_model():
    """Family (m = 2): `steady` (per-seed differences 0.50, 0.50, 0.51: p 4.4e-5) and `spread` (0.05, 0.10,
    0.40: t = 0.183 / 0.109 = 1.68, 2 df, p 0.235); `base` is a reference row, not a variant. Holm: 4.4e-5
    against 0.05/2 rejects (adjusted 2 * 4.4e-5 = 8.8e-5), then 0.235 against 0.05/1 does not (adjusted 0.235)."""
    recs = _spread_seeds_records() + [RunRecord("base", 0, {"task_accuracy": np.zeros(200)})]
    for seed, right in enumerate((100, 100, 102)):
        recs.append(RunRecord("steady", seed, {"task_accuracy": (np.arange(200) < right).astype(float)}))
    rows = summarize(recs, baseline="sft", n_boot=200)
    by = {r.method: r for r in rows}
    assert by["base"].seed_test is not None and by["base"].holm_p is None and by["sft"].holm_p is None
    assert by["steady"].holm_p == pytest.approx(2 * 4.385e-5, rel=1e-3)
    assert by["spread"].holm_p == pytest.approx(0.2354, abs=1e-4)
    assert markdown_tables(rows, baseline="sft").splitlines()[-1] == (
        "Holm correction over the m = 2 variants compared with `sft` on task accuracy (seed-level paired t test, "
        "2 df): at family-wise 0.05, `steady` survives (`steady` p 4.39e-05, adjusted 8.77e-05; `spread` p 0.235, "
        "adjusted 0.235)."
    )


def test_a_variant_whose_seeds_agree_exactly_counts_in_holm_m_with_p_1():
    """`exact` is right on 50 more items than `sft` in every seed (per-seed differences 0.25, 0.25, 0.25): its
    t test is undefined, but it was compared, so m = 3 and it enters with p 1. Sorted p: 4.385e-5, 0.2354, 1;
    adjusted: 3 * 4.385e-5, max(that, 2 * 0.2354) = 0.4708, max(that, 1 * 1) = 1."""
    recs = _spread_seeds_records()
    for seed, right in enumerate((100, 100, 102)):
        recs.append(RunRecord("steady", seed, {"task_accuracy": (np.arange(200) < right).astype(float)}))
        recs.append(RunRecord("exact", seed, {"task_accuracy": (np.arange(200) < 50).astype(float)}))
    rows = summarize(recs, baseline="sft", n_boot=200)
    by = {r.method: r for r in rows}
    assert by["exact"].seed_test is None and not by["exact"].separated
    assert by["steady"].holm_p == pytest.approx(3 * 4.385e-5, rel=1e-3)
    assert by["spread"].holm_p == pytest.approx(2 * 0.2354, abs=2e-4)
    assert by["exact"].holm_p == 1.0
    assert markdown_tables(rows, baseline="sft").splitlines()[-1] == (
        "Holm correction over the m = 3 variants compared with `sft` on task accuracy (seed-level paired t test, "
        "2 df): at family-wise 0.05, `steady` survives (`steady` p 4.39e-05, adjusted 0.000132; `spread` p 0.235, "
        "adjusted 0.471; `exact` t undefined (seeds agree exactly), counted as p 1)."
    )


def test_one_seed_has_no_seed_level_interval_and_no_verdict():
    recs = [
        RunRecord("sft", 0, {"task_accuracy": np.zeros(50)}),
        RunRecord("ldpo", 0, {"task_accuracy": np.ones(50)}),
    ]
    rows = summarize(recs, baseline="sft", n_boot=200)
    ldpo = next(r for r in rows if r.method == "ldpo")
    assert ldpo.difference.low == 1.0 and ldpo.seed_test is None and not ldpo.separated
    table = markdown_tables(rows, baseline="sft")
    assert "| ldpo | 100.0 [100.0, 100.0] t undefined (1 seed) not separated |" in table
    assert table.splitlines()[-1].startswith("Holm correction on task accuracy: not applied")


def test_without_task_accuracy_the_holm_family_is_on_uptake():
    """A comparison on a person's own steers has no task accuracy: its primary metric is uptake (else held-out
    preference accuracy), and the Holm family and line follow it. Same per-seed numbers as the test above, now
    as uptake; preference accuracy beside it never enters the family."""
    recs = [
        RunRecord(
            r.method,
            r.seed,
            {"uptake": r.items["task_accuracy"], "preference_accuracy": r.items["task_accuracy"]},
        )
        for r in _spread_seeds_records()
    ]
    assert primary_metric({"uptake", "preference_accuracy", "drift_kl"}) == "uptake"
    assert primary_metric({"preference_accuracy", "chosen_nll"}) == "preference_accuracy"
    assert primary_metric({"task_accuracy", "uptake"}) == "task_accuracy"
    rows = summarize(recs, baseline="sft", n_boot=200)
    family = {(r.method, r.metric) for r in rows if r.holm_p is not None}
    assert family == {("spread", "uptake")}
    assert (
        markdown_tables(rows, baseline="sft")
        .splitlines()[-1]
        .startswith(
            "Holm correction over the m = 1 variant compared with `sft` on uptake (seed-level paired t test, 2 df)"
        )
    )
    assert "seed-level p-values on uptake for the number of variants" in intervals_note("sft", "uptake")
