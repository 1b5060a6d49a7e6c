"""Steering in rounds: fresh prompts per round, the yield, the config and what stays out of old fingerprints,
the tables by round; end to end on the `tiny` model (a task it gets wrong at its first token), and a
comparison killed between rounds that resumes to the uninterrupted tables."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from localdpo.compare import resume
from localdpo.compare.config import load_compare_config, preset_path, save_compare_config
from localdpo.compare.report import RunRecord, summarize
from localdpo.compare.rounds import round_prompts, yield_items
from localdpo.compare.rounds_report import rounds_overview
from localdpo.config import ConfigError, to_dict
from localdpo.reference.fingerprint import content_hash
from localdpo.steers.steer import Steer, load_steers
from localdpo.tasks import get_task, split_of

REPO = Path(__file__).resolve().parents[2]
SAY = REPO / "tests" / "data" / "say_task.py"


def test_each_round_gets_the_next_block_of_unused_train_prompts():
    """Round 1 made its steers from the first 5 prompts of the seeded train sequence; round 2 gets the next 3,
    round 3 the 3 after; with round 1's steers from a file, its prompts are skipped wherever they fall."""
    task = get_task("addition")
    sequence = [p.id for p in task.prompts(20, 0, "train")]
    rounds = {
        r: [p.id for p in round_prompts(task, seed=0, first=5, per_round=3, round_=r)] for r in (2, 3, 4)
    }
    assert rounds == {2: sequence[5:8], 3: sequence[8:11], 4: sequence[11:14]}
    assert all(split_of(prompt) == "train" for ids in rounds.values() for prompt in ids)
    used = frozenset({sequence[0], sequence[2]})
    from_file = {
        r: [p.id for p in round_prompts(task, seed=0, first=0, per_round=3, round_=r, used=used)]
        for r in (2, 3)
    }
    assert from_file == {2: [sequence[1], *sequence[3:5]], 3: sequence[5:8]}
    with pytest.raises(ValueError, match="round_ must be >= 2"):
        round_prompts(task, seed=0, first=5, per_round=3, round_=1)


def test_yield_is_one_where_a_prompt_gave_a_steer():
    task = get_task("addition")
    prompts = task.prompts(4, 0, "train")
    steers = [
        Steer(prompt="p", prefix="", rejected="1", chosen="2", meta={"prompt_id": prompts[i].id})
        for i in (1, 3)
    ]
    assert yield_items(prompts, steers).tolist() == [0.0, 1.0, 0.0, 1.0]
    assert yield_items(prompts, []).tolist() == [0.0] * 4


def test_rounds_config_is_checked_and_names_each_later_rounds_run():
    tiny = preset_path("tiny")
    with pytest.raises(ConfigError, match=r"rounds.count=1: must be >= 2 \(rounds: null is the one-round"):
        load_compare_config(tiny, ["rounds.count=1"])
    with pytest.raises(ConfigError, match="rounds.train_prompts=0: must be >= 1"):
        load_compare_config(tiny, ["rounds.train_prompts=0"])
    with pytest.raises(ConfigError, match="rounds need a task"):
        load_compare_config(tiny, ["task=null", "rounds.count=2"])
    with pytest.raises(ConfigError, match="rounds.reference=start with variant 'ldpo'.s loss.reference=live"):
        load_compare_config(
            tiny,
            [
                "rounds.reference=start",
                "variants={ldpo: [method=ldpo, loss.reference=live]}",
                "baseline=ldpo",
            ],
        )
    config = load_compare_config(tiny, ["rounds.count=3", "rounds.max_steps=5"])
    assert config.rounds.reference.value == "previous"  # the default, as in iterative RPO
    later = config.run_config("sft", 1, round_=3)
    assert later.run_dir.endswith("runs/sft-seed1-round3") and later.wandb.name == "tiny/sft/seed1/round3"
    assert later.train.max_steps == 5 and later.eval.at_start is False
    assert config.run_config("sft", 1).train.max_steps == 2  # round 1: the comparison's own budget


