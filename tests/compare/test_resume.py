"""A stopped comparison resumes: finished runs are kept, a run cut off is trained again, the tables come out the
same as an uninterrupted comparison's; a comparison or run of another setup is refused with one line."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from localdpo.cli import main
from localdpo.compare import resume
from localdpo.compare.config import CompareConfig, load_compare_config, preset_path, save_compare_config
from localdpo.compare.pipeline import run_comparison
from localdpo.steers.steer import load_steers, save_steers

REPO = Path(__file__).resolve().parents[2]


def _selection_overrides(tmp_path: Path) -> list[str]:
    """The tiny preset with a selection phase: 2 variants x 2 learning rates on validation steers (the last 8
    train steers, so no prompt is in two splits), then 2 variants x 2 seeds: 4 selection runs, 4 final runs."""
    steers = load_steers(load_compare_config(preset_path("tiny")).steers.train_file)
    save_steers(steers[:-8], tmp_path / "train.jsonl")
    save_steers(steers[-8:], tmp_path / "validation.jsonl")
    return [
        f"steers.train_file={tmp_path / 'train.jsonl'}",
        f"steers.validation_file={tmp_path / 'validation.jsonl'}",
        "variants={sft: [method=sft], ldpo: [method=ldpo]}",
        "select={grid: {optim.lr: [1.0e-3, 1.0e-2]}, validation_prompts: 3}",
        f"run.cache_dir={tmp_path / 'cache'}",
    ]


def _tables(out: Path) -> tuple[list[str], list[str], list[dict]]:
    """What must not change: results.md less its wall-time and resume notes, results.csv and records.jsonl less
    the selection runs' timing (`eval/task_seconds`: how long a validation evaluation took), run_dir relative."""
    markdown = [
        line
        for line in (out / "results.md").read_text().splitlines()
        if "wall time" not in line and not line.startswith("- Resumed:")
    ]
    csv = [line for line in (out / "results.csv").read_text().splitlines() if "_seconds," not in line]
    records = [json.loads(line) for line in (out / "records.jsonl").read_text().splitlines()]
    for record in records:
        record["run_dir"] = str(Path(record["run_dir"]).relative_to(out)) if record.get("run_dir") else None
        record["metrics"] = {k: v for k, v in record.get("metrics", {}).items() if not k.endswith("_seconds")}
    return markdown, csv, records


