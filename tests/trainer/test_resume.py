"""Exact resume: a run stopped at step k and resumed ends bitwise equal to an uninterrupted run (CPU)."""

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from localdpo.models.loading import tiny_model
from localdpo.trainer import Trainer
from localdpo.trainer.checkpoint import latest_checkpoint, list_checkpoints

from .conftest import make_steers, tiny_config

REPO = Path(__file__).resolve().parents[2]
STEERS = make_steers(12)


def test_resume_in_process_is_bitwise_equal(tmp_path, smol_tokenizer):
    """6 steps of 2 x 2 accumulated pairs over 6 steers: the data stream crosses epochs between checkpoints."""
    model, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    overrides = (
        "train.max_steps=6",
        "train.batch_size=2",
        "train.grad_accum=2",
        "checkpoint.every=2",
        "checkpoint.keep_last=0",
        "eval.at_start=true",
    )

    def trainer(run_dir):
        config = tiny_config(run_dir, *overrides)
        return Trainer(
            config, model=model, tokenizer=tokenizer, train_steers=STEERS[:6], eval_steers=STEERS[6:9]
        )

    full = trainer(tmp_path / "full")
    full_result = full.run()
    assert [p.name for p in list_checkpoints(tmp_path / "full" / "checkpoints")][-1] == "step-000006"
    # A run killed after step 2: only its step-2 checkpoint survives.
    shutil.copytree(
        tmp_path / "full" / "checkpoints" / "step-000002",
        tmp_path / "resumed" / "checkpoints" / "step-000002",
    )
    resumed = trainer(tmp_path / "resumed")
    resumed_result = resumed.run()
    assert [row["step"] for row in resumed_result.train_log] == [3, 4, 5, 6]
    assert resumed_result.final["train/loss"] == full_result.final["train/loss"]
    assert [r["train/loss"] for r in resumed_result.train_log] == [
        r["train/loss"] for r in full_result.train_log[2:]
    ]
    for name, value in full.params.items():
        assert torch.equal(resumed.params[name], value), name
    assert resumed_result.final["eval/rewards_margins"] == full_result.final["eval/rewards_margins"]
    # the step-0 per-item values (what comparisons pair against) come back from the checkpoint
    assert resumed_result.history[0] == full_result.history[0] and resumed_result.history[0]["step"] == 0
    keys = {"preference_accuracy", "chosen_nll", "recurrence", "uptake"}  # the steers name no task
    assert full.initial_items.keys() == resumed.initial_items.keys() == keys
    for name, values in full.initial_items.items():
        assert (resumed.initial_items[name] == values).all(), name


def _command(run_dir: Path, cache: Path, max_steps: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "localdpo",
        "train",
        "--config",
        str(REPO / "experiments/configs/tiny.yaml"),
        f"run_dir={run_dir}",
        f"cache_dir={cache}",
        f"train.max_steps={max_steps}",
        "checkpoint.every=2",
        "checkpoint.keep_last=3",
        "eval.every=4",
        "eval.drift=false",
        "wandb.mode=disabled",
        "train.progress=false",
    ]


def _final_loss(run_dir: Path) -> float:
    import json

    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "train/loss" in r][-1]["train/loss"], [
        r["step"] for r in rows if "train/loss" in r
    ]


@pytest.mark.slow
def test_resume_after_a_real_kill_is_bitwise_equal(tmp_path):
    env = dict(os.environ, WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false")
    max_steps = 10
    subprocess.run(
        _command(tmp_path / "full", tmp_path / "cache", max_steps),
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )

    killed_dir = tmp_path / "killed"
    process = subprocess.Popen(
        _command(killed_dir, tmp_path / "cache", max_steps),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 300
    while not (killed_dir / "checkpoints" / "step-000004").exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    process.send_signal(signal.SIGKILL)
    assert process.wait() == -signal.SIGKILL
    survivor = latest_checkpoint(killed_dir / "checkpoints")
    assert survivor is not None and int(survivor.name.split("-")[1]) < max_steps

    subprocess.run(
        _command(killed_dir, tmp_path / "cache", max_steps),
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    final = f"step-{max_steps:06d}"
    full_weights = load_file(tmp_path / "full" / "checkpoints" / final / "model.safetensors")
    resumed_weights = load_file(killed_dir / "checkpoints" / final / "model.safetensors")
    assert full_weights.keys() == resumed_weights.keys()
    for name in full_weights:
        assert torch.equal(full_weights[name], resumed_weights[name]), name
    full_loss, full_steps = _final_loss(tmp_path / "full")
    resumed_loss, resumed_steps = _final_loss(killed_dir)
    assert resumed_loss == full_loss
    assert (
        resumed_steps == full_steps == list(range(1, max_steps + 1))
    )  # metrics after the checkpoint were dropped


@pytest.mark.parametrize("corrupt", ["manifest", "weights"])
def test_resume_skips_a_broken_latest_checkpoint(tmp_path, smol_tokenizer, corrupt):
    model, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    config = tiny_config(
        tmp_path / "run", "train.max_steps=2", "checkpoint.every=1", "checkpoint.keep_last=0"
    )
    Trainer(config, model=model, tokenizer=tokenizer, train_steers=STEERS[:4], eval_steers=STEERS[4:6]).run()
    newest = tmp_path / "run" / "checkpoints" / "step-000002"
    if corrupt == "manifest":
        (newest / "manifest.json").unlink()
    else:
        data = bytearray((newest / "model.safetensors").read_bytes())
        data[-3] ^= 0x01
        (newest / "model.safetensors").write_bytes(bytes(data))
    trainer = Trainer(
        config, model=model, tokenizer=tokenizer, train_steers=STEERS[:4], eval_steers=STEERS[4:6]
    )
    with pytest.warns(UserWarning, match="does not verify"):
        trainer.setup()
    assert trainer.step == 1 and trainer.consumed == 4
    trainer.close()
