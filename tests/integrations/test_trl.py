"""LocalizedDPOTrainer (TRL 1.16) against localdpo's own functions, on tiny random Llama models (CPU, fp32)."""

import math
import os

import pytest
import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")

datasets = pytest.importorskip("datasets")
from trl import DPOConfig, DPOTrainer  # noqa: E402

from localdpo import Steer, localized_dpo_loss, tokenize_steer  # noqa: E402
from localdpo.forward import sequence_token_logps  # noqa: E402
from localdpo.integrations.trl import (  # noqa: E402
    SPAN_COLUMNS,
    LocalizedDPOConfig,
    LocalizedDPOTrainer,
    SpanDataCollatorForPreference,
    trl_loss_type,
    trl_row_from_tokenized,
)
from localdpo.losses import LossSpec, masked_sft_loss  # noqa: E402
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
from localdpo.steers.steer import steer_from_row  # noqa: E402

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
        rejected=" 5, I think.",
        chosen=" 4, I think.",
        id="sum",
    ),
    Steer(
        prompt="Capital of France?",
        prefix="",
        rejected=" Lyon, a city.",
        chosen=" Paris.",
        chosen_complete=True,
        id="capital",
    ),
    Steer(prompt="Name a colour:", prefix=" Blue", rejected=" and green and red.", chosen=".", id="colour"),
]
ROWS = [
    {"prompt": "The capital of France is", "chosen": " Paris. It is big.", "rejected": " Lyon. It is big."},
    {"prompt": "Two plus two is", "chosen": " four.", "rejected": " five, or six."},
    {
        "prompt": "Water boils at",
        "chosen": " 100 degrees at sea level.",
        "rejected": " 90 degrees at sea level.",
    },
]


def _tiny(seed, tokenizer):
    """The tiny SmolLM2-shaped random model (`localdpo.models.loading.tiny_model`); weights depend only on the seed."""
    return tiny_model(seed=seed, tokenizer=tokenizer)[0]


@pytest.fixture(scope="module")
def model_dirs(tmp_path_factory, smol_tokenizer):
    """Saved tiny policy (seed 0) and reference (seed 1): TRL may reload a reference from `_name_or_path`."""
    dirs = {}
    for name, seed in (("policy", 0), ("reference", 1)):
        path = tmp_path_factory.mktemp(name)
        _tiny(seed, smol_tokenizer).save_pretrained(path)
        dirs[name] = path
    return dirs


def _load(path):
    from transformers import LlamaForCausalLM

    return LlamaForCausalLM.from_pretrained(path, dtype=torch.float32)


def _args(tmp_path, **overrides):
    values = dict(
        output_dir=str(tmp_path / "out"), bf16=False, report_to=[], use_cpu=True, activation_checkpointing=False,
        save_strategy="no", logging_steps=1, per_device_train_batch_size=4, max_steps=1, learning_rate=1e-3,
        beta=0.1, seed=0,
    )  # fmt: skip
    values.update(overrides)
    return LocalizedDPOConfig(**values)


def _full_batch(trainer):
    rows = [trainer.train_dataset[i] for i in range(len(trainer.train_dataset))]
    return trainer.data_collator(rows)


def _trl_loss(trainer):
    with torch.no_grad():
        return float(trainer.compute_loss(trainer.model, _full_batch(trainer)))


def _localdpo_loss(policy, reference, tokenizer, steers, span_mode, **loss_kwargs):
    """The loss computed with localdpo's own functions only."""
    examples = [tokenize_steer(s, tokenizer, span_mode=span_mode) for s in steers]
    batch = collate_pairs(examples, pad_token_id=tokenizer.pad_token_id)
    with torch.no_grad():
        logps = {
            (name, side): sequence_token_logps(model, batch[ids], batch[attn])
            for name, model in (("policy", policy), ("reference", reference))
            for side, ids, attn in (
                ("c", CHOSEN_INPUT_IDS, CHOSEN_ATTENTION_MASK),
                ("r", REJECTED_INPUT_IDS, REJECTED_ATTENTION_MASK),
            )
        }
    out = localized_dpo_loss(
        logps["policy", "c"], logps["policy", "r"], logps["reference", "c"], logps["reference", "r"],
        batch[CHOSEN_LOSS_MASK], batch[REJECTED_LOSS_MASK], **loss_kwargs,
    )  # fmt: skip
    return float(out.loss)


