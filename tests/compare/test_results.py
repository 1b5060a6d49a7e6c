import json

import numpy as np
import pytest

from localdpo.compare import results
from localdpo.compare.report import summarize, write_csv
from localdpo.compare.results import agreement_table, load_records, load_summary, load_wandb_curves

from .conftest import records


def _write_records(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows) + "\n", encoding="utf-8")


def test_the_summary_reads_back_numbers_as_floats_and_text_as_text(tmp_path):
    write_csv(summarize(records(), baseline="sft", n_boot=200), tmp_path / "results.csv", baseline="sft")
    rows = load_summary(tmp_path)
    ldpo = next(r for r in rows if r["method"] == "ldpo" and r["metric"] == "task_accuracy")
    assert ldpo["mean"] == 1.0 and isinstance(ldpo["n_seeds"], float)
    assert ldpo["separated"] in ("True", "False") and ldpo["phase"] == "final"
    sft = next(r for r in rows if r["method"] == "sft" and r["metric"] == "task_accuracy")
    assert sft["diff_vs_sft"] == "" and sft["holm_p"] == ""  # the baseline has no difference: empty, not 0


def test_records_are_read_by_phase(tmp_path):
    _write_records(
        tmp_path / "records.jsonl",
        [
            {"phase": "final", "method": "sft", "seed": 0, "items": {"task_accuracy": [1.0, 0.0]}},
            {"method": "old", "seed": 0, "items": {}},  # written before phases existed: a final run
            {"phase": "selection", "method": "sft", "overrides": {"optim.lr": 1e-5}, "metrics": {"x": 1.0}},
        ],
    )
    assert [r["method"] for r in load_records(tmp_path)] == ["sft", "old"]
    assert [r["overrides"] for r in load_records(tmp_path, "selection")] == [{"optim.lr": 1e-5}]


def test_agreement_counts_items_fixed_and_broken_against_the_starting_model(tmp_path):
    """base right on items 0, 1; ldpo seed 0 right on 1, 2, 3 (fixed 2, broken 1), seed 1 right on 0, 1, 2
    (fixed 1, broken 0): means 1.5 fixed, 0.5 broken, over 5 items of which base had 2 right."""
    base = [1, 1, 0, 0, 0]
    _write_records(
        tmp_path / "records.jsonl",
        [
            {"method": "base", "seed": 0, "items": {"task_accuracy": base}},
            {"method": "ldpo", "seed": 0, "items": {"task_accuracy": [0, 1, 1, 1, 0]}},
            {"method": "ldpo", "seed": 1, "items": {"task_accuracy": [1, 1, 1, 0, 0]}},
            {"method": "sft", "seed": 0, "items": {"uptake": [1, 1, 1, 1, 1]}},  # no task accuracy: left out
        ],
    )
    assert agreement_table(tmp_path).splitlines() == [
        "| method | fixed (mean over seeds) | broken | items | base right |",
        "|---|---|---|---|---|",
        "| ldpo | 1.5 | 0.5 | 5 | 2 |",
    ]
    assert agreement_table(tmp_path, reference="nobody") == f"no `nobody` run with `task_accuracy` in {tmp_path}"


def test_wandb_curves_are_keyed_by_run_and_metric(tmp_path, monkeypatch):
    """The offline runs' histories (read by `read_offline_run`, tested against real W&B runs in
    tests/trainer/test_logging.py) become per-metric (step, value) series; W&B's own `_` keys are left out."""
    for name in ("sft-seed0", "ldpo-seed0"):
        (tmp_path / "runs" / name / "wandb" / "offline-run-1").mkdir(parents=True)
    fake = {
        "sft-seed0": [{"_step": 1, "trainer/step": 1, "train/loss": 2.0}, {"_step": 2, "train/loss": 1.5}],
        "ldpo-seed0": [{"_step": 1, "train/loss": np.float64(0.5), "note": "text"}],
    }

    def read_offline_run(run_dir):
        name = run_dir.parent.parent.name
        return {"name": name if name == "sft-seed0" else "", "history": fake[name]}

    monkeypatch.setattr("localdpo.trainer.logging.read_offline_run", read_offline_run)
    curves = load_wandb_curves(tmp_path)
    assert curves == {
        "sft-seed0": {"trainer/step": [(1, 1.0)], "train/loss": [(1, 2.0), (2, 1.5)]},
        "ldpo-seed0": {"train/loss": [(1, 0.5)]},
    }
    assert results.load_wandb_curves(tmp_path / "nothing") == {}


def test_a_missing_summary_is_a_clear_error(tmp_path):
    with pytest.raises(FileNotFoundError, match="results.csv"):
        load_summary(tmp_path)
