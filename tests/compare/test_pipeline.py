"""The comparison end to end on the tiny preset: every file written, tables well formed, splits disjoint."""

import csv
import json
from pathlib import Path

import pytest

from localdpo.compare.config import load_compare_config, preset_path
from localdpo.compare.pipeline import comparison_steers, pooled_records, run_comparison
from localdpo.compare.results import load_records, load_summary
from localdpo.steers.steer import load_steers, save_steers
from localdpo.trainer.logging import read_offline_run

SPELL = Path(__file__).resolve().parents[2] / "examples" / "tasks" / "spell.py"


@pytest.fixture(scope="module")
def tiny_result(tmp_path_factory):
    out = tmp_path_factory.mktemp("compare")
    config = load_compare_config(preset_path("tiny"), [f"out_dir={out}", f"run.cache_dir={out / 'cache'}"])
    return config, run_comparison(config)


@pytest.mark.slow
def test_every_file_is_written(tiny_result):
    config, result = tiny_result
    for name in (
        "results.md",
        "results.csv",
        "records.jsonl",
        "compare_config.yaml",
        "steers_train.jsonl",
        "steers_heldout.jsonl",
        "accuracy_over_steps.png",
        "accuracy_vs_drift.png",
    ):
        assert (result.out_dir / name).is_file(), name
    for plot in result.plots:
        assert plot.read_bytes()[:4] == b"\x89PNG"


@pytest.mark.slow
def test_results_table_is_well_formed(tiny_result):
    config, result = tiny_result
    lines = result.results_md.read_text().splitlines()
    header = lines[2]
    assert header.startswith(
        "| method | seeds | task accuracy (%) | format kept (%) | held-out pref. acc. (%)"
    )
    rows = [line for line in lines[4:] if line.startswith("| ")]
    methods = [row.split("|")[1].strip() for row in rows[: len(config.variants) + 1]]
    assert methods == ["base", *config.variants]
    for row in rows[: len(config.variants) + 1]:
        assert row.count("|") == header.count("|")
    with open(result.results_csv) as handle:
        table = list(csv.DictReader(handle))
    metrics = {row["metric"] for row in table}
    assert metrics == {
        "task_accuracy",
        "format_kept",
        "preference_accuracy",
        "chosen_nll",
        "drift_kl",
        "recurrence",
        "uptake",
        "continuation_accuracy",
    }
    assert "| recurrence (%) | uptake (%) | continuation acc. (%) |" in header
    sft = [row for row in table if row["method"] == "ldpo" and row["metric"] == "preference_accuracy"][0]
    assert int(sft["n_seeds"]) == len(config.seeds)
    assert float(sft["ci_low"]) <= float(sft["mean"]) <= float(sft["ci_high"])


@pytest.mark.slow
def test_runs_share_items_and_start_from_the_same_model(tiny_result):
    config, result = tiny_result
    records = [json.loads(line) for line in (result.out_dir / "records.jsonl").read_text().splitlines()]
    assert len(records) == 1 + len(config.variants) * len(config.seeds)
    sizes = {(k, len(v)) for r in records for k, v in r["items"].items()}
    assert len({k for k, _ in sizes}) == len(sizes)  # one item count per metric, shared by every run
    base = records[0]
    assert base["method"] == "base" and all(v == 0.0 for v in base["items"]["drift_kl"])
    # every run's step-0 evaluation is the starting model's
    first_points = {json.dumps(r["history"][0], sort_keys=True) for r in records[1:]}
    assert len(first_points) == 1


@pytest.mark.slow
def test_runs_are_logged_to_wandb_in_one_group(tiny_result):
    config, result = tiny_result
    runs = sorted(result.out_dir.glob("runs/*/wandb/offline-run-*"))
    assert len(runs) == len(config.variants) * len(config.seeds)
    logged = read_offline_run(runs[0])
    assert logged["config"]["wandb"]["group"] == "compare-tiny"