def test_steer_row_reassembles_localdpo_ids_and_spans(smol_tokenizer):
    for steer in STEERS:
        example = tokenize_steer(steer, smol_tokenizer)
        row = trl_row_from_tokenized(example)
        assert row["prompt_ids"] + row["chosen_ids"] == example.chosen_ids.tolist()
        assert row["prompt_ids"] + row["rejected_ids"] == example.rejected_ids.tolist()
        assert (row[SPAN_COLUMNS[0]], row[SPAN_COLUMNS[1]]) == example.chosen_span
        assert (row[SPAN_COLUMNS[2]], row[SPAN_COLUMNS[3]]) == example.rejected_span
    # "Paris." vs "Lyon, a city.": the edit is the whole continuation; chosen ends the answer (EOS scored).
    row = trl_row_from_tokenized(tokenize_steer(STEERS[2], smol_tokenizer))
    chosen = row["prompt_ids"] + row["chosen_ids"]
    assert smol_tokenizer.decode(chosen[row[SPAN_COLUMNS[0]] : row[SPAN_COLUMNS[1]]]) == " Paris.<|im_end|>"


def test_loss_type_mapping():
    assert trl_loss_type("sigmoid") == "sigmoid"
    assert trl_loss_type("sigmoid", length_normalize=True) == "sigmoid_norm"
    assert trl_loss_type("ipo", length_normalize=True) == "ipo"
    assert trl_loss_type("hinge") == "hinge"
    assert trl_loss_type("robust") == "robust"
    assert trl_loss_type("apo_zero") == "apo_zero"
    assert trl_loss_type("apo_down") == "apo_down"
    assert trl_loss_type("sft") == trl_loss_type("sft", length_normalize=True) == "sft"
    assert trl_loss_type("dpop") == "dpop"  # not TRL's: computed by LocalizedDPOTrainer
    assert trl_loss_type("cal_dpo") == "cal_dpo"
    assert trl_loss_type("unlikelihood") == "unlikelihood"
    with pytest.raises(ValueError, match="ipo with length_normalize=False"):
        trl_loss_type("ipo")
    with pytest.raises(ValueError, match="apo_zero with length_normalize=True"):
        trl_loss_type("apo_zero", length_normalize=True)


def test_localized_loss_types_only_for_lists_with_a_type_trl_lacks():
    from localdpo.integrations.trl import localized_loss_types

    assert localized_loss_types(["sigmoid", "sft"]) is None  # TRL's own code
    assert localized_loss_types(["sigmoid", "dpop", "sft"]) == ["sigmoid", "dpop", "sft"]
    assert localized_loss_types(["cal_dpo"]) == ["cal_dpo"]
    assert localized_loss_types(["sft", "unlikelihood"]) == ["sft", "unlikelihood"]
    with pytest.raises(ValueError, match=r"\['sigmoid_norm'\] cannot be combined with dpop"):
        localized_loss_types(["sigmoid_norm", "dpop"])  # localized_dpo_loss normalizes all terms or none
    with pytest.raises(ValueError, match=r"\['exo_pair'\] cannot be combined"):
        localized_loss_types(["cal_dpo", "exo_pair"])


def test_span_sums_as_token_logps():
    from localdpo.integrations.trl import span_sums_as_token_logps

    mask = torch.tensor([[0, 1, 1, 0], [0, 0, 0, 0], [1, 0, 0, 0]], dtype=torch.bool)
    values = span_sums_as_token_logps(torch.tensor([-3.5, 0.0, -1.25]), mask)
    assert values.tolist() == [[0.0, -3.5, 0.0, 0.0], [0.0, 0.0, 0.0, 0.0], [-1.25, 0.0, 0.0, 0.0]]


