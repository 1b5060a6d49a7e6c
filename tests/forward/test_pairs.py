"""`localdpo.forward.pairs`: the one pair forward, every fast-path combination against the plain forward, and
the fast paths decided once per model."""

import warnings

import pytest
import torch

from localdpo.forward.pairs import PLAIN, FastPaths


@pytest.fixture(scope="module")
def tiny_batch(smol_tokenizer):
    from localdpo.models.loading import tiny_model
    from localdpo.steers.batches import collate_pairs
    from localdpo.steers.steer import Steer
    from localdpo.steers.tokenization import SpanMode, tokenize_steer

    model, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    steers = [
        Steer(prompt="What is 2 + 2?", prefix="2 + 2 = ", rejected="5, I think.", chosen="4, I think."),
        Steer(prompt="Name a color.", prefix="", rejected="Dogs bark loudly.", chosen="Blue."),
        Steer(prompt="Count to three.", prefix="1, 2, ", rejected="4", chosen="3, done", id="c"),
    ]
    examples = [tokenize_steer(s, tokenizer, span_mode=SpanMode.TO_END) for s in steers]
    return model, collate_pairs(examples, pad_token_id=tokenizer.pad_token_id), tokenizer.pad_token_id


def _scored(mask):
    mask = mask.bool().clone()
    mask[:, 0] = False  # no predictor for the first token
    return mask


@pytest.mark.parametrize("score_chosen_only", [False, True])
@pytest.mark.parametrize("packing, span_head", [(True, True), (True, False), (False, True), (False, False)])
def test_every_path_of_the_one_pair_forward_equals_the_plain_forward(
    tiny_batch, packing, span_head, score_chosen_only
):
    """The plain forward is `sequence_token_logps` on each side; every path agrees on every scored token."""
    import torch

    from localdpo.forward.pairs import FastPaths, pair_logps, sequence_token_logps
    from localdpo.steers.batches import (
        CHOSEN_ATTENTION_MASK,
        CHOSEN_INPUT_IDS,
        CHOSEN_LOSS_MASK,
        REJECTED_ATTENTION_MASK,
        REJECTED_INPUT_IDS,
        REJECTED_LOSS_MASK,
    )

    model, batch, pad = tiny_batch
    expected_chosen = sequence_token_logps(model, batch[CHOSEN_INPUT_IDS], batch[CHOSEN_ATTENTION_MASK])
    expected_rejected = sequence_token_logps(model, batch[REJECTED_INPUT_IDS], batch[REJECTED_ATTENTION_MASK])
    c, r = _scored(batch[CHOSEN_LOSS_MASK]), _scored(batch[REJECTED_LOSS_MASK])
    assert c.sum() > 0 and r.sum() > 0
    chosen, rejected = pair_logps(
        model,
        batch,
        FastPaths(packing=packing, span_head=span_head),
        pad_token_id=pad,
        score_mask=c if score_chosen_only else None,
    )
    assert chosen.shape == batch[CHOSEN_INPUT_IDS].shape and chosen.dtype == torch.float32
    torch.testing.assert_close(chosen[c], expected_chosen[c], atol=1e-5, rtol=0)
    if score_chosen_only:
        assert rejected is None
        if span_head:
            assert torch.all(chosen[~c] == 0)  # the span head never ran there
    else:
        assert rejected.shape == batch[REJECTED_INPUT_IDS].shape
        torch.testing.assert_close(rejected[r], expected_rejected[r], atol=1e-5, rtol=0)
    if not (packing or span_head or score_chosen_only):  # the plain path is the stacked forward of 2B rows
        assert torch.equal(chosen, pair_logps(model, batch)[0]) and torch.equal(
            rejected, pair_logps(model, batch)[1]
        )


def test_fast_paths_are_decided_once_with_a_warning_per_path_turned_off():
    """A GPT-2 packs nowhere (not a packing-tested architecture) and has a decoder the span head can run."""
    from transformers import GPT2Config, GPT2LMHeadModel

    model = GPT2LMHeadModel(GPT2Config(vocab_size=96, n_embd=32, n_layer=1, n_head=4, n_positions=64))
    with pytest.warns(UserWarning, match="packing off: model_type 'gpt2'"):
        paths = FastPaths.for_model(model, packing=True, span_head=False)
    assert paths == FastPaths(packing=False, span_head=False) == PLAIN
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert FastPaths.for_model(model, packing=False, span_head=False) == PLAIN  # nothing asked, no warning


def test_unpacked_span_head_path_is_the_stacked_forward_on_scored_tokens(tiny_batch):
    """The one unpacked path with the span head: 2B stacked rows, only the loss masks' positions projected,
    0 elsewhere; on those positions the same values as the plain stacked forward."""
    from localdpo.forward.pairs import pair_logps
    from localdpo.steers.batches import CHOSEN_LOSS_MASK, REJECTED_LOSS_MASK

    model, batch, pad = tiny_batch
    plain_chosen, plain_rejected = pair_logps(model, batch)
    chosen, rejected = pair_logps(model, batch, FastPaths(span_head=True), pad_token_id=pad)
    c, r = _scored(batch[CHOSEN_LOSS_MASK]), _scored(batch[REJECTED_LOSS_MASK])
    torch.testing.assert_close(chosen[c], plain_chosen[c], atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected[r], plain_rejected[r], atol=1e-5, rtol=0)
    assert torch.all(chosen[~c] == 0) and torch.all(rejected[~r] == 0)
