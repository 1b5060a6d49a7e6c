"""The transformers.Trainer integration against localdpo's own functions, on tiny random Llama models (CPU, fp32)."""

import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

from transformers import TrainingArguments  # noqa: E402

from localdpo import Steer, localized_dpo_loss, tokenize_steer  # noqa: E402
from localdpo.forward import sequence_token_logps  # noqa: E402
from localdpo.integrations.hf import (  # noqa: E402
    REF_CHOSEN_LOGPS,
    LocalizedDPOLossTrainer,
    LocalizedLossConfig,
    SteerPairCollator,
    SteerPairDataset,
    stacked_pair_logps,
)
from localdpo.models.loading import tiny_model  # noqa: E402
from localdpo.steers.batches import (  # noqa: E402
    CHOSEN_ATTENTION_MASK,
    CHOSEN_INPUT_IDS,
    CHOSEN_LOSS_MASK,
    REJECTED_ATTENTION_MASK,
    REJECTED_INPUT_IDS,
    REJECTED_LOSS_MASK,
    collate_pairs,
)

STEERS = [
    Steer(
        prompt="List two fruits:",
        prefix=" 1. Apple\n2.",
        rejected=" Carrot\n3. Pear",
        chosen=" Banana\n3. Pear",
        id="fruit",
    ),
    Steer(
        prompt=[{"role": "user", "content": "What is 2+2?"}],
        prefix="It is",
        rejected=" 5, I think. Then more words follow here.",
        chosen=" 4, I think.",
        id="sum",
    ),
    Steer(
        prompt="Capital of France?",
        prefix="",
        rejected=" Lyon, a city.",
        chosen=" Paris.",
        chosen_complete=True,
    ),
    Steer(prompt="Name a colour:", prefix=" Blue", rejected=" and green and red.", chosen=".", id="colour"),
]


def _tiny(seed, tokenizer):
    """The tiny SmolLM2-shaped random model (`localdpo.models.loading.tiny_model`); weights depend only on the seed."""
    return tiny_model(seed=seed, tokenizer=tokenizer)[0]


def _args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"), report_to=[], use_cpu=True, save_strategy="no", logging_steps=1,
        per_device_train_batch_size=4, per_device_eval_batch_size=4, max_steps=1, learning_rate=1e-3, seed=0,
    )  # fmt: skip
    values.update(overrides)
    return TrainingArguments(**values)


def _localdpo_loss(policy, reference, tokenizer, steers, **loss_kwargs):
    """The loss with localdpo's own functions: whole (untrimmed) sides, separate forwards."""
    examples = [tokenize_steer(s, tokenizer) for s in steers]
    batch = collate_pairs(examples, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        pc, pr, rc, rr = (
            sequence_token_logps(model, batch[ids], batch[attn])
            for model in (policy, reference)
            for ids, attn in (
                (CHOSEN_INPUT_IDS, CHOSEN_ATTENTION_MASK),
                (REJECTED_INPUT_IDS, REJECTED_ATTENTION_MASK),
            )
        )
    return float(
        localized_dpo_loss(
            pc, pr, rc, rr, batch[CHOSEN_LOSS_MASK], batch[REJECTED_LOSS_MASK], **loss_kwargs
        ).loss
    )


def _trainer_loss(trainer, dataset):
    batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, batch))