@pytest.mark.parametrize(
    ("loss_type", "overrides", "error"),
    [
        (["sigmoid_norm", "dpop"], {}, "cannot be combined with dpop"),
        (["sft", "dpop"], {"loss_weights": [1.0, 0.0]}, "no preference or unlikelihood term with a positive"),
        (["cal_dpo"], {"use_weighting": True}, "use_weighting"),
    ],
)
def test_bad_localized_loss_is_refused_at_construction(
    model_dirs, smol_tokenizer, tmp_path, loss_type, overrides, error
):
    with pytest.raises(ValueError, match=error):
        LocalizedDPOTrainer(
            _load(model_dirs["policy"]), args=_args(tmp_path, loss_type=loss_type, **overrides),
            train_dataset=STEERS, processing_class=smol_tokenizer,
        )  # fmt: skip


def test_dpop_needs_its_lambda(model_dirs, smol_tokenizer, tmp_path):
    plain = DPOConfig(
        output_dir=str(tmp_path / "out"), bf16=False, use_cpu=True, report_to=[], loss_type=["dpop"],
        activation_checkpointing=False,
    )
    with pytest.raises(ValueError, match="LocalizedDPOConfig"):
        LocalizedDPOTrainer(
            _load(model_dirs["policy"]), args=plain, train_dataset=STEERS, processing_class=smol_tokenizer
        )


def test_sigmoid_with_label_smoothing_is_refused(model_dirs, smol_tokenizer, tmp_path):
    with pytest.raises(ValueError, match="ignores label_smoothing"):
        LocalizedDPOTrainer(
            _load(model_dirs["policy"]), args=_args(tmp_path, label_smoothing=0.1), train_dataset=STEERS,
            processing_class=smol_tokenizer,
        )  # fmt: skip


def test_trl_rows_get_spans_on_trl_ids(model_dirs, smol_tokenizer, tmp_path):
    """Spans are found on TRL's own ids; for plain-text rows those equal localdpo's tokenization of the row."""
    trainer = LocalizedDPOTrainer(
        _load(model_dirs["policy"]), args=_args(tmp_path), train_dataset=datasets.Dataset.from_list(ROWS),
        processing_class=smol_tokenizer,
    )  # fmt: skip
    row = trainer.train_dataset[0]
    chosen = row["prompt_ids"] + row["chosen_ids"]
    assert smol_tokenizer.decode(chosen[row[SPAN_COLUMNS[0]] : row[SPAN_COLUMNS[1]]]) == " Paris"
    for index, raw in enumerate(ROWS):
        row = trainer.train_dataset[index]
        example = tokenize_steer(steer_from_row(raw), smol_tokenizer)
        assert row["prompt_ids"] + row["chosen_ids"] == example.chosen_ids.tolist()
        assert row["prompt_ids"] + row["rejected_ids"] == example.rejected_ids.tolist()
        assert (row[SPAN_COLUMNS[0]], row[SPAN_COLUMNS[1]]) == example.chosen_span
        assert (row[SPAN_COLUMNS[2]], row[SPAN_COLUMNS[3]]) == example.rejected_span


def test_span_columns_survive_remove_unused_columns(model_dirs, smol_tokenizer, tmp_path):
    trainer = LocalizedDPOTrainer(
        _load(model_dirs["policy"]), args=_args(tmp_path, remove_unused_columns=True), train_dataset=STEERS,
        processing_class=smol_tokenizer,
    )  # fmt: skip
    kept = trainer._remove_unused_columns(trainer.train_dataset)
    assert set(SPAN_COLUMNS) <= set(kept.column_names)
    assert "localdpo_steer_id" not in kept.column_names
    batch = next(iter(trainer.get_train_dataloader()))
    # The dataloader shuffles: match rows through their ids.
    by_ids = {}
    for steer in STEERS:
        example = tokenize_steer(steer, smol_tokenizer)
        by_ids[tuple(example.chosen_ids.tolist())] = example.chosen_mask.tolist()
        by_ids[tuple(example.rejected_ids.tolist())] = example.rejected_mask.tolist()
    for ids, attention, mask in zip(batch["input_ids"], batch["attention_mask"], batch["completion_mask"]):
        length = int(attention.sum())
        assert [bool(m) for m in mask[:length].tolist()] == by_ids[tuple(ids[:length].tolist())]
        assert not mask[length:].any()