@pytest.mark.slow
def test_a_comparison_killed_mid_run_resumes_to_the_uninterrupted_tables(tmp_path):
    """Uninterrupted (in this process, after whatever ran before: no global RNG state may matter) against killed
    with SIGKILL in the middle of its second final run (after the 4 selection runs and the first final run),
    then the same command again."""
    overrides = _selection_overrides(tmp_path)
    config = load_compare_config(  # W&B off here: it changes no number, and saves a second per run
        preset_path("tiny"), [f"out_dir={tmp_path / 'whole'}", *overrides, "run.wandb.mode=disabled"]
    )
    torch.manual_seed(1234)  # a process-global RNG state the runs must not depend on
    run_comparison(config)

    out = tmp_path / "killed"
    command = [sys.executable, "-m", "localdpo", "compare", "--preset", "tiny", "--out", str(out), *overrides]
    env = dict(os.environ, OMP_NUM_THREADS="1", WANDB_MODE="offline", HF_HUB_OFFLINE="1")
    victim = subprocess.Popen(
        command,
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    cut = out / "runs" / "ldpo-seed0"  # the second final run: its config is written once its setup is done
    deadline = time.monotonic() + 300
    while not (cut / "config.yaml").exists():
        assert victim.poll() is None, "the comparison ended before it could be killed"
        assert time.monotonic() < deadline
        time.sleep(0.01)
    os.killpg(victim.pid, signal.SIGKILL)  # the comparison and W&B's helper process with it
    assert victim.wait() == -signal.SIGKILL
    assert not (cut / resume.RECORD_NAME).exists()  # cut off mid-way, not between runs
    assert (out / "runs" / "sft-seed0" / resume.RECORD_NAME).is_file()

    resumed = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    log = resumed.stdout
    kept = [line.split()[2] for line in log.splitlines() if line.startswith("[compare] kept ")]
    assert kept == [
        "select/sft-optim.lr0.001",
        "select/sft-optim.lr0.01",
        "select/ldpo-optim.lr0.001",
        "select/ldpo-optim.lr0.01",
        "runs/sft-seed0",
    ]
    assert "[compare] runs/ldpo-seed0 was cut off before it finished: removed it, training it again" in log
    assert "training ldpo seed 0" in log and "training sft seed 0" not in log

    whole_md, whole_csv, whole_records = _tables(tmp_path / "whole")
    killed_md, killed_csv, killed_records = _tables(out)
    assert killed_csv == whole_csv
    assert killed_md == whole_md
    assert killed_records == whole_records
    notes = (out / "results.md").read_text()
    assert "- Resumed: 5 of the 8 runs were kept from an earlier invocation" in notes
    # the cut-off run's partial W&B run went with its directory: one offline run per run
    assert len(list(out.glob("runs/*/wandb/offline-run-*"))) == 4
    assert len(list(out.glob("select/*/wandb/offline-run-*"))) == 4


def _fake_steers(monkeypatch, calls: list[str]):
    """`make_steers` replaced by one that hands back the tiny preset's shipped steers (and counts its calls)."""
    from localdpo.tasks import steermaking

    tiny = load_compare_config(preset_path("tiny")).steers
    files = {"train": tiny.train_file, "heldout": tiny.heldout_file}

    def fake(model, tokenizer, task, *, n, seed, split, generation):
        calls.append(split)
        steers = load_steers(files[split])
        return steers, steermaking.SteerSummary("addition", tried=n, steers=len(steers))

    monkeypatch.setattr(steermaking, "make_steers", fake)


@pytest.mark.slow
def test_steers_made_into_the_directory_are_reused_only_when_whole(tmp_path, monkeypatch):
    calls: list[str] = []
    _fake_steers(monkeypatch, calls)
    config = load_compare_config(
        preset_path("tiny"),
        [
            f"out_dir={tmp_path / 'out'}",
            f"run.cache_dir={tmp_path / 'cache'}",
            "steers.train_file=null",
            "steers.heldout_file=null",
            "variants={sft: [method=sft]}",
            "seeds=[0]",
            "run.train.max_steps=1",
        ],
    )
    first = run_comparison(config)
    assert calls == ["train", "heldout"]
    manifest = json.loads((first.out_dir / resume.STEER_MANIFEST).read_text())
    assert set(manifest["files"]) == {"train", "heldout"} and manifest["summaries"]["train"]["tried"] == 400

    second = run_comparison(config)
    assert calls == ["train", "heldout"]  # not made again
    assert _tables(second.out_dir) == _tables(first.out_dir)
    assert '"train": {"tried": 400' in second.results_md.read_text()  # the yield note, from the manifest

    # a steer file that is not what the manifest recorded: the steers are made again (the same ones here, so
    # the kept run still fits them)
    heldout = first.out_dir / "steers_heldout.jsonl"
    heldout.write_text(heldout.read_text()[:-200])
    run_comparison(config)
    assert calls == ["train", "heldout", "train", "heldout"]
    assert load_steers(heldout) == load_steers(load_compare_config(preset_path("tiny")).steers.heldout_file)


def test_another_config_on_the_same_directory_is_one_line_naming_the_key(capsys, tmp_path):
    config = load_compare_config(preset_path("tiny"), [f"out_dir={tmp_path}"])
    save_compare_config(config, tmp_path / resume.CONFIG_NAME)
    tiny = ["compare", "--preset", "tiny", "--out", str(tmp_path)]
    assert main([*tiny, "seeds=[0]"]) == 2
    assert capsys.readouterr().err == (
        f"localdpo compare: {tmp_path} holds a comparison made with another config (seeds=[0, 1] then, [0] "
        "now): use a new --out, or --restart to start the comparison over\n"
    )
    assert main([*tiny, "run.optim.lr=0.01"]) == 2
    assert "(run.optim.lr=0.001 then, 0.01 now)" in capsys.readouterr().err


def test_keys_that_change_no_result_and_fields_added_since_are_no_difference(tmp_path):
    saved = tmp_path / resume.CONFIG_NAME
    save_compare_config(load_compare_config(preset_path("tiny"), [f"out_dir={tmp_path}"]), saved)
    same = load_compare_config(
        preset_path("tiny"),
        [
            f"out_dir={tmp_path}/.",
            f"run.cache_dir={tmp_path / 'elsewhere'}",
            "run.wandb.mode=disabled",
            "run.train.progress=true",
            "run.checkpoint.every=5",
        ],
    )
    resume.check_config(saved, same)
    # a saved config from before `baseline` existed, the new one at its default: no difference
    saved.write_text(
        "\n".join(line for line in saved.read_text().splitlines() if not line.startswith("baseline:"))
    )
    resume.check_config(saved, same)
    same.baseline = "ldpo"
    with pytest.raises(resume.ResumeError, match=r"\(baseline=\(unset\) then, ldpo now\)"):
        resume.check_config(saved, same)


def _inputs() -> dict:
    return {
        "record format": resume.RECORD_FORMAT,
        "localdpo": "0.1.0",
        "device": "cpu",
        "starting model": "a" * 64,
        "tokenizer": "b" * 64,
    }


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ("optim.lr", "optim.lr=0.001 then, 0.0005 now"),
        ("train.seed", "train.seed=0 then, 1 now"),
        ("steers", "steers_train.jsonl="),
        ("starting model", "starting model=aaaaaaaaaaaa then, cccccccccccc now"),
        ("tokenizer", "tokenizer=bbbbbbbbbbbb then, cccccccccccc now"),
        ("device", "device=cpu then, cuda now"),
        ("localdpo", "localdpo=0.1.0 then, 0.2.0 now"),
    ],
)
def test_a_record_of_another_setup_names_what_changed(tmp_path, change, named):
    """One ingredient of the fingerprint changed at a time: the kept run is refused, the message names it."""
    config = load_compare_config(preset_path("tiny"), [f"out_dir={tmp_path}"])
    run_config = config.run_config("sft", 0)
    steers = tmp_path / "steers_train.jsonl"
    steers.write_text('{"a": 1}\n')
    items = {"task_accuracy": np.array([1.0, 0.0, 1.0], dtype=np.float32)}
    run_dir = tmp_path / "runs" / "sft-seed0"
    written = resume.write_record(
        run_dir,
        resume.run_fingerprint(run_config, [steers], _inputs()),
        history=[{"step": 0, "eval/task_accuracy": 0.5}],
        items=items,
        initial_items={},
        seconds=1.5,
    )
    kept = resume.kept_run(run_dir, resume.run_fingerprint(run_config, [steers], _inputs()), "runs/sft-seed0")
    assert kept is not None and kept.kept and not written.kept
    assert kept.items["task_accuracy"].dtype == np.float64
    assert kept.items["task_accuracy"].tolist() == [1.0, 0.0, 1.0] == written.items["task_accuracy"].tolist()
    assert kept.history == [{"step": 0.0, "eval/task_accuracy": 0.5}] and kept.seconds == 1.5

    inputs = _inputs()
    if change == "optim.lr":
        run_config.optim.lr = 5e-4
    elif change == "train.seed":
        run_config = config.run_config("sft", 1)
    elif change == "steers":
        steers.write_text('{"a": 2}\n')
    else:
        inputs[change] = {"device": "cuda", "localdpo": "0.2.0"}.get(change, "c" * 64)
    with pytest.raises(resume.ResumeError) as error:
        resume.kept_run(run_dir, resume.run_fingerprint(run_config, [steers], inputs), "runs/sft-seed0")
    assert str(error.value).startswith(f"runs/sft-seed0 finished earlier under another setup ({named}")
    assert str(error.value).endswith("use a new --out, or --restart to start the comparison over")