def test_heldout_prompts_never_reach_training(tmp_path):
    config = load_compare_config(preset_path("tiny"))
    train = load_steers(config.steers.train_file)
    heldout = load_steers(config.steers.heldout_file)
    assert {s.meta["prompt_id"] for s in train}.isdisjoint({s.meta["prompt_id"] for s in heldout})
    assert {s.meta["split"] for s in train} == {"train"} and {s.meta["split"] for s in heldout} == {"heldout"}
    save_steers([*train, heldout[0]], tmp_path / "leaky.jsonl")
    leaky = load_compare_config(preset_path("tiny"), [f"steers.train_file={tmp_path / 'leaky.jsonl'}"])
    with pytest.raises(ValueError, match="held-out prompts also appear in the training steers"):
        comparison_steers(leaky, "addition", model=None, tokenizer=None)


def _multiples_steers(path, split, n):
    from localdpo.steers.steer import Steer

    start = {"train": 3, "heldout": 30, "validation": 60}[split]  # no prompt in two splits
    steers = [
        Steer(
            prompt=f"List the first 4 multiples of {k}.",
            prefix=f"1. {k}\n2. ",
            rejected=f"{2 * k + 1}\n3. {3 * k}",
            chosen=f"{2 * k}",
            id=f"{split}-{k}",
            meta={"task": "multiples", "prompt_id": f"multiples/{split}/{k}", "split": split},
        )
        for k in range(start, start + n)
    ]
    save_steers(steers, path)


@pytest.mark.slow
def test_selection_then_final_runs_on_two_tasks(tmp_path):
    """Every grid point trains once and is scored on validation data only; the final runs use each variant's
    chosen point; each task gets its own tables; a pooled table pairs the runs across tasks."""
    for split, n in (("train", 4), ("heldout", 3), ("validation", 2)):
        _multiples_steers(tmp_path / f"multiples_{split}.jsonl", split, n)
    tiny = load_compare_config(preset_path("tiny"))
    for split, source in (
        ("train", tiny.steers.train_file),
        ("heldout", tiny.steers.heldout_file),
        ("validation", tiny.steers.heldout_file),
    ):
        steers = load_steers(source)
        if split == "validation":  # two steers whose prompts are in neither other file
            steers = [replace_meta(s, f"addition/validation/{i}") for i, s in enumerate(steers[:2])]
        save_steers(steers, tmp_path / f"addition_{split}.jsonl")
    config = load_compare_config(
        preset_path("tiny"),
        [
            f"out_dir={tmp_path / 'out'}",
            f"run.cache_dir={tmp_path / 'cache'}",
            "task=[addition,multiples]",
            f"steers.train_file={tmp_path}/{{task}}_train.jsonl",
            f"steers.heldout_file={tmp_path}/{{task}}_heldout.jsonl",
            f"steers.validation_file={tmp_path}/{{task}}_validation.jsonl",
            "variants={sft: [method=sft], ldpo: [method=ldpo]}",
            "seeds=[0,1]",
            "run.train.max_steps=1",
            "run.eval.task_every=0",
            "select={grid: {optim.lr: [1.0e-3, 1.0e-5]}, variants: {ldpo: {loss.beta: [0.1, 0.5]}}, validation_prompts: 3}",
        ],
    )
    assert [point.overrides for point in config.select.points("sft")] == [["optim.lr=0.001"], ["optim.lr=1.0e-05"]]
    assert len(config.select.points("ldpo")) == 4
    result = run_comparison(config)
    out = result.out_dir
    for task in ("addition", "multiples"):
        records = [json.loads(line) for line in (out / task / "records.jsonl").read_text().splitlines()]
        selection = [r for r in records if r["phase"] == "selection"]
        assert sorted(len(r["overrides"]) for r in selection) == [1, 1, 2, 2, 2, 2]
        for r in selection:  # scored on the validation prompts, once, at the end
            assert r["metrics"]["eval/task_n"] == 3 and r["metrics"]["eval/num_steers"] == 2
        finals = [r for r in records if r["phase"] == "final" and r["method"] != "base"]
        assert {(r["method"], r["seed"]) for r in finals} == {(m, s) for m in ("sft", "ldpo") for s in (0, 1)}
        chosen = {r["method"]: r["overrides"] for r in finals}
        assert [o.split("=")[0] for o in chosen["ldpo"]] == ["optim.lr", "loss.beta"]
        for r in finals:
            assert len(r["items"]["task_accuracy"]) == 6  # the held-out prompts, not the validation ones
        text = (out / task / "results.md").read_text()
        assert "## Selection (validation split)" in text and text.count("**yes**") == 2
        summary = load_summary(out / task)
        assert {row["phase"] for row in summary} == {"final", "selection"}
        assert {row["task"] for row in summary} == {task}
        assert len(load_records(out / task, "selection")) == 6
        assert all("items" in row for row in load_records(out / task))
    pooled = pooled_records(result.records)
    sft0 = next(r for r in pooled if r.method == "sft" and r.seed == 0)
    per_task = [r for r in result.records if r.method == "sft" and r.seed == 0]
    assert len(sft0.items["task_accuracy"]) == sum(len(r.items["task_accuracy"]) for r in per_task) == 12
    assert "pooled over addition, multiples" in result.results_md.read_text()