@pytest.mark.parametrize(
    ("loss_type", "length_normalize", "label_smoothing"),
    [
        ("sigmoid", False, 0.0),
        ("sigmoid", True, 0.0),
        ("ipo", True, 0.0),
        ("hinge", False, 0.0),
        ("robust", False, 0.2),
    ],
)
def test_first_step_loss_matches_localdpo(
    model_dirs, smol_tokenizer, tmp_path, loss_type, length_normalize, label_smoothing
):
    policy, reference = _load(model_dirs["policy"]), _load(model_dirs["reference"])
    trainer = LocalizedDPOTrainer(
        policy, ref_model=reference,
        args=_args(tmp_path, loss_type=[trl_loss_type(loss_type, length_normalize)], label_smoothing=label_smoothing),
        train_dataset=STEERS, processing_class=smol_tokenizer,
    )  # fmt: skip
    expected = _localdpo_loss(
        _load(model_dirs["policy"]), _load(model_dirs["reference"]), smol_tokenizer, STEERS, "divergent",
        beta=0.1, loss_type=loss_type, length_normalize=length_normalize, label_smoothing=label_smoothing,
    )  # fmt: skip
    assert _trl_loss(trainer) == pytest.approx(expected, abs=1e-5)
    # The reference differs from the policy, so the loss is not its trivial value at h = 0.
    trivial = {"sigmoid": math.log(2), "ipo": (1 / 0.2) ** 2, "hinge": 1.0, "robust": math.log(2)}[loss_type]
    assert abs(expected - trivial) > 1e-4


@pytest.mark.parametrize(
    ("loss_type", "loss_weights", "dpop_lambda", "trl_own"),
    [
        ("apo_zero", None, 50.0, True),
        ("apo_down", None, 50.0, True),
        (["sigmoid", "sft"], [1.0, 0.5], 50.0, True),
        ("dpop", None, 5.0, False),
        ("cal_dpo", None, 50.0, False),
        (["sigmoid", "dpop", "sft"], [1.0, 0.5, 0.25], 50.0, False),
        (["sigmoid", "unlikelihood"], [1.0, 3.0], 50.0, False),
    ],
)
def test_apo_dpop_cal_dpo_and_combinations_match_localdpo(
    model_dirs, smol_tokenizer, tmp_path, loss_type, loss_weights, dpop_lambda, trl_own
):
    """TRL's own apo_zero / apo_down / sft and the subclass's dpop / cal_dpo equal localized_dpo_loss."""
    types = [loss_type] if isinstance(loss_type, str) else loss_type
    trainer = LocalizedDPOTrainer(
        _load(model_dirs["policy"]), ref_model=_load(model_dirs["reference"]),
        args=_args(tmp_path, loss_type=[trl_loss_type(t) for t in types], loss_weights=loss_weights,
                   dpop_lambda=dpop_lambda),
        train_dataset=STEERS, processing_class=smol_tokenizer,
    )  # fmt: skip
    assert (trainer.localized_loss_types is None) == trl_own
    if not trl_own:  # the loss localdpo computes in TRL's place, frozen from args once
        assert trainer.loss_spec == LossSpec.of(types, loss_weights, beta=0.1, dpop_lambda=dpop_lambda)
    policy, reference = _load(model_dirs["policy"]), _load(model_dirs["reference"])
    expected = _localdpo_loss(
        policy, reference, smol_tokenizer, STEERS, "divergent", beta=0.1, loss_type=loss_type,
        loss_weights=loss_weights, dpop_lambda=dpop_lambda,
    )  # fmt: skip
    # fp32: Cal-DPO's ~51.5 carries a ulp of 3.8e-6, so the two summation orders may differ past abs 1e-5
    assert _trl_loss(trainer) == pytest.approx(expected, rel=1e-6, abs=1e-5)
    # Not a value the type shares with a simpler one: h != 0, and DPO-Positive's penalty is active.
    trivial = {"apo_zero": 1.0, "apo_down": 1.0, "dpop": math.log(2), "cal_dpo": math.log(2) + 2 * 5.0**2}
    if isinstance(loss_type, str):
        assert abs(expected - trivial[loss_type]) > 1e-4
    if "dpop" in types:
        without = _localdpo_loss(
            policy, reference, smol_tokenizer, STEERS, "divergent", beta=0.1, loss_type=loss_type,
            loss_weights=loss_weights, dpop_lambda=0.0,
        )  # fmt: skip
        assert expected > without + 1e-3


