import json

from localdpo.config import save_config
from localdpo.export.modelcard import run_summary
from localdpo.trainer.config import RunConfig


def test_a_run_logged_before_the_margin_rename_keeps_its_card_numbers(tmp_path):
    """`eval/margin` (runs trained before it became `eval/rewards_margins`) is read under today's key; the
    card shows the first and the last evaluation, not the training rows between."""
    run = tmp_path / "run"
    run.mkdir()
    save_config(RunConfig(), run / "config.yaml")
    rows = [
        {"step": 0, "eval/margin": 0.0, "eval/preference_accuracy": 0.0},
        {"step": 1, "train/loss": 0.69},
        {"step": 2, "eval/margin": 0.25, "eval/preference_accuracy": 0.5},
        {"step": 4, "eval/rewards_margins": 0.75, "eval/preference_accuracy": 1.0},
    ]
    (run / "metrics.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    evaluations = run_summary(run).evaluations
    assert [e["step"] for e in evaluations] == [0, 4]
    assert [e["eval/rewards_margins"] for e in evaluations] == [0.0, 0.75]
    assert all("eval/margin" not in e for e in evaluations)