def test_without_rounds_no_fingerprint_changes(tmp_path):
    """A comparison saved before `rounds:` existed resumes (the key is absent, null now); round 1 of a
    comparison in rounds runs exactly the runs of the one-round comparison."""
    saved = tmp_path / resume.CONFIG_NAME
    plain = load_compare_config(preset_path("tiny"), [f"out_dir={tmp_path}"])
    save_compare_config(plain, saved)
    saved.write_text(
        "\n".join(line for line in saved.read_text().splitlines() if not line.startswith("rounds:"))
    )
    assert "\nrounds:" not in saved.read_text()
    resume.check_config(saved, plain)
    rounds = load_compare_config(preset_path("tiny"), [f"out_dir={tmp_path}", "rounds.count=2"])
    with pytest.raises(resume.ResumeError, match=r"rounds.count=\(unset\) then, 2 now"):
        resume.check_config(saved, rounds)
    for label in plain.variants:
        assert to_dict(rounds.run_config(label, 1)) == to_dict(plain.run_config(label, 1))
    # the starting model's steers of a one-round comparison: the key as before rounds existed
    before = {
        "task": "addition",
        "steers": to_dict(plain.steers),
        "eval_batch_size": plain.eval_batch_size,
        "validation_prompts": None,
        **_inputs(),
    }
    assert resume.steers_key(plain, "addition", _inputs()) == content_hash(before)
    assert resume.steers_key(rounds, "addition", _inputs()) != content_hash(before)  # they carry `round`


def _inputs() -> dict:
    return {"localdpo": "0.1.0", "device": "cpu", "starting model": "a" * 64, "tokenizer": "b" * 64}


def _records(round_: int, shift: float) -> list[RunRecord]:
    """sft and ldpo on 4 items x 2 seeds: ldpo's accuracy is sft's + `shift` on every item; yields 0.5."""
    sft = np.array([[1, 0, 0, 1], [1, 1, 0, 0]], dtype=float)
    out = [RunRecord("base", 0, {"task_accuracy": np.zeros(4)}, round=round_)]
    for seed in (0, 1):
        yields = np.array([1.0, 0.0, 1.0, 0.0])
        out.append(RunRecord("sft", seed, {"task_accuracy": sft[seed], "yield": yields}, round=round_))
        ldpo = np.clip(sft[seed] + shift, 0, 1)
        out.append(RunRecord("ldpo", seed, {"task_accuracy": ldpo, "yield": yields}, round=round_))
    return out


def test_the_overview_gives_each_metric_by_round_with_the_difference_against_the_baseline():
    """sft: 2 of 4 right in both seeds = 50.0%; ldpo in round 2 is sft + 1 on every item = 100.0% (difference
    +50.0, the same in both seeds: the t interval is undefined); the start column is the base row (0.0)."""
    by_round = {
        1: summarize(_records(1, 0.0), baseline="sft"),
        2: summarize(_records(2, 1.0), baseline="sft"),
    }
    text = rounds_overview(by_round, baseline="sft")
    lines = text.splitlines()
    assert "### Task accuracy (%) by round" in lines
    assert "| method | start | round 1 | round 2 |" in lines
    sft_row = next(line for line in lines if line.startswith("| sft | 0.0 "))
    assert sft_row.split(" | ")[2].startswith("50.0 [") and sft_row.split(" | ")[3].startswith("50.0 [")
    ldpo_row = next(line for line in lines if line.startswith("| ldpo | 0.0 "))
    assert ldpo_row.split(" | ")[3].startswith("100.0 [100.0, 100.0]")
    differences = [
        line for line in lines if line.startswith("| ldpo | 0.0 [0.0, 0.0] t [0.0, 0.0] not separated")
    ]
    assert len(differences) == 2  # task accuracy and yield in round 1: equal to sft
    assert "| ldpo | 0.0 [0.0, 0.0] t [0.0, 0.0] not separated | 50.0 [" in text
    assert "t undefined (seeds agree exactly) not separated |" in text
    assert "### Yield (%) by round" in lines


# ---------------------------------------------------------------------------------------------- end to end


