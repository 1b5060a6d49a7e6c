"""Two CPU processes under torchrun (gloo) train exactly like one process with the doubled batch.

Both run the fast path (shared-prefix packing + span head inside DDP's forward). SFT's loss is one token mean
over every micro-batch of every process: this checks its world-size factor; unequal span lengths are checked
under gradient accumulation in tests/trainer/test_loop.py.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS = 3


def _args(run_dir: Path, cache: Path, batch_size: int, method: str) -> list[str]:
    return [
        "-m",
        "localdpo",
        "train",
        "--config",
        str(REPO / "experiments/configs/tiny.yaml"),
        f"run_dir={run_dir}",
        f"cache_dir={cache}",
        f"train.batch_size={batch_size}",
        f"method={method}",
        f"train.max_steps={MAX_STEPS}",
        "train.grad_accum=2",
        # Adam's first steps are ~lr·sign(g): a large eps makes the update a smooth function of the gradient,
        # so float summation-order noise (all-reduce vs one batch) cannot flip the sign of a near-zero update.
        "optim.adam_eps=1e-2",
        f"checkpoint.every={MAX_STEPS}",
        "eval.every=0",
        "eval.drift=false",
        "wandb.mode=disabled",
        "train.progress=false",
    ]


def _train_rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "train/loss" in r]


@pytest.mark.slow
@pytest.mark.parametrize("method", ["ldpo", "sft"])
def test_two_processes_match_one_process_with_the_doubled_batch(tmp_path, method):
    env = dict(os.environ, WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
    single = tmp_path / "single"
    subprocess.run(
        [sys.executable, *_args(single, tmp_path / "cache", batch_size=2, method=method)],
        cwd=REPO,
        env=env,
        check=True,
        capture_output=True,
    )
    ddp = tmp_path / "ddp"
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]
    result = subprocess.run(
        [*launch, *_args(ddp, tmp_path / "cache", batch_size=1, method=method)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr[-3000:]
    final = f"checkpoints/step-{MAX_STEPS:06d}/model.safetensors"
    one, two = load_file(single / final), load_file(ddp / final)
    from localdpo.models.loading import tiny_model

    start = dict(tiny_model(seed=0)[0].named_parameters())
    assert one.keys() == two.keys() and one.keys() <= start.keys()
    assert any(not torch.equal(one[name], start[name].detach()) for name in one)  # training moved the weights
    for name in one:
        torch.testing.assert_close(two[name], one[name], rtol=0, atol=2e-6, msg=name)
    single_rows, ddp_rows = _train_rows(single), _train_rows(ddp)
    assert all(r["perf/span_head"] == 1.0 for r in ddp_rows)  # the fast path ran under DDP
    assert all(r["perf/packing"] == float(method == "ldpo") for r in ddp_rows)
    single_losses, ddp_losses = [r["train/loss"] for r in single_rows], [r["train/loss"] for r in ddp_rows]
    assert len(single_losses) == len(ddp_losses) == MAX_STEPS
    torch.testing.assert_close(torch.tensor(ddp_losses), torch.tensor(single_losses), rtol=0, atol=1e-6)
    assert single_losses[-1] < single_losses[0]
    state = json.loads((ddp / f"checkpoints/step-{MAX_STEPS:06d}/state.json").read_text())
    assert state["world_size"] == 2 and state["consumed"] == MAX_STEPS * 2 * 2
