"""Comparison configs go through the one config layer: typed overrides, unknown keys listed, saved resolved."""

import pytest

from localdpo.compare.config import CompareConfig, load_compare_config, preset_path, save_compare_config
from localdpo.config import ConfigError
from localdpo.trainer.config import TaskSplit


def test_bad_comparison_configs_are_clear():
    with pytest.raises(ConfigError, match="unknown preset 'nope'"):
        preset_path("nope")
    with pytest.raises(ConfigError, match="baseline 'x' is not one of the variants"):
        load_compare_config(preset_path("tiny"), ["baseline=x"])
    with pytest.raises(ConfigError, match="unknown config key 'loss.betta'"):
        load_compare_config(preset_path("tiny"), ["variants={sft: [method=sft], b: [loss.betta=1]}"])
    with pytest.raises(ConfigError, match=r"tiny.yaml: unknown config key 'steers.trainfile'; valid keys: name, task"):
        load_compare_config(preset_path("tiny"), ["steers.trainfile=x.jsonl"])
    with pytest.raises(ConfigError, match=r"unknown config key 'run.train.stepz'; valid keys: run.train.max_steps, "):
        load_compare_config(preset_path("tiny"), ["run.train.stepz=3"])
    with pytest.raises(ConfigError, match=r"seeds\[1\]='b': expected int"):
        load_compare_config(preset_path("tiny"), ["seeds=[0,b]"])
    with pytest.raises(ConfigError, match="select grids must map a key to a non-empty list"):
        load_compare_config(preset_path("tiny"), ["select={grid: {optim.lr: []}}"])
    with pytest.raises(ConfigError, match=r"select.shared_from='nope' is not one of the variants"):
        load_compare_config(preset_path("tiny"), ["select={grid: {optim.lr: [1.0e-3]}, shared_from: nope}"])
    with pytest.raises(ConfigError, match=r"select.variants gives 'ldpo' its own grid, but select.shared_from"):
        load_compare_config(
            preset_path("tiny"),
            [
                "variants={sft: [method=sft], ldpo: [method=ldpo]}",
                "select={grid: {optim.lr: [1.0e-3]}, variants: {ldpo: {loss.beta: [0.1]}}, shared_from: sft}",
            ],
        )
    with pytest.raises(ConfigError, match="comparison config not found"):
        load_compare_config(preset_path("tiny").with_name("missing.yaml"))


def test_overrides_are_typed_and_the_saved_config_round_trips(tmp_path):
    config = load_compare_config(
        preset_path("tiny"),
        [
            "task=[addition,multiples]",
            "steers.train_file=/steers/{task}_train.jsonl",
            "steers.heldout_file=/steers/{task}_heldout.jsonl",
            "seeds=[3]",
            "run.train.max_steps=5",
            "select.grid={optim.lr: [1.0e-3, 1.0e-5]}",
            "select.variants={ldpo: {loss.beta: [0.1, 0.5]}}",
        ],
    )
    assert config.tasks == ["addition", "multiples"] and config.seeds == [3]
    assert config.run["train"] == {"max_steps": 5, "batch_size": 2, "progress": False}
    assert config.select.points("ldpo")[0].values == (("optim.lr", 0.001), ("loss.beta", 0.1))  # typed values
    assert [point.overrides for point in config.select.points("ldpo")] == [
        ["optim.lr=0.001", "loss.beta=0.1"],
        ["optim.lr=0.001", "loss.beta=0.5"],
        ["optim.lr=1.0e-05", "loss.beta=0.1"],
        ["optim.lr=1.0e-05", "loss.beta=0.5"],
    ]
    run = config.run_config("ldpo", 3, task="multiples", point=config.select.points("ldpo")[0], selection=True)
    assert run.eval.task_split is TaskSplit.VALIDATION and run.train.max_steps == 5 and run.loss.beta == 0.1
    assert config.run_config("ldpo", 3).eval.task_split is TaskSplit.HELDOUT
    path = save_compare_config(config, tmp_path / "compare_config.yaml")
    again = load_compare_config(path)
    assert isinstance(again, CompareConfig) and again == config


def test_dose_preset_is_sft_plus_alpha_times_each_term_at_sfts_learning_rate():
    """The `dose` preset: 13 variants, each `sft + α · term` as its label says (α = 0 is plain sft), sft's lr
    selected and shared, 5 seeds on two tasks: 2 x (6 selection + 13 x 5 final) = 142 runs, as its header says."""
    from localdpo.compare.plots import dose_label
    from localdpo.losses import LossType
    from localdpo.trainer.methods import Method

    config = load_compare_config(preset_path("dose"))
    assert config.tasks == ["running_sum", "addition"] and config.seeds == [0, 1, 2, 3, 4]
    assert config.baseline == "sft" and config.select.shared_from == "sft"
    doses = {label: dose_label(label) for label in config.variants if label != "sft"}
    assert sorted((d.term, d.beta or 0, d.alpha) for d in doses.values()) == sorted(
        (term, beta, alpha) for term, beta in (("ldpo", 0.1), ("ldpo", 1.0), ("ul", 0)) for alpha in (0.1, 0.3, 1, 3)
    )
    assert config.run_config("sft", 0).method is Method.SFT
    for label, dose in doses.items():
        run = config.run_config(label, 0)
        term = LossType.SIGMOID if dose.term == "ldpo" else LossType.UNLIKELIHOOD
        assert run.method is Method.LDPO and run.loss.combination == [(LossType.SFT, 1.0), (term, dose.alpha)]
        if dose.beta is not None:
            assert run.loss.beta == dose.beta
    runs = len(config.tasks) * (len(config.select.points("sft")) + len(config.variants) * len(config.seeds))
    assert runs == 142 and "142 training runs" in preset_path("dose").read_text()


def test_a_yaml_names_its_task_its_own_task_or_none(tmp_path, fresh_task_registry):
    """`task: file.py:Class` loads a task of one's own (named by its `name`); steers and no `task:` mean a
    person's own steers without a task; `task: null` without steers is refused, saying what to give."""
    from pathlib import Path

    spell = Path(__file__).resolve().parents[2] / "examples" / "tasks" / "spell.py"
    (tmp_path / "mine.jsonl").write_text("")
    own = tmp_path / "own.yaml"
    own.write_text(f"name: own\nmodel: tiny\ntask: {spell}:Spell\n")
    config = load_compare_config(own)
    assert config.tasks == [f"{spell}:Spell"] and config.task_name(config.tasks[0]) == "spell"
    assert config.run_config("sft", 0).eval.task == f"{spell}:Spell"
    steers = tmp_path / "steers.yaml"
    steers.write_text("name: mine\nmodel: tiny\nsteers: {train_file: mine.jsonl}\n")
    config = load_compare_config(steers)
    assert config.task is None and config.tasks == [None] and config.task_name(None) == "mine"
    assert config.steers.train_file == str(tmp_path / "mine.jsonl")  # found next to the config
    assert config.run_config("sft", 0).eval.task is None
    assert load_compare_config(steers, ["task=addition"]).tasks == ["addition"]
    with pytest.raises(ConfigError, match=r"task=null compares on a person's own steers: give them \(steers.train_file"):
        load_compare_config(own, ["task=null"])
    with pytest.raises(ConfigError, match=r"task 'nowhere:Task': no module 'nowhere'"):
        load_compare_config(own, ["task=nowhere:Task"])