@pytest.mark.slow
def test_selection_shared_from_one_variant(tmp_path):
    """`select.shared_from: sft`: only sft's grid trains, and every variant's final runs use its chosen lr."""
    tiny = load_compare_config(preset_path("tiny"))
    validation = [
        replace_meta(s, f"addition/validation/{i}")
        for i, s in enumerate(load_steers(tiny.steers.heldout_file)[:2])
    ]
    save_steers(validation, tmp_path / "validation.jsonl")
    config = load_compare_config(
        preset_path("tiny"),
        [
            f"out_dir={tmp_path / 'out'}",
            f"run.cache_dir={tmp_path / 'cache'}",
            f"steers.validation_file={tmp_path / 'validation.jsonl'}",
            "variants={sft: [method=sft], ldpo: [method=ldpo], ul: [method=ldpo, 'loss.loss_type=[sft,unlikelihood]']}",
            "seeds=[0]",
            "run.train.max_steps=1",
            "run.eval.task_every=0",
            "select={grid: {optim.lr: [1.0e-3, 1.0e-5]}, validation_prompts: 3, shared_from: sft}",
        ],
    )
    result = run_comparison(config)
    rows = [json.loads(line) for line in (result.out_dir / "records.jsonl").read_text().splitlines()]
    selection = [r for r in rows if r["phase"] == "selection"]
    assert [(r["method"], r["overrides"]) for r in selection] == [
        ("sft", ["optim.lr=0.001"]),
        ("sft", ["optim.lr=1.0e-05"]),
    ]
    finals = {r["method"]: r["overrides"] for r in rows if r["phase"] == "final" and r["method"] != "base"}
    assert set(finals) == {"sft", "ldpo", "ul"} and finals["ldpo"] == finals["ul"] == finals["sft"]
    assert len(finals["sft"]) == 1
    text = result.results_md.read_text()
    assert "Hyperparameters chosen for `sft` and used by every variant" in text
    assert "`sft`'s grid point, chosen on the validation split (below) and shared by every variant" in text
    assert text.count("**yes**") == 1  # the selection table marks sft's one chosen point


def replace_meta(steer, prompt_id):
    """`steer` on another prompt (its text and id changed), as a validation steer."""
    from dataclasses import replace

    prompt = [{**steer.prompt[-1], "content": steer.prompt[-1]["content"] + " (validation)"}]
    meta = {**steer.meta, "prompt_id": prompt_id, "split": "validation"}
    return replace(steer, prompt=prompt, id=prompt_id, meta=meta)


def test_results_notes_name_each_variants_own_learning_rate():
    """The table's note states the hyperparameters the final runs used: one pair when every variant shares
    it, else each variant's (set in its overrides, or chosen on the validation split)."""
    from localdpo.compare.config import Point
    from localdpo.compare.plan import task_plan
    from localdpo.compare.report import training_hyperparameters

    def described(config, chosen=None):
        plan = task_plan(config, "addition", ["sft", "ldpo"])
        plan = plan.choose(config, chosen) if chosen else plan
        return training_hyperparameters(config, plan, ["sft", "ldpo"])

    shared = load_compare_config(preset_path("tiny"), ["variants={sft: [method=sft], ldpo: [method=ldpo]}"])
    assert described(shared) == "the same lr 0.001, beta 0.1."
    own = load_compare_config(
        preset_path("tiny"),
        ["variants={sft: [method=sft], ldpo: [method=ldpo, optim.lr=5.0e-06, loss.beta=0.5]}"],
    )
    assert described(own) == (
        "its own hyperparameters, set per variant: sft lr 0.001, beta 0.1; ldpo lr 5e-06, beta 0.5."
    )
    chosen = {"sft": Point((("optim.lr", 3.0e-05),)), "ldpo": Point((("optim.lr", 1.0e-06),))}
    assert described(shared, chosen) == (
        "its own hyperparameters, chosen on the validation split (below): sft lr 3e-05, beta 0.1; "
        "ldpo lr 1e-06, beta 0.1."
    )