def test_unlikelihood_matches_localdpo_without_a_reference_forward(model_dirs, smol_tokenizer, tmp_path):
    """`unlikelihood` alone reads no reference: the subclass never calls TRL's reference forward, and its loss
    is localdpo's (a token mean of -log(1 - p) over the rejected spans; ≈ p ≈ 1/V on a random model, so the
    comparison is relative)."""
    trainer = LocalizedDPOTrainer(
        _load(model_dirs["policy"]), ref_model=_load(model_dirs["reference"]),
        args=_args(tmp_path, loss_type=["unlikelihood"]), train_dataset=STEERS, processing_class=smol_tokenizer,
    )  # fmt: skip

    def no_reference(*args, **kwargs):
        raise AssertionError("the reference forward ran for a reference-free loss")

    trainer.compute_ref_log_probs = no_reference
    expected = _localdpo_loss(
        _load(model_dirs["policy"]), _load(model_dirs["reference"]), smol_tokenizer, STEERS, "divergent",
        loss_type="unlikelihood",
    )  # fmt: skip
    assert 0 < expected < 1e-3
    assert _trl_loss(trainer) == pytest.approx(expected, rel=1e-4)


def test_dpop_with_precomputed_reference_matches_localdpo(model_dirs, smol_tokenizer, tmp_path):
    trainer = LocalizedDPOTrainer(
        _load(model_dirs["policy"]), ref_model=_load(model_dirs["reference"]),
        args=_args(tmp_path, loss_type=["dpop"], precompute_ref_log_probs=True), train_dataset=STEERS,
        processing_class=smol_tokenizer,
    )  # fmt: skip
    assert "ref_chosen_logps" in trainer.train_dataset.column_names
    expected = _localdpo_loss(
        _load(model_dirs["policy"]), _load(model_dirs["reference"]), smol_tokenizer, STEERS, "divergent",
        beta=0.1, loss_type="dpop",
    )  # fmt: skip
    assert _trl_loss(trainer) == pytest.approx(expected, abs=1e-5)