def test_pair_forward_equals_separate_forwards(smol_tokenizer):
    model = _tiny(0, smol_tokenizer)
    examples = [tokenize_steer(s, smol_tokenizer) for s in STEERS]
    batch = collate_pairs(examples, pad_token_id=smol_tokenizer.pad_token_id)
    with torch.no_grad():
        chosen, rejected = stacked_pair_logps(model, batch)
        expected_chosen = sequence_token_logps(model, batch[CHOSEN_INPUT_IDS], batch[CHOSEN_ATTENTION_MASK])
        expected_rejected = sequence_token_logps(
            model, batch[REJECTED_INPUT_IDS], batch[REJECTED_ATTENTION_MASK]
        )
    mask_c, mask_r = batch[CHOSEN_ATTENTION_MASK], batch[REJECTED_ATTENTION_MASK]
    torch.testing.assert_close(chosen[mask_c], expected_chosen[mask_c], atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(rejected[mask_r], expected_rejected[mask_r], atol=1e-5, rtol=1e-6)


def test_dataset_trims_after_the_last_scored_token(smol_tokenizer):
    dataset = SteerPairDataset(STEERS, smol_tokenizer)
    item = dataset[1]
    full = tokenize_steer(STEERS[1], smol_tokenizer)
    end = full.rejected_span[1]
    assert item.index == 1 and item.example.steer_id == "sum"
    assert item.example.rejected_ids.tolist() == full.rejected_ids[:end].tolist()
    assert len(full.rejected_ids) > end  # the run-on "Then more words follow here." was cut


@pytest.mark.parametrize(
    "config",
    [
        LocalizedLossConfig(),
        LocalizedLossConfig(loss_type="ipo"),
        LocalizedLossConfig(loss_type="sigmoid", label_smoothing=0.1, length_normalize=True),
        LocalizedLossConfig(loss_type="robust", label_smoothing=0.2),
    ],
)
def test_first_step_loss_matches_localdpo(smol_tokenizer, tmp_path, config):
    dataset = SteerPairDataset(STEERS, smol_tokenizer)
    trainer = LocalizedDPOLossTrainer(
        _tiny(0, smol_tokenizer), _args(tmp_path), ref_model=_tiny(1, smol_tokenizer), loss_config=config,
        train_dataset=dataset, processing_class=smol_tokenizer,
    )  # fmt: skip
    expected = _localdpo_loss(
        _tiny(0, smol_tokenizer), _tiny(1, smol_tokenizer), smol_tokenizer, STEERS, beta=config.beta,
        loss_type=config.loss_type, label_smoothing=config.label_smoothing, length_normalize=config.length_normalize,
    )  # fmt: skip
    assert _trainer_loss(trainer, dataset) == pytest.approx(expected, abs=1e-5)
    assert trainer.loss_spec == config.spec()  # the frozen loss the mixin computes, built once
    trivial = {"sigmoid": math.log(2), "ipo": 25.0, "robust": math.log(2)}[config.loss_type]
    assert abs(expected - trivial) > 1e-4  # policy != reference: not the value at h = 0


@pytest.mark.parametrize(
    ("config", "trivial"),
    [
        (LocalizedLossConfig(loss_type="apo_zero"), 1.0),
        (LocalizedLossConfig(loss_type="apo_down"), 1.0),
        (LocalizedLossConfig(loss_type="dpop", dpop_lambda=5.0), math.log(2)),
        (LocalizedLossConfig(loss_type="cal_dpo"), math.log(2) + 2 * 5.0**2),
        (LocalizedLossConfig(loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5]), None),
        (LocalizedLossConfig(loss_type=["sigmoid", "unlikelihood"], loss_weights=[1.0, 3.0]), None),
        (
            LocalizedLossConfig(
                loss_type=["dpop", "apo_zero"], loss_weights=[1.0, 2.0], length_normalize=True
            ),
            None,
        ),
    ],
)
def test_apo_dpop_cal_dpo_and_combinations_match_localdpo(smol_tokenizer, tmp_path, config, trivial):
    dataset = SteerPairDataset(STEERS, smol_tokenizer)
    trainer = LocalizedDPOLossTrainer(
        _tiny(0, smol_tokenizer), _args(tmp_path), ref_model=_tiny(1, smol_tokenizer), loss_config=config,
        train_dataset=dataset, processing_class=smol_tokenizer,
    )  # fmt: skip
    expected = _localdpo_loss(
        _tiny(0, smol_tokenizer), _tiny(1, smol_tokenizer), smol_tokenizer, STEERS, beta=config.beta,
        loss_type=config.loss_type, loss_weights=config.loss_weights, length_normalize=config.length_normalize,
        dpop_lambda=config.dpop_lambda,
    )  # fmt: skip
    batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        loss, out = trainer.compute_loss(trainer.model, batch, return_outputs=True)
    assert float(loss) == pytest.approx(expected, abs=1e-5)
    types = [config.loss_type] if isinstance(config.loss_type, str) else config.loss_type
    assert list(out.terms) == types
    weights = config.loss_weights or [1.0]
    assert float(loss) == pytest.approx(
        sum(w * float(out.terms[t]) for t, w in zip(types, weights)), abs=1e-6
    )
    mode = "train" if trainer.model.training else "eval"
    assert set(trainer._localized_metrics[mode]) >= {f"loss_{t}" for t in types}
    if trivial is not None:
        assert abs(expected - trivial) > 1e-4  # policy != reference: not the value at Δc = Δr = 0


