"""FSDP2 (`train.distributed=fsdp`) on CPU with gloo: 2 processes train like one process with the doubled batch,
sharded checkpoints survive kill -9 and resume bitwise, resume on another world size, two torchrun "nodes".

Tolerance (fp32): losses within 1e-6 and weights within 2e-6 of the single process, as for DDP
(tests/trainer/test_ddp.py): the gradient is reduce-scattered (a sum over 2 processes, then / 2) instead of
summed over one batch, so they agree to float summation order, not bitwise. Same world size: bitwise.
"""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from localdpo.models.loading import tiny_model
from localdpo.trainer import Trainer, load_config
from localdpo.trainer.sharded_checkpoint import read_sharded_state, read_sharded_weights

from .conftest import make_steers, tiny_config

REPO = Path(__file__).resolve().parents[2]
MAX_STEPS = 4
ENV = dict(os.environ, WANDB_MODE="disabled", TOKENIZERS_PARALLELISM="false", OMP_NUM_THREADS="1")
LAUNCH_2 = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2"]

STEERS = make_steers(12)


def _args(run_dir: Path, cache: Path, *overrides: str) -> list[str]:
    return [
        "-m",
        "localdpo",
        "train",
        "--config",
        str(REPO / "experiments/configs/tiny.yaml"),
        f"run_dir={run_dir}",
        f"cache_dir={cache}",
        f"train.max_steps={MAX_STEPS}",
        "train.grad_accum=2",
        "optim.adam_eps=1e-2",  # smooth near-zero updates (see tests/trainer/test_ddp.py)
        "checkpoint.every=2",
        "checkpoint.keep_last=0",
        "eval.every=0",
        "eval.steer_metrics=false",
        "wandb.mode=disabled",
        "train.progress=false",
        *overrides,
    ]


def _run(command: list[str]) -> None:
    result = subprocess.run(command, cwd=REPO, env=ENV, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-4000:]


def _rows(run_dir: Path) -> list[dict]:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "train/loss" in r]


def _final_eval(run_dir: Path) -> dict:
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    return [r for r in rows if "eval/rewards_margins" in r][-1]


def _step(run_dir: Path, step: int) -> Path:
    return run_dir / f"checkpoints/step-{step:06d}"


def _assert_weights_close(sharded: dict, full: dict, atol: float) -> None:
    assert set(full) <= set(sharded) and set(sharded) - set(full) <= {"lm_head.weight"}  # tied alias
    for name in full:
        torch.testing.assert_close(sharded[name], full[name], rtol=0, atol=atol, msg=name)


@pytest.mark.parametrize("lora", [True, False], ids=["lora", "full"])
def test_one_fsdp_process_with_a_live_reference_trains_bitwise_like_the_unsharded_trainer(
    tmp_path, smol_tokenizer, lora
):
    """FSDP on one process (its own one-process group) does the unsharded trainer's fp32 arithmetic (gathers
    are copies): with a live reference, LoRA's (the sharded policy with its adapter off) and full fine-tuning's
    (a sharded frozen copy), losses, held-out metrics (generation included) and the gathered final model are
    bit for bit the unsharded run's."""
    model, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    results = {}
    for strategy in ("ddp", "fsdp"):
        config = tiny_config(
            tmp_path / strategy,
            "train.max_steps=2",
            "train.batch_size=2",
            "train.grad_accum=2",
            f"train.distributed={strategy}",
            f"model.lora.enabled={lora}",
            "checkpoint.save_final=true",
        )
        trainer = Trainer(
            config, model=model, tokenizer=tokenizer, train_steers=STEERS[:6], eval_steers=STEERS[6:9]
        )
        results[strategy] = trainer.run()
        assert (
            not torch.distributed.is_initialized()
        )  # the one-process group is the trainer's, closed with it
    plain, sharded = results["ddp"], results["fsdp"]
    assert [r["train/loss"] for r in sharded.train_log] == [r["train/loss"] for r in plain.train_log]
    assert sharded.final == plain.final and "eval/uptake" in sharded.final
    weights = "adapter_model.safetensors" if lora else "model.safetensors"
    one, two = load_file(tmp_path / "ddp/final" / weights), load_file(tmp_path / "fsdp/final" / weights)
    assert one.keys() == two.keys() and len(one) > 0
    for name in one:
        assert torch.equal(one[name], two[name]), name


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """One process with batch 2 (DDP code path, no process group) and 2 FSDP processes with batch 1, `ldpo`
    through the packed span-head path with the reference cache; both evaluate with drift at start and end."""
    root = tmp_path_factory.mktemp("fsdp")
    cache = root / "cache"
    _run([sys.executable, *_args(root / "single", cache, "train.batch_size=2")])
    _run(
        [
            *LAUNCH_2,
            *_args(
                root / "fsdp",
                cache,
                "train.batch_size=1",
                "train.distributed=fsdp",
                "checkpoint.save_final=true",
            ),
        ]
    )
    return root


