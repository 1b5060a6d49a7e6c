import pytest
import yaml

from localdpo.losses import LossSpec, LossType
from localdpo.steers.tokenization import SpanMode
from localdpo.trainer.config import (
    ConfigError,
    RunConfig,
    apply_override,
    from_dict,
    load_config,
    save_config,
    to_dict,
    valid_keys,
)
from localdpo.trainer.methods import Method


def test_overrides_are_parsed_to_the_field_type():
    config = load_config(
        None,
        [
            "optim.lr=1e-5",
            "train.max_steps=200",
            "method=dpo",
            "loss.loss_type=ipo",
            "eval.task=null",
            "model.lora.enabled=true",
            "model.lora.target_modules=q_proj,v_proj",
            "optim.max_grad_norm=none",
            "wandb.tags=[a, b]",
        ],
    )
    assert config.optim.lr == 1e-5 and isinstance(config.optim.lr, float)
    assert config.train.max_steps == 200 and isinstance(config.train.max_steps, int)
    assert config.method is Method.DPO
    assert config.loss.loss_type == [LossType.IPO]
    assert config.eval.task is None
    assert config.model.lora.enabled is True
    assert config.model.lora.target_modules == ["q_proj", "v_proj"]
    assert config.optim.max_grad_norm is None
    assert config.wandb.tags == ["a", "b"]



def test_the_loss_spec_is_the_configs_loss_frozen():
    """`loss.sft_weight` becomes the spec's `sft` term; every parameter the loss reads is carried over."""
    config = load_config(
        None,
        [
            "loss.loss_type=[dpop,unlikelihood]",
            "loss.loss_weights=[1,0.3]",
            "loss.sft_weight=0.5",
            "loss.beta=0.2",
            "loss.label_smoothing=0.1",
            "loss.length_normalize=true",
            "loss.dpop_lambda=5",
        ],
    )
    assert config.loss.spec() == LossSpec(
        (LossType.DPOP, LossType.UNLIKELIHOOD, LossType.SFT),
        (1.0, 0.3, 0.5),
        beta=0.2,
        label_smoothing=0.1,
        length_normalize=True,
        dpop_lambda=5.0,
    )
    assert load_config(None, []).loss.spec() == LossSpec()  # DPO's sigmoid at β 0.1

def test_method_default_span_modes():
    assert load_config(None, ["method=ldpo"]).span_mode is SpanMode.DIVERGENT
    assert load_config(None, ["method=dpo"]).span_mode is SpanMode.COMPLETION
    assert load_config(None, ["method=sft"]).span_mode is SpanMode.DIVERGENT
    assert load_config(None, ["method=sft_full"]).span_mode is SpanMode.COMPLETION
    assert load_config(None, ["method=ldpo", "loss.span_mode=to_end"]).span_mode is SpanMode.TO_END


def test_unknown_key_lists_the_valid_keys():
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.lrr'.*optim\.lr,"):
        load_config(None, ["optim.lrr=1"])
    with pytest.raises(ConfigError, match=r"unknown config key 'optim.foo'"):
        from_dict({"optim": {"foo": 1}})


def test_bad_values_name_the_key():
    with pytest.raises(ConfigError, match=r"method='ppo': expected one of ldpo, dpo, sft, sft_full"):
        load_config(None, ["method=ppo"])
    with pytest.raises(ConfigError, match=r"train.max_steps='ten': expected int"):
        load_config(None, ["train.max_steps=ten"])
    with pytest.raises(ConfigError, match=r"train.max_steps='2.5': expected int"):
        load_config(None, ["train.max_steps=2.5"])
    with pytest.raises(ConfigError, match=r"model.lora.enabled='maybe': expected true or false"):
        load_config(None, ["model.lora.enabled=maybe"])
    with pytest.raises(ConfigError, match=r"loss.reference='disk'"):
        load_config(None, ["loss.reference=disk"])
    with pytest.raises(ConfigError, match=r"train.batch_size=0: must be >= 1"):
        load_config(None, ["train.batch_size=0"])
    with pytest.raises(ConfigError, match=r"expected key=value"):
        load_config(None, ["optim.lr"])


def test_span_mode_incompatible_with_method():
    with pytest.raises(
        ConfigError, match=r"loss.span_mode=divergent is not valid for method=dpo: allowed completion"
    ):
        load_config(None, ["method=dpo", "loss.span_mode=divergent"])
    with pytest.raises(ConfigError, match=r"not valid for method=sft_full"):
        load_config(None, ["method=sft_full", "loss.span_mode=to_end"])
    with pytest.raises(ConfigError, match=r"sft_weight applies to DPO methods only"):
        load_config(None, ["method=sft", "loss.sft_weight=1.0"])