@pytest.mark.parametrize(
    ("config", "error"),
    [
        (LocalizedLossConfig(loss_type="dpo"), "loss_type 'dpo': expected one of sigmoid"),
        (LocalizedLossConfig(loss_type=["sigmoid", "sigmoid"]), "each type may appear once"),
        (LocalizedLossConfig(loss_type=["sigmoid", "sft"], loss_weights=[1.0]), "loss_weights has 1 values"),
        (LocalizedLossConfig(loss_type=["sft"]), "no preference or unlikelihood term"),
    ],
)
def test_bad_loss_combination_is_refused_at_construction(smol_tokenizer, tmp_path, config, error):
    with pytest.raises(ValueError, match=error):
        LocalizedDPOLossTrainer(
            _tiny(0, smol_tokenizer), _args(tmp_path), ref_model=_tiny(1, smol_tokenizer), loss_config=config,
            train_dataset=SteerPairDataset(STEERS, smol_tokenizer), processing_class=smol_tokenizer,
        )  # fmt: skip


def test_trl_hf_and_localdpo_agree(smol_tokenizer, tmp_path):
    """One batch, three implementations: LocalizedDPOTrainer (TRL), the HF mixin, localdpo's functions."""
    from trl import DPOConfig

    from localdpo.integrations.trl import LocalizedDPOTrainer

    dataset = SteerPairDataset(STEERS, smol_tokenizer)
    hf = LocalizedDPOLossTrainer(
        _tiny(0, smol_tokenizer), _args(tmp_path), ref_model=_tiny(1, smol_tokenizer), train_dataset=dataset,
        processing_class=smol_tokenizer,
    )  # fmt: skip
    trl_args = DPOConfig(
        output_dir=str(tmp_path / "trl"), bf16=False, report_to=[], use_cpu=True, activation_checkpointing=False,
        beta=0.1, max_steps=1,
    )  # fmt: skip
    trl = LocalizedDPOTrainer(
        _tiny(0, smol_tokenizer), ref_model=_tiny(1, smol_tokenizer), args=trl_args, train_dataset=STEERS,
        processing_class=smol_tokenizer,
    )  # fmt: skip
    trl_batch = trl.data_collator([trl.train_dataset[i] for i in range(len(STEERS))])
    with torch.no_grad():
        trl_loss = float(trl.compute_loss(trl.model, trl_batch))
    expected = _localdpo_loss(
        _tiny(0, smol_tokenizer), _tiny(1, smol_tokenizer), smol_tokenizer, STEERS, beta=0.1
    )
    assert _trainer_loss(hf, dataset) == pytest.approx(expected, abs=1e-5)
    assert trl_loss == pytest.approx(expected, abs=1e-5)


