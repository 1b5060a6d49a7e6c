import math
from dataclasses import replace

import pytest
import torch

from localdpo.models.loading import tiny_model
from localdpo.trainer import ConfigError, Trainer, run_training

from .conftest import make_steers, tiny_config

STEERS = make_steers(12)
TRAIN, HELD = STEERS[:4], STEERS[8:]


@pytest.fixture(scope="module")
def tiny(smol_tokenizer):
    return tiny_model(seed=0, tokenizer=smol_tokenizer)


def _run(tmp_path, tiny, *overrides, **kwargs):
    model, tokenizer = tiny
    config = tiny_config(tmp_path / "run", *overrides)
    return run_training(
        config, model=model, tokenizer=tokenizer, train_steers=TRAIN, eval_steers=HELD, **kwargs
    )


@pytest.mark.parametrize(
    "method, extra",
    [
        ("ldpo", []),
        ("dpo", []),
        ("sft", []),
        ("sft_full", []),
        ("ldpo", ["loss.sft_weight=1.0"]),
        ("ldpo", ["loss.loss_type=apo_zero"]),
        ("ldpo", ["loss.loss_type=apo_down"]),
        ("ldpo", ["loss.loss_type=dpop"]),
        ("ldpo", ["loss.loss_type=cal_dpo"]),
        ("ldpo", ["loss.loss_type=[dpop,sft]", "loss.loss_weights=[1,0.5]"]),
        ("ldpo", ["loss.loss_type=[sft,unlikelihood]", "loss.loss_weights=[1,0.3]"]),
    ],
    ids=[
        "ldpo", "dpo", "sft", "sft_full", "ldpo+sft", "apo_zero", "apo_down", "dpop", "cal_dpo", "dpop+sft", "sft+ul"
    ],
)
def test_each_method_lowers_its_own_training_loss(tmp_path, tiny, method, extra):
    """Full batch (4 steers) so every step sees the same data: the loss must fall."""
    result = _run(tmp_path, tiny, f"method={method}", "train.max_steps=4", *extra)
    losses = [row["train/loss"] for row in result.train_log]
    assert len(losses) == 4 and all(math.isfinite(x) for x in losses)
    first = result.train_log[0]
    if method == "dpo" or (method == "ldpo" and not any("loss_type" in x for x in extra)):
        # policy == reference at step 0: every margin is 0 and the DPO loss is log 2
        assert first["train/preference_loss"] == pytest.approx(math.log(2), abs=1e-6)
    if any("loss_type" in x for x in extra):
        # at step 0 Δc = Δr = 0: APO 1 - σ(0) + σ(0) = 1, σ(0) + 1 - σ(0) = 1; DPOP log 2; Cal-DPO
        # log 2 + 2 (1/(2β))² = log 2 + 50 at β = 0.1
        step0 = {"apo_zero": 1.0, "apo_down": 1.0, "dpop": math.log(2), "cal_dpo": math.log(2) + 50.0}
        term = extra[0].split("=")[1].strip("[]").split(",")[0]
        if term in step0:
            assert first[f"train/loss_{term}"] == pytest.approx(step0[term], abs=1e-5)
        else:  # [sft, unlikelihood]: no preference term; the rejected span's unlikelihood is logged
            assert "train/preference_loss" not in first and 0 < first["train/loss_unlikelihood"] < math.inf
    if method != "sft_full":
        assert math.isfinite(first["logps/chosen_span"]) and first["logps/chosen_span_per_token"] < 0
    if method in ("ldpo", "dpo"):
        assert first["logratios/chosen_span"] == pytest.approx(0.0, abs=1e-5)
        assert result.train_log[-1]["logratios/chosen_span"] != 0
    assert losses[-1] < losses[0] - 0.01, losses


@pytest.mark.parametrize("method", ["sft", "sft_full", "ldpo+sft"])
def test_gradient_accumulation_equals_one_big_batch(tmp_path, tiny, method):
    """2 micro-batches of 2 steers = 1 batch of 4: the SFT term is one token mean over the step.

    The steers' chosen spans differ in length, so averaging per-micro-batch token means would not match.
    """
    model, tokenizer = tiny
    # corrections of 1 to 4 words: chosen spans of different lengths
    uneven = [replace(s, chosen=" ".join([s.chosen] * (i + 1))) for i, s in enumerate(TRAIN)]
    extra = ["method=ldpo", "loss.sft_weight=1.0"] if method == "ldpo+sft" else [f"method={method}"]
    runs = {}
    for batch_size, accum in ((4, 1), (2, 2)):
        config = tiny_config(
            tmp_path / f"b{batch_size}",
            *extra,
            f"train.batch_size={batch_size}",
            f"train.grad_accum={accum}",
            "train.max_steps=2",
            "optim.adam_eps=1e-2",  # keeps near-zero gradients' updates smooth (see tests/trainer/test_ddp.py)
        )
        trainer = Trainer(config, model=model, tokenizer=tokenizer, train_steers=uneven, eval_steers=HELD)
        result = trainer.run()
        runs[accum] = (result.train_log, {k: v.detach().clone() for k, v in trainer.params.items()})
        if accum == 2:
            spans = [int(e.chosen_mask.sum()) for e in trainer.train_examples]
    assert len(set(spans)) > 1, spans  # unequal span lengths: the test can tell the two normalizations apart
    (big_log, big_params), (accum_log, accum_params) = runs[1], runs[2]
    for big, acc in zip(big_log, accum_log, strict=True):
        assert acc["train/loss"] == pytest.approx(big["train/loss"], rel=1e-6)
        assert acc["train/grad_norm"] == pytest.approx(big["train/grad_norm"], rel=1e-5)
    for name, value in big_params.items():
        torch.testing.assert_close(accum_params[name], value, rtol=0, atol=2e-6, msg=name)