def test_yaml_file_with_overrides_and_errors_name_the_file(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text("method: sft\noptim:\n  lr: 2.0e-5\ntrain:\n  batch_size: 2\n")
    config = load_config(path, ["train.batch_size=3"])
    assert (config.method, config.optim.lr, config.train.batch_size) == (Method.SFT, 2e-5, 3)
    path.write_text("optim:\n  learning_rate: 1\n")
    with pytest.raises(ConfigError, match=rf"{path}: unknown config key 'optim.learning_rate'"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_saved_config_round_trips(tmp_path):
    config = load_config(None, ["method=dpo", "optim.lr=3e-6", "model.lora.r=4", "wandb.group=cmp"])
    path = save_config(config, tmp_path / "config.yaml")
    assert yaml.safe_load(path.read_text())["method"] == "dpo"
    again = load_config(path)
    assert to_dict(again) == to_dict(config)
    assert again == config


def test_every_key_is_settable():
    config = RunConfig()
    for key in valid_keys():
        value = config
        for part in key.split("."):
            value = getattr(value, part)
        text = (
            ",".join(value)
            if isinstance(value, list)
            else ("null" if value is None else getattr(value, "value", value))
        )
        apply_override(config, f"{key}={text}")
    assert to_dict(config) == to_dict(RunConfig())


def test_all_shipped_configs_load():
    from pathlib import Path

    configs = sorted(Path(__file__).resolve().parents[2].glob("experiments/configs/*.yaml"))
    assert configs
    for path in configs:
        assert path.read_text().startswith("# python -m localdpo train --config"), path
        load_config(path)


def test_loss_combination_from_overrides_and_the_sft_weight_shorthand():
    config = load_config(None, ["loss.loss_type=[dpop,sft]", "loss.loss_weights=[1,0.5]", "loss.dpop_lambda=5"])
    assert config.loss.combination == [(LossType.DPOP, 1.0), (LossType.SFT, 0.5)]
    assert config.loss.dpop_lambda == 5.0
    assert load_config(None, ["loss.loss_type=apo_zero"]).loss.combination == [(LossType.APO_ZERO, 1.0)]
    # loss.sft_weight keeps working: it appends the sft term
    shorthand = load_config(None, ["loss.sft_weight=0.7"]).loss.combination
    assert shorthand == [(LossType.SIGMOID, 1.0), (LossType.SFT, 0.7)]
    # SFT plus unlikelihood of the rejected span: no preference term, still a localized method's loss
    dose = load_config(None, ["loss.loss_type=[sft,unlikelihood]", "loss.loss_weights=[1,0.3]"])
    assert dose.loss.combination == [(LossType.SFT, 1.0), (LossType.UNLIKELIHOOD, 0.3)]


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["loss.loss_type=[sigmoid,kto]"], r"loss.loss_type\[1\]='kto': expected one of sigmoid"),
        (["loss.loss_type=[sigmoid,sft]", "loss.loss_weights=[1,-1]"], r"loss.loss_weights=.*finite and >= 0"),
        (["loss.loss_type=[sigmoid,sft]", "loss.loss_weights=[1]"], r"loss.loss_weights=\[1.0\] has 1 values for 2"),
        (["loss.loss_type=sft"], r"loss.loss_type: .*no preference or unlikelihood term"),
        (["loss.loss_type=[sft,unlikelihood]", "loss.loss_weights=[1,0]"], r"no preference or unlikelihood term"),
        (["loss.loss_type=[sigmoid,sft]", "loss.sft_weight=1"], r"loss.sft_weight and an 'sft' term"),
        (["loss.dpop_lambda=-1"], r"loss.dpop_lambda=-1.0: must be >= 0"),
    ],
)
def test_bad_loss_combination_is_a_config_error_naming_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, overrides)


def test_a_loss_list_survives_save_and_load(tmp_path):
    config = load_config(None, ["loss.loss_type=[apo_zero,sft]", "loss.loss_weights=[1,0.2]"])
    path = save_config(config, tmp_path / "config.yaml")
    assert "- apo_zero" in path.read_text()
    assert load_config(path).loss.combination == [(LossType.APO_ZERO, 1.0), (LossType.SFT, 0.2)]


def test_closed_choices_are_enums_and_save_as_plain_strings(tmp_path):
    from dataclasses import replace

    from localdpo.reference.training import ReferenceSource
    from localdpo.trainer.config import OnTooLong, Precision, TaskSplit, WandbMode, validate

    config = load_config(
        None,
        ["loss.reference=live", "train.precision=fp32", "wandb.mode=disabled", "data.on_too_long=error"]
        + ["eval.task_split=validation"],
    )
    assert config.loss.reference is ReferenceSource.LIVE and config.train.precision is Precision.FP32
    assert config.wandb.mode is WandbMode.DISABLED and config.data.on_too_long is OnTooLong.ERROR
    assert config.eval.task_split is TaskSplit.VALIDATION
    saved = yaml.safe_load(save_config(config, tmp_path / "config.yaml").read_text())
    assert (saved["loss"]["reference"], saved["train"]["precision"], saved["eval"]["task_split"]) == (
        "live",
        "fp32",
        "validation",
    )
    # a value set from code as a plain string is checked and made the member by `validate`
    config.loss = replace(config.loss, reference="cache")
    assert validate(config).loss.reference is ReferenceSource.CACHE
    config.train.precision = "fp16"
    with pytest.raises(ConfigError, match=r"train.precision='fp16': expected one of auto, bf16, fp32"):
        validate(config)