def test_cal_dpo_with_peft_trains_and_logs_trl_metrics(model_dirs, smol_tokenizer, tmp_path):
    """Cal-DPO through the subclass: the reference is the base model (adapter off), a few steps lower the loss
    without NaN, and TRL's reward and log-prob metrics are logged, at training and at evaluation."""
    from peft import LoraConfig

    trainer = LocalizedDPOTrainer(
        _load(model_dirs["policy"]),
        args=_args(tmp_path, loss_type=["cal_dpo", "sft"], loss_weights=[1.0, 0.1], max_steps=4, learning_rate=1e-2),
        train_dataset=STEERS, eval_dataset=STEERS, processing_class=smol_tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )  # fmt: skip
    batch = _full_batch(trainer)
    with torch.no_grad():
        logps = sequence_token_logps(_load(model_dirs["policy"]), batch["input_ids"], batch["attention_mask"])
    chosen_nll = masked_sft_loss(logps[: len(STEERS)], batch["completion_mask"][: len(STEERS)])
    before = _trl_loss(trainer)
    # A fresh adapter leaves the policy at the base model: Δc = Δr = 0, Cal-DPO = log 2 + 2 (1/(2β))².
    assert before == pytest.approx(math.log(2) + 2 * 5.0**2 + 0.1 * float(chosen_nll), abs=1e-4)
    trainer.train()
    logged = [row for row in trainer.state.log_history if "loss" in row]
    assert len(logged) == 4 and all(math.isfinite(row["loss"]) for row in logged)
    for key in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
                "logps/rejected", "loss_cal_dpo", "loss_sft"):  # fmt: skip
        assert math.isfinite(logged[0][key]), key
    assert logged[0]["loss"] == pytest.approx(before, abs=1e-4)
    after = _trl_loss(trainer)
    assert math.isfinite(after) and after < before - 0.1
    metrics = trainer.evaluate()
    assert metrics["eval_loss"] == pytest.approx(after, abs=1e-4)
    assert metrics["eval_rewards/chosen"] > 0  # Cal-DPO pushes the chosen span's log-ratio towards +1/(2β)


@pytest.mark.parametrize("span_mode", ["divergent", "to_end", "completion"])
def test_precomputed_reference_matches_localdpo(model_dirs, smol_tokenizer, tmp_path, span_mode):
    trainer = LocalizedDPOTrainer(
        _load(model_dirs["policy"]), ref_model=_load(model_dirs["reference"]),
        args=_args(tmp_path, precompute_ref_log_probs=True), train_dataset=STEERS, processing_class=smol_tokenizer,
        span_mode=span_mode,
    )  # fmt: skip
    assert "ref_chosen_logps" in trainer.train_dataset.column_names
    expected = _localdpo_loss(
        _load(model_dirs["policy"]),
        _load(model_dirs["reference"]),
        smol_tokenizer,
        STEERS,
        span_mode,
        beta=0.1,
    )
    assert _trl_loss(trainer) == pytest.approx(expected, abs=1e-5)


def test_completion_mode_equals_dpo_trainer(model_dirs, smol_tokenizer, tmp_path):
    data = datasets.Dataset.from_list(ROWS)
    plain = DPOTrainer(
        _load(model_dirs["policy"]), ref_model=_load(model_dirs["reference"]), args=_args(tmp_path),
        train_dataset=data, processing_class=smol_tokenizer,
    )  # fmt: skip
    localized = LocalizedDPOTrainer(
        _load(model_dirs["policy"]), ref_model=_load(model_dirs["reference"]), args=_args(tmp_path),
        train_dataset=data, processing_class=smol_tokenizer, span_mode="completion",
    )  # fmt: skip
    plain_batch, localized_batch = _full_batch(plain), _full_batch(localized)
    for key in ("input_ids", "attention_mask", "completion_mask"):
        assert torch.equal(plain_batch[key], localized_batch[key]), key
    assert _trl_loss(localized) == pytest.approx(_trl_loss(plain), abs=1e-6)
    divergent = LocalizedDPOTrainer(
        _load(model_dirs["policy"]), ref_model=_load(model_dirs["reference"]), args=_args(tmp_path),
        train_dataset=data, processing_class=smol_tokenizer,
    )  # fmt: skip
    assert _full_batch(divergent)["completion_mask"].sum() < plain_batch["completion_mask"].sum()


def test_training_lowers_the_loss(model_dirs, smol_tokenizer, tmp_path):
    trainer = LocalizedDPOTrainer(
        _load(model_dirs["policy"]), args=_args(tmp_path, max_steps=4), train_dataset=STEERS,
        processing_class=smol_tokenizer,
    )  # fmt: skip
    before = _trl_loss(trainer)
    assert before == pytest.approx(math.log(2), abs=1e-6)  # policy == reference at step 0: h = 0
    trainer.train()
    assert _trl_loss(trainer) < before - 0.01


