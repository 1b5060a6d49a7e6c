"""The trainer's forward module: the fast path and its fallbacks give the plain forward's log-probs."""

import pytest
import torch

from localdpo.forward import pair_logps
from localdpo.models.loading import tiny_model
from localdpo.steers.batches import CHOSEN_LOSS_MASK, REJECTED_LOSS_MASK, collate_pairs
from localdpo.steers.tokenization import SpanMode, tokenize_steer
from localdpo.trainer.methods import Method, sft_mask
from localdpo.trainer.modeling import PolicyForward

from .conftest import make_steers


@pytest.fixture(scope="module")
def tiny_batch(smol_tokenizer):
    model, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    examples = [tokenize_steer(s, tokenizer, span_mode=SpanMode.TO_END) for s in make_steers(4)]
    return model, collate_pairs(examples, pad_token_id=tokenizer.pad_token_id), tokenizer.pad_token_id


def _scored(mask):
    mask = mask.bool().clone()
    mask[:, 0] = False
    return mask


@pytest.mark.parametrize("packing, span_head", [(True, True), (True, False), (False, True), (False, False)])
def test_both_sides_equal_the_plain_forward_on_scored_tokens(tiny_batch, packing, span_head):
    model, batch, pad = tiny_batch
    expected_chosen, expected_rejected = pair_logps(model, batch)
    forward = PolicyForward(model, packing=packing, span_head=span_head, pad_token_id=pad)
    assert (forward.packing, forward.span_head) == (packing, span_head)
    chosen, rejected = forward(batch)
    c, r = _scored(batch[CHOSEN_LOSS_MASK]), _scored(batch[REJECTED_LOSS_MASK])
    torch.testing.assert_close(chosen[c], expected_chosen[c], atol=1e-5, rtol=0)
    torch.testing.assert_close(rejected[r], expected_rejected[r], atol=1e-5, rtol=0)


@pytest.mark.parametrize("method", [Method.SFT, Method.SFT_FULL])
def test_chosen_side_alone_through_the_span_head(tiny_batch, method):
    model, batch, pad = tiny_batch
    expected, _ = pair_logps(model, batch, need_rejected=False)
    mask = _scored(sft_mask(method, batch))
    chosen, rejected = PolicyForward(model, packing=True, span_head=True, pad_token_id=pad)(batch, mask)
    assert rejected is None
    torch.testing.assert_close(chosen[mask], expected[mask], atol=1e-5, rtol=0)
    assert torch.all(chosen[~mask] == 0)  # the head never ran there


def test_a_head_the_span_head_cannot_reproduce_falls_back_with_a_warning(smol_tokenizer):
    model, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    model.config.output_multiplier = 2.0  # an output scaling the span head does not know
    with pytest.warns(UserWarning, match="span head off: .*output_multiplier"):
        forward = PolicyForward(model, packing=True, span_head=True, pad_token_id=tokenizer.pad_token_id)
    assert forward.packing and not forward.span_head