def test_where_and_how_a_run_is_written_is_not_in_its_fingerprint(tmp_path):
    config = load_compare_config(preset_path("tiny"), [f"out_dir={tmp_path}"])
    run_config = config.run_config("sft", 0)
    moved = load_compare_config(
        preset_path("tiny"),
        [f"out_dir={tmp_path / 'moved'}", "run.cache_dir=/elsewhere", "run.wandb.mode=disabled"],
    ).run_config("sft", 0)
    assert resume.run_fingerprint(run_config, [], _inputs()) == resume.run_fingerprint(moved, [], _inputs())


def test_a_run_directory_without_a_record_is_cleared(tmp_path):
    partial, finished = tmp_path / "runs" / "a-seed0", tmp_path / "runs" / "b-seed0"
    for run_dir in (partial, finished):
        (run_dir / "wandb").mkdir(parents=True)
        (run_dir / "metrics.jsonl").write_text("{}\n")
    (finished / resume.RECORD_NAME).write_text("{}\n")
    assert resume.clear_partial(partial) and not partial.exists()
    assert not resume.clear_partial(finished) and (finished / "metrics.jsonl").is_file()
    assert not resume.clear_partial(tmp_path / "runs" / "never-started")


def test_restart_removes_what_the_comparison_wrote_and_nothing_else(tmp_path):
    """An earlier comparison of two tasks in the directory, a new one of one task: both layouts are cleared."""
    earlier = CompareConfig(task=["addition", "multiples"], out_dir=str(tmp_path))
    save_compare_config(earlier, tmp_path / resume.CONFIG_NAME)
    for task_dir in (tmp_path / "addition", tmp_path / "multiples"):
        (task_dir / "runs" / "sft-seed0").mkdir(parents=True)
        for name in ("steers_train.jsonl", "results.md", "records.jsonl", resume.STEER_MANIFEST):
            (task_dir / name).write_text("x")
    (tmp_path / "results.csv").write_text("x")
    (tmp_path / "notes.txt").write_text("mine")
    (tmp_path / "cache").mkdir()
    removed = resume.clear_comparison(load_compare_config(preset_path("tiny"), [f"out_dir={tmp_path}"]))
    assert len(removed) == 2 * 5 + 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["addition", "cache", "multiples", "notes.txt"]
    assert list((tmp_path / "addition").iterdir()) == []


@pytest.mark.slow
def test_restart_starts_over(capsys, tmp_path):
    args = [
        "compare",
        "--preset",
        "tiny",
        "--out",
        str(tmp_path),
        "seeds=[0]",
        "variants={sft: [method=sft]}",
    ]
    args += [f"run.cache_dir={tmp_path / 'cache'}", "run.train.max_steps=1", "run.wandb.mode=disabled"]
    assert main(args) == 0
    capsys.readouterr()
    assert main([*args, "run.optim.lr=0.01", "--restart"]) == 0
    out = capsys.readouterr().out
    assert "--restart: removed from" in out and "kept runs/" not in out and "training sft seed 0" in out
    assert load_compare_config(tmp_path / resume.CONFIG_NAME).run["optim"]["lr"] == 0.01