def test_unlikelihood_is_one_token_mean_over_the_step_under_accumulation(tmp_path, tiny, monkeypatch):
    """With 2 micro-batches the loop passes each the step's rejected-span tokens / 2 (as it does the SFT
    term's chosen-span tokens). Checked on the value handed to the loss: the tiny random model gives every
    token p ≈ 1/V, so the unlikelihood of each token is the same and the trained weights could not tell."""
    import localdpo.trainer.loop as loop

    model, tokenizer = tiny
    uneven = [replace(s, rejected="very " * (i * i) + s.rejected) for i, s in enumerate(TRAIN)]
    seen = []

    def spy(method, spec, **kwargs):
        seen.append((int(kwargs["rejected_loss_mask"].sum()), kwargs["unlikelihood_num_tokens"]))
        return method_loss(method, spec, **kwargs)

    method_loss = loop.method_loss
    monkeypatch.setattr(loop, "method_loss", spy)
    config = tiny_config(
        tmp_path / "run",
        "method=ldpo",
        "loss.loss_type=[sft,unlikelihood]",
        "loss.loss_weights=[1,0.3]",
        "train.batch_size=2",
        "train.grad_accum=2",
        "train.max_steps=1",
    )
    result = Trainer(config, model=model, tokenizer=tokenizer, train_steers=uneven, eval_steers=HELD).run()
    (a, step_a), (b, step_b) = seen
    assert a != b and step_a == step_b == (a + b) / 2
    assert 0 < result.train_log[0]["train/loss_unlikelihood"] < 1e-3  # p ≈ 1/V: -log(1 - p) ≈ p


def test_given_model_is_not_modified(tmp_path, tiny):
    model, _ = tiny
    before = {k: v.clone() for k, v in model.state_dict().items()}
    _run(tmp_path, tiny, "train.max_steps=2")
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_reference_cache_gives_the_same_training_as_a_live_reference(tmp_path, tiny):
    live = _run(tmp_path / "a", tiny, "loss.reference=live", "train.max_steps=3")
    cached = _run(
        tmp_path / "b", tiny, "loss.reference=cache", f"cache_dir={tmp_path / 'cache'}", "train.max_steps=3"
    )
    for a, b in zip(live.train_log, cached.train_log):
        assert b["train/loss"] == pytest.approx(a["train/loss"], abs=1e-5)
        assert b["rewards/margins"] == pytest.approx(a["rewards/margins"], abs=1e-5)
    assert cached.final["eval/rewards_margins"] == pytest.approx(live.final["eval/rewards_margins"], abs=1e-5)


def test_shared_cache_and_pretokenized_steers_are_used_in_process(tmp_path, tiny):
    """What a comparison script passes in: tokenized steers and one reference cache of the starting model."""
    import copy

    from localdpo.reference.cache import ReferenceCache
    from localdpo.steers.tokenization import tokenize_steers

    model, tokenizer = tiny
    reference = copy.deepcopy(model)
    cache = ReferenceCache(reference, tokenizer, cache_dir=tmp_path / "cache", progress=False)
    train, _ = tokenize_steers(TRAIN, tokenizer, span_mode="divergent")
    held, _ = tokenize_steers(HELD, tokenizer, span_mode="divergent")
    config = tiny_config(tmp_path / "run", "loss.reference=cache", "train.max_steps=2")
    trainer = Trainer(
        config, model=model, tokenizer=tokenizer, train_steers=train, eval_steers=held, reference_cache=cache
    )
    result = trainer.run()
    assert trainer.train_examples == train and trainer.reference_cache is cache
    # computed once, before the first step; held-out steers get the EvalReference instead
    assert cache.stats.misses == len(train)
    assert cache.stats.hits >= 2 * len(train)  # then every batch is looked up
    assert result.train_log[0]["train/preference_loss"] == pytest.approx(math.log(2), abs=1e-6)
    with pytest.raises(ValueError, match="another span mode"):
        Trainer(
            tiny_config(tmp_path / "x", "method=dpo"),
            model=model,
            tokenizer=tokenizer,
            train_steers=train,
            eval_steers=held,
        ).setup()