def _own_steers(path, n: int = 48):
    """`n` steers a person might bring (converted preference rows: no task, no meta), one prompt each."""
    from localdpo.steers.steer import Steer

    animals = ["cat", "dog", "owl", "fox", "eel", "yak", "ant", "bee"]
    steers = [
        Steer(
            prompt=f"Which animal is number {i} on my list, and why?",
            prefix="It is the ",
            rejected=f"{animals[i % 8]}, because it is small.",
            chosen=f"{animals[(i + 3) % 8]}, because it is small.",
            chosen_complete=True,
            rejected_complete=True,
            id=f"rows:{i}",
        )
        for i in range(n)
    ]
    save_steers(steers, path)
    return steers


@pytest.mark.slow
def test_own_steers_without_a_task_are_split_measured_without_a_checker_and_titled_with_the_file(tmp_path):
    """`localdpo compare --preset tiny --steers mine.jsonl`: no task (the preset's task and steer files are
    dropped), the file split by prompt hash, selection on the validation steers by uptake, every metric one
    that needs no checker, the primary (uptake) stated, the title naming the file."""
    from localdpo.cli import main
    from localdpo.compare.splits import prompt_key

    mine = _own_steers(tmp_path / "mine.jsonl", n=64)
    out = tmp_path / "out"
    status = main(
        [
            "compare",
            "--preset",
            "tiny",
            "--steers",
            str(tmp_path / "mine.jsonl"),
            "--out",
            str(out),
            f"run.cache_dir={tmp_path / 'cache'}",
            "variants={sft: [method=sft], ldpo: [method=ldpo]}",
            "select={grid: {optim.lr: [1.0e-3, 1.0e-2]}}",
        ]
    )
    assert status == 0
    assert "task: null" in (out / "compare_config.yaml").read_text()
    splits = {
        split: load_steers(out / f"steers_{split}.jsonl") for split in ("train", "validation", "heldout")
    }
    assert sorted(s.id for steers in splits.values() for s in steers) == sorted(s.id for s in mine)
    keys = {split: {prompt_key(s.prompt) for s in steers} for split, steers in splits.items()}
    assert not keys["train"] & keys["heldout"] and not keys["validation"] & (keys["train"] | keys["heldout"])
    sizes = {split: len(steers) for split, steers in splits.items()}
    assert sizes == {"train": 37, "validation": 6, "heldout": 21}

    text = (out / "results.md").read_text()
    assert text.startswith("# localdpo comparison `tiny`: steers of `mine.jsonl`, no task checker, tiny\n")
    assert "addition" not in text and "task accuracy" not in text.split("## Selection")[0].split("- Seeds")[0]
    assert "(64 steers on 64 prompts) split by a stable hash of each prompt" in text
    assert ": 37 train, 6 validation, 21 held-out." in text
    assert "- Primary metric: uptake (the Holm family; selection reads it first)." in text
    assert (
        "on the 6 validation steers, one run each with seed 0: higher uptake at the validation steers, then"
        in text
    )
    assert "| variant | grid point | val. uptake (%) | val. pref. acc. (%) |" in text
    assert "compared with `sft` on uptake" in text
    summary = load_summary(out)
    assert {r["metric"] for r in summary if r["phase"] == "final"} == {
        "preference_accuracy",
        "chosen_nll",
        "drift_kl",
        "recurrence",
        "uptake",
    }
    finals = [r for r in load_records(out) if r["method"] != "base"]
    assert {r["task"] for r in finals} == {None}
    assert all(len(r["items"]["preference_accuracy"]) == 6 for r in finals)  # the preset's eval.max_steers
    assert "read the first 6 of the 21 held-out steers (run.eval.max_steers=6)" in text
    selection = load_records(out, "selection")
    assert len(selection) == 4 and all("eval/uptake" in r["metrics"] for r in selection)