@pytest.mark.slow
def test_two_fsdp_processes_match_one_process_with_the_doubled_batch_ldpo(runs):
    single, fsdp = _rows(runs / "single"), _rows(runs / "fsdp")
    assert all(r["perf/packing"] == 1.0 and r["perf/span_head"] == 1.0 for r in fsdp)  # the fast path ran
    losses = [r["train/loss"] for r in single], [r["train/loss"] for r in fsdp]
    assert len(losses[0]) == len(losses[1]) == MAX_STEPS and losses[0][-1] < losses[0][0]
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=0, atol=1e-6)
    norms = [r["train/grad_norm"] for r in single], [r["train/grad_norm"] for r in fsdp]
    torch.testing.assert_close(torch.tensor(norms[1]), torch.tensor(norms[0]), rtol=1e-5, atol=0)
    # peak memory of each process (CPU: peak RSS), the max as perf/peak_memory_gb
    assert all(
        r["perf/peak_memory_gb"] == max(r["perf/peak_memory_gb_rank0"], r["perf/peak_memory_gb_rank1"]) > 0.1
        for r in fsdp
    )
    single_w = load_file(_step(runs / "single", MAX_STEPS) / "model.safetensors")
    _assert_weights_close(read_sharded_weights(_step(runs / "fsdp", MAX_STEPS)), single_w, atol=2e-6)
    state = json.loads((_step(runs / "fsdp", MAX_STEPS) / "state.json").read_text())
    assert state["world_size"] == 2 and state["consumed"] == MAX_STEPS * 2 * 2
    # evaluation (held-out margins, drift: direct model calls on gathered weights) agrees too
    eval_single, eval_fsdp = _final_eval(runs / "single"), _final_eval(runs / "fsdp")
    for key in ("eval/rewards_margins", "eval/preference_accuracy", "eval/drift_kl", "eval/chosen_nll"):
        assert abs(eval_fsdp[key] - eval_single[key]) <= 1e-5, key


@pytest.mark.slow
def test_the_final_fsdp_model_is_a_plain_hugging_face_directory(runs):
    from localdpo.models.loading import load_model

    model, _ = load_model(str(runs / "fsdp/final"))
    saved = read_sharded_weights(_step(runs / "fsdp", MAX_STEPS))
    for name, param in model.named_parameters():
        assert torch.equal(param.detach(), saved[name]), name