def _argv(out: Path, cache: Path) -> list[str]:
    """The tiny preset in 3 rounds on the `say` task: 2 variants x 1 seed, round 1's steers from 6 prompts,
    4 fresh prompts and 2 steps in each later round: 6 runs."""
    return [
        "compare",
        "--preset",
        "tiny",
        "--task",
        f"{SAY}:Say",
        "--out",
        str(out),
        "--rounds",
        "3",
        f"run.cache_dir={cache}",
        "seeds=[0]",
        "variants={sft: [method=sft], ldpo: [method=ldpo]}",
        "steers.train_prompts=6",
        "steers.heldout_prompts=4",
        "rounds.train_prompts=4",
        "rounds.max_steps=2",
    ]


@pytest.fixture(scope="module")
def rounds_out(tmp_path_factory):
    from localdpo.cli import main

    out = tmp_path_factory.mktemp("rounds") / "whole"
    assert main([*_argv(out, out.parent / "cache"), "run.wandb.mode=disabled"]) == 0
    return out


@pytest.mark.slow
def test_each_round_steers_its_own_models_mistakes_on_fresh_prompts(rounds_out, fresh_task_registry):
    out = rounds_out
    first = load_steers(out / "steers_train.jsonl")
    assert {s.round for s in first} == {1} and {s.rejected_by.split("@")[0] for s in first} == {"tiny"}
    seen = {s.meta["prompt_id"] for s in first} | {
        s.meta["prompt_id"] for s in load_steers(out / "steers_heldout.jsonl")
    }
    for round_ in (2, 3):
        by_chain = {
            label: load_steers(out / "rounds" / f"round{round_}" / f"steers_{label}-seed0.jsonl")
            for label in ("sft", "ldpo")
        }
        prompts = {label: {s.meta["prompt_id"] for s in steers} for label, steers in by_chain.items()}
        assert all(split_of(p) == "train" for ids in prompts.values() for p in ids)
        assert seen.isdisjoint(prompts["sft"] | prompts["ldpo"])  # never an earlier round's prompt
        for label, steers in by_chain.items():
            assert {s.round for s in steers} == {round_}
            assert {s.rejected_by.split("@")[0] for s in steers} == {f"tiny/{label}-seed0-round{round_ - 1}"}
        seen |= prompts["sft"] | prompts["ldpo"]
        # the run continues the previous round's run of its own chain: its fingerprint names that run's
        record = json.loads((out / "runs" / f"ldpo-seed0-round{round_}" / "record.json").read_text())
        before = out / "runs" / ("ldpo-seed0" if round_ == 2 else "ldpo-seed0-round2") / "record.json"
        assert record["fingerprint"]["continues"] == content_hash(
            json.loads(before.read_text())["fingerprint"]
        )
        assert (
            record["fingerprint"]["rounds reference"] == "previous"
            and record["fingerprint"]["round"] == round_
        )
    # a round's weights go once the next round has its record; the last round's are not kept
    assert not list(out.glob("runs/*/weights"))


@pytest.mark.slow
def test_results_give_every_round_with_its_yield_and_the_plot(rounds_out):
    out = rounds_out
    text = (out / "results.md").read_text()
    assert text.startswith(
        "# localdpo comparison `tiny`: say steers, tiny, round 3 of 3 (every round below)\n"
    )
    for heading in (
        "## By round",
        "### Task accuracy (%) by round",
        "### Yield (%) by round",
        "## Round 3 (the table at the top)",
        "## Round 2",
        "## Round 1",
    ):
        assert f"\n{heading}\n" in text, heading
    assert "Hyperparameters: as written in the config, the same in every round (no selection)" in text
    assert "| method | start | round 1 | round 2 | round 3 |" in text
    rows = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    assert sorted({(r["method"], r["round"]) for r in rows}) == sorted(
        {(m, r) for m in ("base", "sft", "ldpo") for r in (1, 2, 3)}
    )
    for row in rows:
        if row["method"] != "base":
            steers = 6 if row["round"] == 1 else 4
            assert len(row["items"]["yield"]) == steers
            assert len(row["items"]["task_accuracy"]) == 4  # the same held-out prompts every round
    table = (out / "rounds.csv").read_text().splitlines()
    assert table[0].endswith(",task,phase,round")
    assert {line.rsplit(",", 1)[1] for line in table[1:]} == {"1", "2", "3"}
    assert (out / "accuracy_over_rounds.png").read_bytes()[:4] == b"\x89PNG"