def test_own_steers_too_few_to_split_are_one_line_before_any_model_loads(tmp_path, capsys):
    from localdpo.cli import main

    _own_steers(tmp_path / "few.jsonl", n=16)
    assert (
        main(
            [
                "compare",
                "--preset",
                "tiny",
                "--steers",
                str(tmp_path / "few.jsonl"),
                "--out",
                str(tmp_path / "o"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.startswith("localdpo compare: `few.jsonl` (16 steers on 16 prompts) split by a stable hash")
    assert "a comparison needs at least 10 held-out steers" in err and err.count("\n") == 1
    assert not (tmp_path / "o" / "runs").exists()


def _spell_steers(path, split: str, n: int):
    """`n` steers on `split` prompts of the example task, as a watcher makes them: the first wrong letter of a
    written answer, its correction from the task's own `correct`."""
    from localdpo.steers.steer import Steer
    from localdpo.tasks import get_task

    task = get_task(f"{SPELL}:Spell")
    steers = []
    for prompt in task.prompts(n, seed=0, split=split):
        word = prompt.data["word"]
        output = "Sure: " + "-".join(word[:2] + "x" + word[3:])  # the third letter is wrong
        mistake = task.check(prompt, output).mistake
        assert mistake.item == 2 and mistake.found == "x"
        steers.append(
            Steer(
                prompt=[{"role": "user", "content": prompt.text}],
                prefix=output[: mistake.start],
                rejected=output[mistake.start : mistake.end + 2],
                chosen=task.correct(prompt, output, mistake).text,
                replaces=1,
                id=prompt.id,
                meta={"task": task.name, "prompt_id": prompt.id},
            )
        )
    save_steers(steers, path)


@pytest.mark.slow
def test_a_task_of_ones_own_gives_task_accuracy_on_its_prompts(tmp_path, fresh_task_registry):
    """`--task examples/tasks/spell.py:Spell`: task accuracy on the task's held-out prompts, continuation
    accuracy judged by its checker, the title naming the task, the task's code in every run's fingerprint."""
    import hashlib

    from localdpo.cli import main

    _spell_steers(tmp_path / "train.jsonl", "train", 12)
    _spell_steers(tmp_path / "heldout.jsonl", "heldout", 6)
    spec = f"{SPELL}:Spell"
    out = tmp_path / "out"
    argv = ["compare", "--preset", "tiny", "--task", spec, "--steers", str(tmp_path / "train.jsonl")]
    argv += ["--heldout-steers", str(tmp_path / "heldout.jsonl"), "--out", str(out)]
    assert (
        main([*argv, f"run.cache_dir={tmp_path / 'cache'}", "seeds=[0]", "variants={sft: [method=sft]}"]) == 0
    )
    text = (out / "results.md").read_text()
    assert text.startswith("# localdpo comparison `tiny`: spell steers, tiny\n")
    assert "| task accuracy (%) | format kept (%) |" in text and "continuation acc. (%)" in text
    run = next(r for r in load_records(out) if r["method"] == "sft")
    assert len(run["items"]["task_accuracy"]) == 6 and len(run["items"]["continuation_accuracy"]) == 6
    assert {r["task"] for r in load_records(out)} == {"spell"}
    record = json.loads((out / "runs" / "sft-seed0" / "record.json").read_text())
    digest = hashlib.sha256(SPELL.read_bytes()).hexdigest()
    assert record["fingerprint"]["task code"] == digest and record["fingerprint"]["eval.task"] == spec


def test_a_heldout_file_sharing_prompts_with_the_train_file_is_one_line_before_any_model_loads(
    tmp_path, capsys
):
    from localdpo.cli import main

    mine = _own_steers(tmp_path / "mine.jsonl")
    save_steers(mine[:12], tmp_path / "heldout.jsonl")
    argv = ["compare", "--preset", "tiny", "--steers", str(tmp_path / "mine.jsonl")]
    assert (
        main([*argv, "--heldout-steers", str(tmp_path / "heldout.jsonl"), "--out", str(tmp_path / "o")]) == 2
    )
    err = capsys.readouterr().err
    assert err.startswith(
        "localdpo compare: 12 held-out prompts also appear in the training steers, e.g. 'Which animal is number "
    )
    assert err.count("\n") == 1 and not (tmp_path / "o" / "runs").exists()
