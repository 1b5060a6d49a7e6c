import pytest
import torch

from localdpo.models.loading import tiny_model
from localdpo.reference.training import EvalReference
from localdpo.steers.tokenization import tokenize_steers
from localdpo.trainer import Trainer
from localdpo.trainer.evaluation import held_out_batches
from localdpo.trainer.modeling import PolicyForward
from tests.trainer.conftest import make_steers, tiny_config

STEERS = make_steers(12)
TRAIN, HELD = STEERS[:4], STEERS[4:]


@pytest.fixture(scope="module")
def tiny(smol_tokenizer):
    return tiny_model(seed=0, tokenizer=smol_tokenizer)


@pytest.mark.parametrize("reference", ["cache", "live"])
@pytest.mark.parametrize("lora", [False, True], ids=["full", "lora"])
def test_step0_margins_are_exactly_zero_on_the_packed_span_head_path(tmp_path, tiny, reference, lora):
    """Regression: with evaluation on the fast path and held-out reference values from the reference cache's
    plain forward, step-0 margins were float noise (2.4e-8) and counted as preferences. The held-out reference
    is now the policy's own evaluation forward on the starting weights: every margin is exactly 0."""
    model, tokenizer = tiny
    extra = ["model.lora.enabled=true", "model.lora.r=4"] if lora else []
    config = tiny_config(
        tmp_path / "run",
        f"loss.reference={reference}",
        f"cache_dir={tmp_path / 'cache'}",
        "eval.at_start=true",
        "eval.batch_size=3",
        "train.max_steps=1",
        *extra,
    )
    trainer = Trainer(config, model=model, tokenizer=tokenizer, train_steers=TRAIN, eval_steers=HELD)
    trainer.setup()
    assert trainer.policy_forward.packing and trainer.policy_forward.span_head
    trainer.train()
    trainer.close()
    start = trainer.history[0]
    assert start["step"] == 0 and start["eval/num_steers"] == len(HELD)
    assert start["eval/rewards_margins"] == 0.0 and start["eval/preference_accuracy"] == 0.0
    assert trainer.history[-1]["eval/rewards_margins"] != 0.0  # one step later the policy has moved


def test_eval_reference_is_shared_only_when_it_holds_the_same_batches(tmp_path, tiny):
    model, tokenizer = tiny
    held, _ = tokenize_steers(HELD, tokenizer, span_mode="divergent")

    def setup(run, *overrides, given=None, start=model):
        config = tiny_config(tmp_path / run, "eval.batch_size=3", *overrides)
        trainer = Trainer(
            config, model=start, tokenizer=tokenizer, train_steers=TRAIN, eval_steers=held, eval_reference=given
        )
        return trainer.setup()

    first = setup("a")
    assert len(first.eval_reference.values) == 3  # 8 held-out steers in batches of 3
    assert setup("b", "method=sft", given=first.eval_reference).eval_reference is first.eval_reference
    other_batching = setup("c", "eval.batch_size=4", given=first.eval_reference).eval_reference
    assert other_batching is not first.eval_reference and len(other_batching.values) == 2
    no_packing = setup("d", "train.packing=false", given=first.eval_reference).eval_reference
    assert no_packing is not first.eval_reference
    other_model, _ = tiny_model(seed=1, tokenizer=tokenizer)
    other_weights = setup("e", given=first.eval_reference, start=other_model).eval_reference
    assert other_weights is not first.eval_reference
    lora = setup("f", "model.lora.enabled=true", "model.lora.r=4", given=first.eval_reference)
    assert lora.eval_reference is first.eval_reference  # the reference of a LoRA run is its base: same weights
    at_start = lora.evaluate()  # a fresh adapter adds exact zeros: still a tie on every steer
    assert at_start["eval/rewards_margins"] == 0.0 and at_start["eval/preference_accuracy"] == 0.0


def test_eval_reference_values_equal_the_forward_and_unknown_batches_are_refused(tiny):
    model, tokenizer = tiny
    held, _ = tokenize_steers(HELD, tokenizer, span_mode="divergent")
    forward = PolicyForward(model.eval(), packing=True, span_head=True, pad_token_id=tokenizer.pad_token_id)

    def batches(size):
        return held_out_batches(held, batch_size=size, pad_token_id=tokenizer.pad_token_id, device="cpu")

    reference = EvalReference.build(forward, batches(4), autocast=torch.autocast("cpu", enabled=False), signature=())
    for chunk, batch in batches(4):
        chosen, rejected = reference.batch_logps(chunk, batch, "cpu")
        expected_chosen, expected_rejected = forward(batch)
        assert torch.equal(chosen, expected_chosen) and torch.equal(rejected, expected_rejected)
    assert reference.covers(batches(4), ()) and not reference.covers(batches(3), ())
    chunk, batch = next(iter(batches(3)))
    with pytest.raises(KeyError, match="s4"):
        reference.batch_logps(chunk, batch, "cpu")