def test_reference_cache_follows_the_span_rule(model_dirs, smol_tokenizer, tmp_path):
    """Two runs over the same file-backed dataset with different span rules get their own reference values.

    TRL caches precomputed reference log-probs next to the dataset, keyed by the prepared dataset's
    fingerprint: the span map puts the span rule into that fingerprint.
    """
    datasets.Dataset.from_list(ROWS).save_to_disk(tmp_path / "data")
    values = {}
    for run, span_mode in enumerate(["divergent", "to_end", "divergent"]):
        data = datasets.load_from_disk(str(tmp_path / "data"))
        trainer = LocalizedDPOTrainer(
            _load(model_dirs["policy"]), ref_model=_load(model_dirs["reference"]),
            args=_args(tmp_path, precompute_ref_log_probs=True), train_dataset=data, processing_class=smol_tokenizer,
            span_mode=span_mode,
        )  # fmt: skip
        values[run] = torch.tensor(trainer.train_dataset["ref_chosen_logps"])
        # What the reference gives under this run's span rule, computed without any cache.
        reference = _load(model_dirs["reference"])
        batch = _full_batch(trainer)
        with torch.no_grad():
            logps = sequence_token_logps(reference, batch["input_ids"], batch["attention_mask"])  # (2B, T)
        expected = (logps * batch["completion_mask"]).sum(-1)[: len(ROWS)]
        torch.testing.assert_close(values[run], expected, atol=1e-5, rtol=1e-6)
    cached = list((tmp_path / "data").glob("cache-*.arrow"))
    assert cached, "the dataset was not file-backed: the test would not exercise TRL's cache"
    assert not torch.allclose(values[0], values[1])
    torch.testing.assert_close(values[2], values[0])


def test_dataset_built_with_another_span_mode_is_refused(model_dirs, smol_tokenizer, tmp_path):
    from localdpo.integrations.trl import steers_to_trl_dataset

    data = steers_to_trl_dataset(STEERS, smol_tokenizer, span_mode="to_end")
    with pytest.raises(ValueError, match="span_mode"):
        LocalizedDPOTrainer(
            _load(model_dirs["policy"]),
            args=_args(tmp_path),
            train_dataset=data,
            processing_class=smol_tokenizer,
        )


def test_truncation_that_cuts_a_span_raises(smol_tokenizer):
    example = trl_row_from_tokenized(tokenize_steer(STEERS[0], smol_tokenizer))
    end = example[SPAN_COLUMNS[1]]
    collator = SpanDataCollatorForPreference(pad_token_id=smol_tokenizer.pad_token_id, max_length=end - 1)
    with pytest.raises(ValueError, match="cuts scored chosen tokens"):
        collator([example])
    assert (
        SpanDataCollatorForPreference(pad_token_id=0, max_length=end)([example])["completion_mask"].sum() == 4
    )


def test_peft_reference_is_the_base_model(model_dirs, smol_tokenizer, tmp_path):
    """With a LoRA adapter, TRL's reference is the base model (adapter off): precomputed values equal it."""
    from peft import LoraConfig

    trainer = LocalizedDPOTrainer(
        _load(model_dirs["policy"]), args=_args(tmp_path, precompute_ref_log_probs=True, max_steps=4, learning_rate=1e-2),
        train_dataset=STEERS, processing_class=smol_tokenizer,
        peft_config=LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], lora_dropout=0.0),
    )  # fmt: skip
    base = _load(model_dirs["policy"])
    batch = _full_batch(trainer)
    with torch.no_grad():
        logps = sequence_token_logps(base, batch["input_ids"], batch["attention_mask"])  # (2B, T)
    expected = (logps * batch["completion_mask"]).sum(-1)  # (2B,)
    torch.testing.assert_close(batch["ref_chosen_logps"], expected[: len(STEERS)], atol=1e-5, rtol=1e-6)
    torch.testing.assert_close(batch["ref_rejected_logps"], expected[len(STEERS) :], atol=1e-5, rtol=1e-6)
    before = _trl_loss(trainer)
    # A fresh LoRA adapter (B = 0) leaves the policy at the base model: h = 0.
    assert before == pytest.approx(math.log(2), abs=1e-6)
    trainer.train()
    assert _trl_loss(trainer) < before - 0.01