def test_reference_cache_gives_the_reference_model_values(smol_tokenizer, tmp_path):
    refcache = pytest.importorskip("localdpo.reference.cache")
    dataset = SteerPairDataset(STEERS, smol_tokenizer)
    reference = _tiny(1, smol_tokenizer)
    cache = refcache.ReferenceCache(reference, smol_tokenizer, cache_dir=tmp_path / "cache", progress=False)
    cached = LocalizedDPOLossTrainer(
        _tiny(0, smol_tokenizer), _args(tmp_path), reference_cache=cache, train_dataset=dataset,
        processing_class=smol_tokenizer,
    )  # fmt: skip
    assert cached.ref_model is None
    batch = cached.data_collator([dataset[i] for i in range(len(dataset))])
    assert batch[REF_CHOSEN_LOGPS].shape == batch[CHOSEN_INPUT_IDS].shape
    expected = _localdpo_loss(
        _tiny(0, smol_tokenizer), _tiny(1, smol_tokenizer), smol_tokenizer, STEERS, beta=0.1
    )
    assert _trainer_loss(cached, dataset) == pytest.approx(expected, abs=1e-5)


def test_reference_cache_of_the_wrong_length_is_refused(smol_tokenizer):
    class ShortCache:
        def get(self, examples):
            return [(e.chosen_ids[:-1].float(), e.rejected_ids.float()) for e in examples]

    dataset = SteerPairDataset(STEERS, smol_tokenizer)
    collator = SteerPairCollator(pad_token_id=smol_tokenizer.pad_token_id, reference_cache=ShortCache())
    with pytest.raises(ValueError, match=r"returned \d+ chosen log-probs for steer .*, expected \d+"):
        collator([dataset[0]])


def test_no_reference_is_an_error(smol_tokenizer, tmp_path):
    dataset = SteerPairDataset(STEERS, smol_tokenizer)
    trainer = LocalizedDPOLossTrainer(
        _tiny(0, smol_tokenizer), _args(tmp_path), train_dataset=dataset, processing_class=smol_tokenizer
    )
    with pytest.raises(ValueError, match="no reference"):
        _trainer_loss(trainer, dataset)


def test_sft_plus_unlikelihood_needs_no_reference(smol_tokenizer, tmp_path):
    """[sft, unlikelihood] reads no reference: a plain policy without ref_model, cache or adapter trains,
    and its loss is localdpo's (the reference passed there is ignored)."""
    config = LocalizedLossConfig(loss_type=["sft", "unlikelihood"], loss_weights=[1.0, 0.3])
    dataset = SteerPairDataset(STEERS, smol_tokenizer)
    trainer = LocalizedDPOLossTrainer(
        _tiny(0, smol_tokenizer), _args(tmp_path), loss_config=config, train_dataset=dataset,
        processing_class=smol_tokenizer,
    )  # fmt: skip
    expected = _localdpo_loss(
        _tiny(0, smol_tokenizer), _tiny(1, smol_tokenizer), smol_tokenizer, STEERS,
        loss_type=config.loss_type, loss_weights=config.loss_weights,
    )  # fmt: skip
    assert _trainer_loss(trainer, dataset) == pytest.approx(expected, rel=1e-6)
    mode = "train" if trainer.model.training else "eval"
    assert trainer._localized_metrics[mode]["loss_unlikelihood"]


def test_training_lowers_the_loss_and_evaluates(smol_tokenizer, tmp_path):
    dataset = SteerPairDataset(STEERS, smol_tokenizer)
    trainer = LocalizedDPOLossTrainer(
        _tiny(0, smol_tokenizer), _args(tmp_path, max_steps=4, remove_unused_columns=True),
        ref_model=_tiny(0, smol_tokenizer), train_dataset=dataset, eval_dataset=dataset,
        processing_class=smol_tokenizer,
    )  # fmt: skip
    before = _trainer_loss(trainer, dataset)
    assert before == pytest.approx(math.log(2), abs=1e-6)  # policy == reference: h = 0
    trainer.train()
    first = trainer.state.log_history[0]
    assert first["loss"] == pytest.approx(before, abs=1e-4)
    assert "rewards/margins" in first
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == pytest.approx(_trainer_loss(trainer, dataset), abs=1e-5)
    assert metrics["eval_loss"] < before - 0.01
    assert metrics["eval_rewards/margins"] > 0