@pytest.mark.slow
def test_fsdp_sharded_checkpoint_resumes_bitwise_after_kill_9(runs, tmp_path):
    """A 2-process run killed (SIGKILL to torchrun and its workers) after its step-2 checkpoint and resumed
    ends bitwise equal to the uninterrupted one: losses and weights."""
    killed = tmp_path / "killed"
    command = [*LAUNCH_2, *_args(killed, runs / "cache", "train.batch_size=1", "train.distributed=fsdp")]
    process = subprocess.Popen(
        command,
        cwd=REPO,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 300
    while not _step(killed, 2).exists():
        assert process.poll() is None, "the run ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.02)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    assert not _step(killed, MAX_STEPS).exists()
    _run(command)
    uninterrupted, resumed = _rows(runs / "fsdp"), _rows(killed)
    assert [r["step"] for r in resumed] == list(range(1, MAX_STEPS + 1))
    assert [r["train/loss"] for r in resumed] == [r["train/loss"] for r in uninterrupted]
    full, again = (
        read_sharded_weights(_step(runs / "fsdp", MAX_STEPS)),
        read_sharded_weights(_step(killed, MAX_STEPS)),
    )
    assert full.keys() == again.keys()
    for name in full:
        assert torch.equal(full[name], again[name]), name


@pytest.mark.slow
def test_fsdp_resumes_on_another_world_size(runs, tmp_path):
    """The 2-process step-2 checkpoint loaded by one FSDP process: weights and AdamW state exactly as saved;
    trained on with batch 2 (the same global batch), losses and weights match the 2-process run's to fp32."""
    run_dir = tmp_path / "one"
    shutil.copytree(_step(runs / "fsdp", 2), _step(run_dir, 2))
    config = load_config(
        REPO / "experiments/configs/tiny.yaml",
        _args(
            run_dir,
            runs / "cache",
            "train.batch_size=2",
            "train.distributed=fsdp",
            "eval.at_start=false",
            "eval.drift=false",
        )[5:],
    )
    trainer = Trainer(config)
    try:
        trainer.setup()
        assert trainer.step == 2 and trainer.consumed == 2 * 2 * 2
        saved = read_sharded_weights(_step(run_dir, 2))
        for name, param in trainer.model.named_parameters():
            assert torch.equal(param.full_tensor(), saved[name]), name
        optimizer = read_sharded_state(_step(run_dir, 2), "optimizer")["state"]
        for name, param in trainer.model.named_parameters():
            for moment in ("exp_avg", "exp_avg_sq"):
                assert torch.equal(
                    trainer.optimizer.state[param][moment].full_tensor(), optimizer[name][moment]
                )
            assert float(trainer.optimizer.state[param]["step"]) == 2
        result = trainer.train()
    finally:
        trainer.close()
    assert not torch.distributed.is_initialized()  # the trainer's own one-process group is gone
    two = [r["train/loss"] for r in _rows(runs / "fsdp")][2:]
    torch.testing.assert_close(
        torch.tensor([r["train/loss"] for r in result.train_log]), torch.tensor(two), rtol=0, atol=1e-6
    )
    _assert_weights_close(
        read_sharded_weights(_step(run_dir, MAX_STEPS)),
        {
            k: v
            for k, v in read_sharded_weights(_step(runs / "fsdp", MAX_STEPS)).items()
            if k != "lm_head.weight"
        },
        atol=2e-6,
    )


@pytest.mark.slow
def test_two_fsdp_processes_match_one_process_with_the_doubled_batch_sft(tmp_path):
    cache = tmp_path / "cache"
    overrides = ("method=sft", "eval.at_start=false", "eval.drift=false")
    _run([sys.executable, *_args(tmp_path / "single", cache, "train.batch_size=2", *overrides)])
    _run(
        [
            *LAUNCH_2,
            *_args(tmp_path / "fsdp", cache, "train.batch_size=1", "train.distributed=fsdp", *overrides),
        ]
    )
    single, fsdp = _rows(tmp_path / "single"), _rows(tmp_path / "fsdp")
    assert all(r["perf/span_head"] == 1.0 for r in fsdp)
    torch.testing.assert_close(
        torch.tensor([r["train/loss"] for r in fsdp]),
        torch.tensor([r["train/loss"] for r in single]),
        rtol=0,
        atol=1e-6,
    )
    _assert_weights_close(
        read_sharded_weights(_step(tmp_path / "fsdp", MAX_STEPS)),
        load_file(_step(tmp_path / "single", MAX_STEPS) / "model.safetensors"),
        atol=2e-6,
    )


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.slow
def test_two_torchrun_nodes_with_c10d_rendezvous_train_like_one_process(runs, tmp_path):
    """`torchrun --nnodes 2 --nproc_per_node 1 --rdzv_backend c10d` started twice on this machine: two "nodes"
    of one process each meet at the rendezvous endpoint and train like the single process."""
    port = _free_port()
    launch = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nnodes",
        "2",
        "--nproc_per_node",
        "1",
        "--rdzv_backend",
        "c10d",
        "--rdzv_endpoint",
        f"localhost:{port}",
        "--rdzv_id",
        "localdpo-test",
    ]
    run_dir = tmp_path / "nodes"
    command = [
        *launch,
        *_args(
            run_dir,
            runs / "cache",
            "train.batch_size=1",
            "train.distributed=fsdp",
            "eval.at_start=false",
            "eval.drift=false",
        ),
    ]
    nodes = [
        subprocess.Popen(
            command, cwd=REPO, env=ENV, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        for _ in range(2)
    ]
    errors = [node.communicate(timeout=600)[1] for node in nodes]
    assert [node.returncode for node in nodes] == [0, 0], "\n".join(e[-3000:] for e in errors)
    state = json.loads((_step(run_dir, MAX_STEPS) / "state.json").read_text())
    assert state["world_size"] == 2
    torch.testing.assert_close(
        torch.tensor([r["train/loss"] for r in _rows(run_dir)]),
        torch.tensor([r["train/loss"] for r in _rows(runs / "single")]),
        rtol=0,
        atol=1e-6,
    )
