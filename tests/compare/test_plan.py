"""The plan of a comparison: every run resolved once, from typed values, named as before."""

import pytest

from localdpo.compare.config import Point, load_compare_config, preset_path
from localdpo.compare.plan import comparison_plan, task_plan
from localdpo.config import apply_override, to_dict
from localdpo.trainer.config import TaskSplit, from_dict, validate


def test_the_final_runs_in_training_order_with_their_directories(tmp_path):
    """Two variants, two seeds, no selection: seed by seed, variant by variant, each in `runs/<label>-seed<k>`."""
    config = load_compare_config(
        preset_path("tiny"), [f"out_dir={tmp_path}", "seeds=[0,1]", "variants={sft: [method=sft], ldpo: [method=ldpo]}"]
    )
    (plan,) = comparison_plan(config)
    assert [(run.label, run.seed) for run in plan.final] == [("sft", 0), ("ldpo", 0), ("sft", 1), ("ldpo", 1)]
    assert [run.config.run_dir for run in plan.final] == [
        str(tmp_path / "runs" / name) for name in ("sft-seed0", "ldpo-seed0", "sft-seed1", "ldpo-seed1")
    ]
    assert plan.selection == () and plan.later_rounds == {} and plan.chosen == {}
    assert all(run.point == Point() and run.task == "addition" for run in plan.final)
    assert plan.final_run("ldpo", 1).config.method.value == "ldpo"
    assert to_dict(plan.probe) == to_dict(plan.final[0].config) and to_dict(plan.baseline) == to_dict(
        plan.final_run("sft", 0).config
    )
    with pytest.raises(ValueError, match="unknown variant 'x'; variants: sft, ldpo"):
        comparison_plan(config, ["x"])


def test_a_grid_point_is_set_as_typed_values_and_named_as_before(tmp_path):
    """`optim.lr` 1e-5 reaches the optimizer as the float 1e-05 (no string in between); the selection run's
    directory and its `key=value` overrides read as they did when points were strings
    (`ldpo-optim.lr1.0e-05-loss.beta0.5`), and the config equals the one those strings give."""
    config = load_compare_config(
        preset_path("tiny"),
        [
            f"out_dir={tmp_path}",
            "seeds=[0]",
            "variants={sft: [method=sft], ldpo: [method=ldpo]}",
            "select={grid: {optim.lr: [1.0e-3, 1.0e-5]}, variants: {ldpo: {loss.beta: [0.1, 0.5]}}}",
        ],
    )
    (plan,) = comparison_plan(config)
    assert [(run.label, run.point.overrides) for run in plan.selection] == [
        ("sft", ["optim.lr=0.001"]),
        ("sft", ["optim.lr=1.0e-05"]),
        ("ldpo", ["optim.lr=0.001", "loss.beta=0.1"]),
        ("ldpo", ["optim.lr=0.001", "loss.beta=0.5"]),
        ("ldpo", ["optim.lr=1.0e-05", "loss.beta=0.1"]),
        ("ldpo", ["optim.lr=1.0e-05", "loss.beta=0.5"]),
    ]
    run = plan.selection[-1]
    assert run.point.values == (("optim.lr", 1e-05), ("loss.beta", 0.5))
    assert run.config.optim.lr == 1e-05 and run.config.loss.beta == 0.5 and run.selection
    assert run.config.run_dir == str(tmp_path / "select" / "ldpo-optim.lr1.0e-05-loss.beta0.5")
    assert run.config.eval.task_split is TaskSplit.VALIDATION and run.config.eval.at_start is False
    as_strings = from_dict(config.run)  # the old path: the point's `key=value` strings parsed back
    for item in ["method=ldpo", *run.point.overrides]:
        apply_override(as_strings, item)
    assert as_strings.optim.lr == run.config.optim.lr and as_strings.loss.beta == run.config.loss.beta
    # the final runs before a choice: as written; after: at the chosen points, selection runs unchanged
    assert all(run.point == Point() and run.config.optim.lr == 1e-3 for run in plan.final)
    chosen = plan.choose(config, {"sft": plan.selection[1].point, "ldpo": plan.selection[3].point})
    assert chosen.selection == plan.selection
    assert [(run.label, run.config.optim.lr, run.config.loss.beta) for run in chosen.final] == [
        ("sft", 1e-05, 0.1),
        ("ldpo", 1e-3, 0.5),
    ]
    assert chosen.final_run("ldpo", 0).config.run_dir == str(tmp_path / "runs" / "ldpo-seed0")


def test_shared_from_plans_only_that_variants_grid(tmp_path):
    config = load_compare_config(
        preset_path("tiny"),
        [
            f"out_dir={tmp_path}",
            "variants={sft: [method=sft], ldpo: [method=ldpo]}",
            "select={grid: {optim.lr: [1.0e-3, 1.0e-5]}, shared_from: sft}",
        ],
    )
    (plan,) = comparison_plan(config)
    assert [run.label for run in plan.selection] == ["sft", "sft"]


def test_later_rounds_and_the_start_evaluation(tmp_path):
    """Round r's runs train `rounds.max_steps` in `runs/<label>-seed<k>-round<r>`; a run after the one that
    evaluated the starting model skips it, and is otherwise the same run."""
    config = load_compare_config(
        preset_path("tiny"), [f"out_dir={tmp_path}", "rounds.count=3", "rounds.max_steps=5", "seeds=[0]"]
    )
    plan = task_plan(config, "addition", ["sft"])
    assert sorted(plan.later_rounds) == [2, 3]
    later = plan.later_run(3, "sft", 0)
    assert later.round == 3 and later.config.train.max_steps == 5 and later.config.eval.at_start is False
    assert later.config.run_dir == str(tmp_path / "runs" / "sft-seed0-round3")
    assert plan.baseline_later_round.train.max_steps == 5
    first = plan.final_run("sft", 0)
    assert first.config.eval.at_start is True
    skipping = first.without_start_evaluation()
    assert skipping.config.eval.at_start is False and first.config.eval.at_start is True  # a copy
    expected = to_dict(validate(config.run_config("sft", 0, evaluates_start=False)))
    assert to_dict(skipping.config) == expected