def test_peft_policy_uses_the_base_model_as_reference(smol_tokenizer, tmp_path):
    from peft import LoraConfig, get_peft_model

    policy = get_peft_model(
        _tiny(0, smol_tokenizer),
        LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )
    dataset = SteerPairDataset(STEERS, smol_tokenizer)
    trainer = LocalizedDPOLossTrainer(
        policy, _args(tmp_path, max_steps=4, learning_rate=1e-2), train_dataset=dataset,
        processing_class=smol_tokenizer,
    )  # fmt: skip
    before = _trainer_loss(trainer, dataset)
    assert before == pytest.approx(math.log(2), abs=1e-6)  # fresh adapter (B = 0): policy == base
    trainer.train()
    after = _trainer_loss(trainer, dataset)
    assert after < before - 0.01
    # The reference is still the untouched base model: recompute the loss against it explicitly.
    with torch.no_grad(), policy.disable_adapter():
        base_batch = trainer.data_collator([dataset[i] for i in range(len(dataset))])
        reference = stacked_pair_logps(policy, base_batch)
        base = stacked_pair_logps(_tiny(0, smol_tokenizer), base_batch)
    for got, expected in zip(reference, base):
        torch.testing.assert_close(got, expected, atol=1e-5, rtol=1e-6)


def test_matches_localdpo_trainer_first_step(smol_tokenizer, tmp_path):
    """localdpo's own trainer logs the same first-step loss as the HF mixin (reference from a shared cache)."""
    refcache = pytest.importorskip("localdpo.reference.cache")
    loop = pytest.importorskip("localdpo.trainer.loop")
    from localdpo.trainer.config import load_config

    cache = refcache.ReferenceCache(
        _tiny(1, smol_tokenizer), smol_tokenizer, cache_dir=tmp_path / "cache", progress=False
    )
    config = load_config(
        None,
        [
            f"run_dir={tmp_path / 'run'}", "train.max_steps=1", f"train.batch_size={len(STEERS)}",
            "train.progress=false", "loss.reference=cache", "eval.drift=false", "eval.at_start=false",
            "wandb.mode=disabled", "checkpoint.save_final=false", "train.device=cpu",
        ],
    )  # fmt: skip
    own = loop.Trainer(
        config, model=_tiny(0, smol_tokenizer), tokenizer=smol_tokenizer, train_steers=STEERS,
        eval_steers=STEERS[:1], reference_cache=cache,
    ).setup()  # fmt: skip
    first_step = own.train_step()["train/loss"]
    dataset = SteerPairDataset(STEERS, smol_tokenizer)
    hf = LocalizedDPOLossTrainer(
        _tiny(0, smol_tokenizer), _args(tmp_path), reference_cache=cache, train_dataset=dataset,
        processing_class=smol_tokenizer,
    )  # fmt: skip
    assert first_step == pytest.approx(_trainer_loss(hf, dataset), abs=1e-5)
    assert abs(first_step - math.log(2)) > 1e-4


def test_a_loss_spec_is_taken_as_the_loss_config(smol_tokenizer, tmp_path):
    """`loss_config` may be the frozen `LossSpec` itself: the same loss as the `LocalizedLossConfig` it equals."""
    from localdpo.losses import LossSpec

    dataset = SteerPairDataset(STEERS, smol_tokenizer)
    losses = []
    for loss_config in (LocalizedLossConfig(loss_type="dpop", dpop_lambda=5.0), LossSpec.of("dpop", dpop_lambda=5.0)):
        trainer = LocalizedDPOLossTrainer(
            _tiny(0, smol_tokenizer), _args(tmp_path), ref_model=_tiny(1, smol_tokenizer), loss_config=loss_config,
            train_dataset=dataset, processing_class=smol_tokenizer,
        )  # fmt: skip
        assert trainer.loss_spec == LossSpec.of("dpop", dpop_lambda=5.0)
        losses.append(_trainer_loss(trainer, dataset))
    assert losses[0] == losses[1]