def _tables(out: Path) -> tuple[list[str], list[str], list[dict]]:
    """results.md less its wall-time and resume notes, rounds.csv, records.jsonl with run_dir relative."""
    markdown = [
        line
        for line in (out / "results.md").read_text().splitlines()
        if "wall time" not in line and not line.startswith("- Resumed:")
    ]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    for record in records:
        record["run_dir"] = str(Path(record["run_dir"]).relative_to(out)) if record.get("run_dir") else None
    return markdown, (out / "rounds.csv").read_text().splitlines(), records


@pytest.mark.slow
def test_a_comparison_killed_between_rounds_resumes_to_the_uninterrupted_tables(rounds_out, tmp_path):
    """Killed (SIGKILL) once round 2's first steers are written, after every round-1 run, before round 2 has a
    record; the same command again keeps round 1's runs and redoes the rest."""
    out = tmp_path / "killed"
    command = [sys.executable, "-m", "localdpo", *_argv(out, tmp_path / "cache")]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="disabled", HF_HUB_OFFLINE="1")
    victim = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    cut = out / "rounds" / "round2" / "steers_sft-seed0.json"
    deadline = time.monotonic() + 600
    while not cut.exists():
        assert victim.poll() is None, "the comparison ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(victim.pid, signal.SIGKILL)
    assert victim.wait() == -signal.SIGKILL
    assert (out / "runs" / "ldpo-seed0" / resume.RECORD_NAME).is_file()
    assert not (out / "runs" / "sft-seed0-round2" / resume.RECORD_NAME).exists()

    resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    kept = [
        line.split()[2] for line in resumed.stdout.splitlines() if line.startswith("[compare] kept runs/")
    ]
    assert kept == ["runs/sft-seed0", "runs/ldpo-seed0"]
    assert "training sft seed 0 from its round 1 weights" in resumed.stdout
    assert _tables(out) == _tables(rounds_out)


def test_a_round_starts_from_exactly_the_weights_the_last_one_saved(tmp_path):
    """Full weights come back bit for bit (same fingerprint); a LoRA run's adapter is merged in, so the model
    the next round loads gives the LoRA model's logits (to float rounding of the merge)."""
    from types import SimpleNamespace

    import torch

    from localdpo.compare.rounds import load_weights
    from localdpo.compare.runs import save_weights
    from localdpo.models.loading import tiny_model
    from localdpo.reference.fingerprint import model_label
    from localdpo.trainer.config import load_config
    from localdpo.trainer.modeling import apply_lora

    model, tokenizer = tiny_model(seed=3)
    (tmp_path / "full").mkdir()
    (tmp_path / "lora").mkdir()
    save_weights(SimpleNamespace(model=model, tokenizer=tokenizer, run_dir=tmp_path / "full"))
    loaded = load_weights(tmp_path / "full", torch.device("cpu"))
    assert model_label("x", loaded) == model_label("x", model)

    lora = apply_lora(tiny_model(seed=3)[0], load_config(None, ["model.lora.enabled=true", "model.lora.r=4"]))
    with torch.no_grad():
        for name, tensor in lora.named_parameters():
            if "lora_B" in name:
                tensor.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
    ids = torch.tensor([[1, 5, 9, 200, 7]])
    expected = lora(input_ids=ids).logits
    save_weights(SimpleNamespace(model=lora, tokenizer=tokenizer, run_dir=tmp_path / "lora"))
    merged = load_weights(tmp_path / "lora", torch.device("cpu"))
    assert not any("lora" in name for name, _ in merged.named_parameters())
    assert torch.allclose(merged(input_ids=ids).logits, expected, atol=1e-5)
    assert not torch.allclose(merged(input_ids=ids).logits, model(input_ids=ids).logits, atol=1e-3)