def test_steer_file_and_steer_dataset_inputs(model_dirs, smol_tokenizer, tmp_path):
    """A steer JSONL path and a datasets.Dataset of steer rows give the same rows as a list of Steers."""
    from localdpo import save_steers

    steers = [s for s in STEERS if isinstance(s.prompt, str)]  # an arrow column holds one prompt type
    save_steers(steers, tmp_path / "steers.jsonl")
    rows = [s.to_dict() for s in steers]
    for row in rows:
        row.pop("meta")  # an empty dict is not a datasets column type
    expected = None
    for data in (steers, str(tmp_path / "steers.jsonl"), datasets.Dataset.from_list(rows)):
        trainer = LocalizedDPOTrainer(
            _load(model_dirs["policy"]),
            args=_args(tmp_path),
            train_dataset=data,
            processing_class=smol_tokenizer,
        )
        got = [
            {k: r[k] for k in ("prompt_ids", "chosen_ids", "rejected_ids", *SPAN_COLUMNS)}
            for r in trainer.train_dataset
        ]
        expected = expected or got
        assert got == expected


def test_span_rule_is_part_of_the_fingerprint():
    """The key TRL's reference cache is built on: same rule -> same fingerprint, another rule -> another."""
    from localdpo.integrations.trl import add_span_columns

    data = datasets.Dataset.from_dict(
        {"prompt_ids": [[1, 2]], "chosen_ids": [[3, 4, 9]], "rejected_ids": [[5, 4, 9]]}
    )
    prints = {
        mode: add_span_columns(data, mode)._fingerprint for mode in ("divergent", "to_end", "completion")
    }
    assert len(set(prints.values())) == 3
    assert add_span_columns(data, "divergent")._fingerprint == prints["divergent"]
    spans = {mode: [add_span_columns(data, mode)[0][c] for c in SPAN_COLUMNS] for mode in prints}
    # [1 2 | 3 4 9] vs [1 2 | 5 4 9]: the edit is token 2 only; to_end runs to the end; completion from 2.
    assert spans == {"divergent": [2, 3, 2, 3], "to_end": [2, 5, 2, 5], "completion": [2, 5, 2, 5]}
    # [1 | 2 3 9] vs [1 | 2 5 9]: the completion starts at 1, the sides differ from 2.
    data = datasets.Dataset.from_dict(
        {"prompt_ids": [[1]], "chosen_ids": [[2, 3, 9]], "rejected_ids": [[2, 5, 9]]}
    )
    spans = {mode: [add_span_columns(data, mode)[0][c] for c in SPAN_COLUMNS] for mode in prints}
    assert spans == {"divergent": [2, 3, 2, 3], "to_end": [2, 4, 2, 4], "completion": [1, 4, 1, 4]}


def test_iterable_dataset_gets_the_same_spans():
    from localdpo.integrations.trl import add_span_columns

    rows = {"prompt_ids": [[1, 2], [7]], "chosen_ids": [[3, 4, 9], [8]], "rejected_ids": [[5, 4, 9], [6, 6]]}
    mapped = add_span_columns(datasets.Dataset.from_dict(rows), "divergent")
    streamed = add_span_columns(datasets.Dataset.from_dict(rows).to_iterable_dataset(), "divergent")
    assert list(streamed) == list(mapped)


def test_identical_sides_name_the_row():
    from localdpo.integrations.trl import add_span_columns

    data = datasets.Dataset.from_dict(
        {"prompt_ids": [[1], [1]], "chosen_ids": [[2], [3]], "rejected_ids": [[4], [3]]}
    )
    with pytest.raises(ValueError, match="preference row 1"):
        add_span_columns(data, "divergent")
