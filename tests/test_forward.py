"""`localdpo.forward`: the one text-config lookup and the one prompt-learning adapter check, used by both
fast paths (packing and the span head)."""

from types import SimpleNamespace

import pytest

from localdpo.forward import has_prompt_learning_adapter, text_config
from localdpo.packing import PackingUnsupportedError, check_packing_support
from localdpo.span_head import SpanHeadUnsupportedError, _check_not_prompt_learning


class _Multimodal:
    text = SimpleNamespace(model_type="llama", _attn_implementation="sdpa")

    def get_text_config(self):
        return self.text


def _peft(**adapters):
    configs = {name: SimpleNamespace(is_prompt_learning=prompt) for name, prompt in adapters.items()}
    return SimpleNamespace(
        config=SimpleNamespace(model_type="llama", _attn_implementation="sdpa"),
        peft_config=configs,
        active_adapter=next(iter(adapters)),
    )


def test_text_config_is_the_nested_text_config_when_there_is_one():
    model = SimpleNamespace(config=_Multimodal())
    assert text_config(model) is _Multimodal.text
    plain = SimpleNamespace(config=SimpleNamespace(model_type="llama"))
    assert text_config(plain) is plain.config


def test_any_prompt_learning_adapter_is_refused_by_both_fast_paths():
    assert not has_prompt_learning_adapter(SimpleNamespace(config=None))
    assert not has_prompt_learning_adapter(_peft(default=False))
    inactive = _peft(default=False, prompt=True)  # active adapter: `default`
    for model in (_peft(default=True), inactive):
        assert has_prompt_learning_adapter(model)
        with pytest.raises(PackingUnsupportedError, match="prompt-learning"):
            check_packing_support(model)
        with pytest.raises(SpanHeadUnsupportedError, match="prompt-learning"):
            _check_not_prompt_learning(model)
    check_packing_support(_peft(default=False))  # a LoRA-style adapter packs


@pytest.fixture(scope="module")
def tiny_batch(smol_tokenizer):
    from localdpo.data import collate_pairs
    from localdpo.models import tiny_model
    from localdpo.steers import Steer
    from localdpo.tokenization import SpanMode, tokenize_steer

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

    from localdpo.data import (
        CHOSEN_ATTENTION_MASK,
        CHOSEN_INPUT_IDS,
        CHOSEN_LOSS_MASK,
        REJECTED_ATTENTION_MASK,
        REJECTED_INPUT_IDS,
        REJECTED_LOSS_MASK,
    )
    from localdpo.forward import pair_logps, sequence_token_logps

    model, batch, pad = tiny_batch
    expected_chosen = sequence_token_logps(model, batch[CHOSEN_INPUT_IDS], batch[CHOSEN_ATTENTION_MASK])
    expected_rejected = sequence_token_logps(model, batch[REJECTED_INPUT_IDS], batch[REJECTED_ATTENTION_MASK])
    c, r = _scored(batch[CHOSEN_LOSS_MASK]), _scored(batch[REJECTED_LOSS_MASK])
    assert c.sum() > 0 and r.sum() > 0
    chosen, rejected = pair_logps(
        model,
        batch,
        packing=packing,
        span_head=span_head,
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
