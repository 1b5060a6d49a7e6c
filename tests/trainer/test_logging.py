import json
import time
from pathlib import Path

import pytest

from localdpo.models.loading import tiny_model
from localdpo.trainer import Trainer
from localdpo.trainer.logging import read_offline_run, resolve_mode, run_line

from .conftest import make_steers, tiny_config

STEERS = make_steers(12)


def test_offline_run_holds_config_metrics_and_summary(tmp_path, smol_tokenizer, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    model, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    config = tiny_config(
        tmp_path / "run",
        "wandb.mode=auto",
        "wandb.group=cmp-1",
        "wandb.tags=a,b",
        "method=dpo",
        "train.max_steps=3",
        "eval.at_start=true",
        "eval.drift=true",
        "eval.drift_num_prompts=1",
        "eval.drift_max_new_tokens=2",
    )
    Trainer(config, model=model, tokenizer=tokenizer, train_steers=STEERS[:4], eval_steers=STEERS[4:6]).run()
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*"))
    assert len(runs) == 1
    run = read_offline_run(runs[0])
    deadline = (
        time.monotonic() + 120
    )  # W&B's service process may still be flushing the file on a loaded machine
    while not run["complete"] and time.monotonic() < deadline:
        time.sleep(0.5)
        run = read_offline_run(runs[0])
    assert run["complete"]
    assert run["group"] == "cmp-1" and run["name"] == "run"
    assert run["config"]["method"] == "dpo"
    assert run["config"]["optim"]["lr"] == 1e-3
    local = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    train_rows = [r for r in run["history"] if "train/loss" in r]
    assert [r["_step"] for r in train_rows] == [1, 2, 3]
    assert [r["train/loss"] for r in train_rows] == [r["train/loss"] for r in local if "train/loss" in r]
    for key in (
        "rewards/chosen",
        "rewards/rejected",
        "rewards/margins",
        "tokens/chosen_span",
        "tokens/rejected_span",
        "perf/tokens_per_s",
        "perf/peak_memory_gb",
        "train/lr",
        "train/grad_norm",
    ):
        assert key in train_rows[0], key
    eval_rows = [r for r in run["history"] if "eval/preference_accuracy" in r]
    assert [r["_step"] for r in eval_rows] == [0, 3]
    assert eval_rows[0]["eval/rewards_margins"] == 0.0 and eval_rows[0]["eval/drift_kl"] == pytest.approx(
        0.0, abs=1e-6
    )
    assert {"eval/chosen_nll", "eval/drift_kl"} <= set(eval_rows[1])
    assert run["summary"]["final/train/loss"] == train_rows[-1]["train/loss"]
    assert run["summary"]["final/eval/rewards_margins"] == eval_rows[-1]["eval/rewards_margins"]


def test_disabled_writes_no_wandb_run(tmp_path, smol_tokenizer):
    model, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    config = tiny_config(tmp_path / "run", "wandb.mode=disabled", "train.max_steps=1")
    Trainer(config, model=model, tokenizer=tokenizer, train_steers=STEERS[:4], eval_steers=STEERS[4:6]).run()
    assert not (tmp_path / "run" / "wandb").exists()
    assert (tmp_path / "run" / "metrics.jsonl").is_file()


def test_auto_mode_follows_the_environment(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    assert resolve_mode("auto") == "offline"
    monkeypatch.setenv("WANDB_API_KEY", "x" * 40)
    assert resolve_mode("auto") == "online"
    monkeypatch.setenv("WANDB_MODE", "disabled")
    assert resolve_mode("auto") == "disabled"
    assert resolve_mode("offline") == "offline"


def test_run_line_says_where_the_run_is_and_how_to_upload_it():
    path = Path("runs/ldpo-seed0/wandb/offline-run-1")
    assert run_line("offline", path) == f"W&B: offline run saved; upload it with: wandb sync {path}"
    assert (
        run_line("online", path, "https://wandb.ai/u/p/runs/x") == "W&B: run at https://wandb.ai/u/p/runs/x"
    )


def _wandb_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if "wandb" in line.lower() or "w&b" in line.lower()]


def test_offline_runs_print_one_line_each_not_wandbs_history_and_summary(tmp_path, smol_tokenizer, capfd):
    """Regression: `make compare` printed W&B's banner and its dozens-of-lines run summary after every run."""
    model, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    for name in ("a", "b"):
        config = tiny_config(tmp_path / name, "wandb.mode=offline", "train.max_steps=2")
        Trainer(
            config, model=model, tokenizer=tokenizer, train_steers=STEERS[:4], eval_steers=STEERS[4:6]
        ).run()
    captured = capfd.readouterr()
    lines = _wandb_lines(captured.out + captured.err)
    runs = [next((tmp_path / name / "wandb").glob("offline-run-*")) for name in ("a", "b")]
    assert lines == [f"W&B: offline run saved; upload it with: wandb sync {run}" for run in runs]


def test_verbose_shows_wandbs_own_output(tmp_path, smol_tokenizer, capfd, monkeypatch):
    monkeypatch.delenv("WANDB_SILENT", raising=False)
    model, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    config = tiny_config(tmp_path / "run", "wandb.mode=offline", "wandb.verbose=true", "train.max_steps=2")
    Trainer(config, model=model, tokenizer=tokenizer, train_steers=STEERS[:4], eval_steers=STEERS[4:6]).run()
    captured = capfd.readouterr()
    lines = _wandb_lines(captured.out + captured.err)
    assert len(lines) > 5 and all(line.startswith("wandb:") for line in lines)
    assert any("wandb sync" in line for line in lines)