def test_evaluation_at_start_and_drift(tmp_path, tiny):
    result = _run(
        tmp_path,
        tiny,
        "eval.at_start=true",
        "eval.every=2",
        "eval.drift=true",
        "eval.drift_num_prompts=2",
        "eval.drift_max_new_tokens=4",
        "train.max_steps=4",
    )
    assert [h["step"] for h in result.history] == [0, 2, 4]
    start = result.history[0]
    assert start["eval/rewards_margins"] == 0.0 and start["eval/preference_accuracy"] == 0.0
    assert start["eval/drift_kl"] == pytest.approx(0.0, abs=1e-6)
    assert result.final["eval/drift_kl"] > 1e-4
    assert result.final["eval/preference_accuracy"] > 0.5
    assert start["eval/chosen_nll"] > 0 and start["eval/num_steers"] == 4


def test_lora_trains_only_the_adapter_against_the_base_model(tmp_path, tiny):
    model, tokenizer = tiny
    for reference in ("live", "cache"):
        config = tiny_config(
            tmp_path / reference,
            "model.lora.enabled=true",
            "model.lora.r=4",
            "optim.lr=1e-2",
            "train.max_steps=3",
            f"loss.reference={reference}",
            f"cache_dir={tmp_path / 'cache'}",
            "checkpoint.every=3",
        )
        trainer = Trainer(config, model=model, tokenizer=tokenizer, train_steers=TRAIN, eval_steers=HELD)
        result = trainer.run()
        assert result.train_log[0]["train/preference_loss"] == pytest.approx(math.log(2), abs=1e-6)
        assert result.train_log[-1]["train/loss"] < result.train_log[0]["train/loss"]
        assert trainer.params and all("lora_" in name for name in trainer.params)


def test_final_model_is_saved_in_hugging_face_format(tmp_path, tiny):
    from transformers import AutoModelForCausalLM

    model, tokenizer = tiny
    config = tiny_config(tmp_path / "run", "checkpoint.save_final=true", "train.max_steps=1")
    trainer = Trainer(config, model=model, tokenizer=tokenizer, train_steers=TRAIN, eval_steers=HELD)
    trainer.run()
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final")
    assert torch.equal(loaded.model.embed_tokens.weight, trainer.model.model.embed_tokens.weight)
    assert (tmp_path / "run" / "config.yaml").is_file()


def test_clear_errors(tmp_path, tiny):
    model, tokenizer = tiny
    with pytest.raises(FileNotFoundError, match="steer file not found"):
        Trainer(tiny_config(tmp_path / "a", f"data.train_steers={tmp_path / 'missing.jsonl'}")).setup()
    with pytest.raises(ConfigError, match="data.train_steers is not set"):
        Trainer(tiny_config(tmp_path / "b")).setup()
    _run(tmp_path, tiny, "checkpoint.every=1", "train.max_steps=1")
    with pytest.raises(ConfigError, match="checkpoint.resume=never"):
        _run(tmp_path, tiny, "checkpoint.resume=never")


def test_task_accuracy_is_logged_at_start_every_and_end(tmp_path, tiny):
    result = _run(
        tmp_path,
        tiny,
        "eval.task=addition",
        "eval.task_n=2",
        "eval.task_every=2",
        "eval.task_max_new_tokens=8",
        "eval.every=0",
        "eval.at_start=true",
        "train.max_steps=3",
    )
    assert [h["step"] for h in result.history] == [0, 2, 3]
    assert all("eval/task_accuracy" in h for h in result.history)
    assert 0.0 <= result.final["eval/task_accuracy"] <= 1.0 and result.final["eval/task_n"] == 2


@pytest.mark.gpu
@pytest.mark.parametrize("method", ["ldpo", "sft"])
def test_cuda_bf16_autocast_run(tmp_path, tiny, method):
    """On CUDA: bf16 autocast with fp32 master weights; step-0 DPO loss is log 2 (cache computed under the same autocast)."""
    result = _run(
        tmp_path,
        tiny,
        f"method={method}",
        "train.device=cuda",
        "loss.reference=cache",
        f"cache_dir={tmp_path / 'c'}",
    )
    assert result.train_log[-1]["train/loss"] < result.train_log[0]["train/loss"]
    assert result.train_log[0]["perf/peak_memory_gb"] > 0
    if method == "ldpo":
        assert result.train_log[0]["train/preference_loss"] == pytest.approx(math.log(2), abs=1e-3)
