import pytest
import torch

from localdpo.forward import sequence_token_logps
from localdpo.losses import LossSpec
from localdpo.models.loading import tiny_model
from localdpo.steers.batches import collate_pairs
from localdpo.steers.steer import Steer
from localdpo.steers.tokenization import SpanMode, tokenize_steer
from localdpo.trainer.methods import Method, full_sequence_mask, method_loss

# One pair, 4 tokens per side. Chosen span = token 2, rejected span = tokens 2-3.
POLICY_C = torch.tensor([[0.0, -0.3, -1.0, -9.0]])
REF_C = torch.tensor([[0.0, -0.4, -1.5, -7.0]])
POLICY_R = torch.tensor([[0.0, -0.3, -0.5, -1.5]])
REF_R = torch.tensor([[0.0, -0.4, -0.8, -1.0]])
MASK_C = torch.tensor([[False, False, True, False]])
MASK_R = torch.tensor([[False, False, True, True]])
ATTN = torch.ones(1, 4, dtype=torch.bool)


def _loss(method, spec=None, **kwargs):
    return method_loss(
        method,
        spec,
        policy_chosen_logps=POLICY_C,
        chosen_loss_mask=MASK_C,
        chosen_attention_mask=ATTN,
        policy_rejected_logps=POLICY_R,
        rejected_loss_mask=MASK_R,
        ref_chosen_logps=REF_C,
        ref_rejected_logps=REF_R,
        **kwargs,
    )


def test_ldpo_loss_hand_computed():
    """Chosen span log-ratio -1.0 - (-1.5) = 0.5; rejected (-0.5 - 1.5) - (-0.8 - 1.0) = -0.2; h = 0.7.
    beta = 0.1: loss = -log sigmoid(0.07) = log(1 + e^-0.07) = 0.6587596."""
    out = _loss(Method.LDPO, LossSpec(beta=0.1))
    assert out.loss.item() == pytest.approx(0.6587595555486971, abs=1e-6)
    assert out.metrics["rewards/chosen"].item() == pytest.approx(0.05, abs=1e-7)
    assert out.metrics["rewards/rejected"].item() == pytest.approx(-0.02, abs=1e-7)
    assert out.metrics["rewards/margins"].item() == pytest.approx(0.07, abs=1e-7)
    assert out.metrics["tokens/scored"].item() == 3


def test_sft_term_adds_the_chosen_span_nll():
    """RPO-style: 0.6587596 + 0.5 * NLL(chosen span) = 0.6587596 + 0.5 * 1.0 = 1.1587596."""
    out = _loss(Method.LDPO, LossSpec.of(["sigmoid", "sft"], [1.0, 0.5], beta=0.1))
    assert out.loss.item() == pytest.approx(1.1587595555486971, abs=1e-6)


def test_sft_scores_only_the_chosen_span_and_sft_full_every_token():
    assert _loss(Method.SFT).loss.item() == pytest.approx(1.0)
    # sft_full: tokens 1..3 of the chosen side, prompt included: (0.3 + 1.0 + 9.0) / 3
    assert _loss(Method.SFT_FULL).loss.item() == pytest.approx(10.3 / 3)
    attn = torch.tensor([[True, True, True, False]])
    assert full_sequence_mask(attn).tolist() == [[False, True, True, False]]


def test_preference_methods_need_the_rejected_side():
    with pytest.raises(ValueError, match="needs rejected log-probs"):
        method_loss(
            Method.DPO, policy_chosen_logps=POLICY_C, chosen_loss_mask=MASK_C, chosen_attention_mask=ATTN
        )


def test_method_properties():
    assert Method.LDPO.needs_reference and Method.DPO.needs_reference
    assert not Method.SFT.needs_reference and not Method.SFT_FULL.needs_reference
    assert Method.DPO.allowed_span_modes == (SpanMode.COMPLETION,)
    assert Method.LDPO.default_span_mode is SpanMode.DIVERGENT
    assert Method.LDPO.disables_dropout and not Method.SFT.disables_dropout


def _steer(rejected_tail: str = "", rejected_word: str = "Purple car") -> Steer:
    return Steer(
        prompt="List three colors.",
        prefix="1. Red\n2. ",
        rejected=f"{rejected_word}\n3. Blue{rejected_tail}",
        chosen="Green\n3. Blue",
        id="x",
    )


@pytest.fixture(scope="module")
def tiny(smol_tokenizer):
    model, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    return model.train(), tokenizer


def _ldpo(model, tokenizer, steer, span_mode=SpanMode.DIVERGENT, *, grad_of_logps=False):
    example = tokenize_steer(steer, tokenizer, span_mode=span_mode)
    batch = collate_pairs([example], pad_token_id=tokenizer.pad_token_id)
    chosen = sequence_token_logps(model, batch["chosen_input_ids"], batch["chosen_attention_mask"])
    rejected = sequence_token_logps(model, batch["rejected_input_ids"], batch["rejected_attention_mask"])
    if grad_of_logps:
        chosen, rejected = chosen.detach().requires_grad_(), rejected.detach().requires_grad_()
    ref_c, ref_r = (
        torch.full_like(chosen, -11.0),
        torch.full_like(rejected, -11.0),
    )  # fixed, policy-independent
    out = method_loss(
        Method.LDPO,
        policy_chosen_logps=chosen,
        chosen_loss_mask=batch["chosen_loss_mask"],
        chosen_attention_mask=batch["chosen_attention_mask"],
        policy_rejected_logps=rejected,
        rejected_loss_mask=batch["rejected_loss_mask"],
        ref_chosen_logps=ref_c,
        ref_rejected_logps=ref_r,
    )
    return out.loss, chosen, rejected, batch


def test_ldpo_gradient_is_zero_outside_the_span(tiny):
    model, tokenizer = tiny
    loss, chosen, rejected, batch = _ldpo(model, tokenizer, _steer(), grad_of_logps=True)
    grad_c, grad_r = torch.autograd.grad(loss, (chosen, rejected))
    mask_c, mask_r = batch["chosen_loss_mask"], batch["rejected_loss_mask"]
    assert mask_c.sum() >= 1 and mask_r.sum() >= 1 and mask_c.sum() < mask_c.numel() - 5
    assert torch.all(grad_c[~mask_c] == 0) and torch.all(grad_r[~mask_r] == 0)
    assert torch.all(grad_c[mask_c] != 0) and torch.all(grad_r[mask_r] != 0)


def test_ldpo_ignores_rejected_text_after_the_span(tiny):
    """Changing what the model wrote after the corrected part leaves the localized loss unchanged,
    while changing the rejected tokens inside the span does change it (so the test can fail)."""
    model, tokenizer = tiny
    with torch.no_grad():
        base = _ldpo(model, tokenizer, _steer())[0]
        longer_tail = _ldpo(model, tokenizer, _steer(rejected_tail="\n4. Gray\n5. Teal"))[0]
        other_span = _ldpo(model, tokenizer, _steer(rejected_word="Pink hat"))[0]
        dpo_like = _ldpo(model, tokenizer, _steer(rejected_tail="\n4. Gray"), SpanMode.COMPLETION)[0]
        dpo_base = _ldpo(model, tokenizer, _steer(), SpanMode.COMPLETION)[0]
    torch.testing.assert_close(longer_tail, base, rtol=0, atol=1e-6)
    assert abs(other_span.item() - base.item()) > 1e-4
    assert abs(dpo_like.item() - dpo_base.item()) > 1e-4  # whole-completion DPO does see the tail


def test_span_log_probs_are_logged_against_the_reference():
    """Chosen span: policy -1.0, reference -1.5 (one token); rejected span: policy -0.5 - 1.5 = -2.0 over
    2 tokens, reference -0.8 - 1.0 = -1.8."""
    metrics = _loss(Method.LDPO, LossSpec(beta=0.1)).metrics
    assert metrics["logps/chosen_span"].item() == pytest.approx(-1.0)
    assert metrics["logps/chosen_span_per_token"].item() == pytest.approx(-1.0)
    assert metrics["logratios/chosen_span"].item() == pytest.approx(0.5)
    assert metrics["logps/rejected_span"].item() == pytest.approx(-2.0)
    assert metrics["logps/rejected_span_per_token"].item() == pytest.approx(-1.0)
    assert metrics["logratios/rejected_span"].item() == pytest.approx(-0.2)
    assert metrics["logratios/rejected_span_per_token"].item() == pytest.approx(-0.1)
    sft = _loss(Method.SFT).metrics
    assert sft["logps/chosen_span"].item() == pytest.approx(-1.0) and "logratios/chosen_span" not in sft


def test_each_term_of_a_combination_is_logged():
    out = _loss(Method.LDPO, LossSpec.of(["dpop", "sft"], [1.0, 0.5], beta=0.1))
    assert out.metrics["train/loss_dpop"].item() == pytest.approx(0.6587595555486971, abs=1e-6)  # Δc > 0
    assert out.metrics["train/loss_sft"].item() == pytest.approx(1.0)
    assert out.metrics["train/preference_loss"].item() == pytest.approx(0.6587595555486971, abs=1e-6)


def test_sft_plus_unlikelihood_logs_its_terms_and_no_preference_loss():
    """Rejected span log-probs -0.5, -1.5: -log(1 - e^-0.5) = 0.9327521296, -log(1 - e^-1.5) = 0.2524824589,
    mean 0.5926172942; loss = 1.0 (chosen-span NLL) + 0.3 · 0.5926172942 = 1.1777851883. With
    `unlikelihood_num_tokens` = 4 (a step of more rejected tokens) the term halves: 0.2963086471."""
    out = _loss(Method.LDPO, LossSpec.of(["sft", "unlikelihood"], [1.0, 0.3]))
    assert out.loss.item() == pytest.approx(1.1777851883, rel=1e-6)
    assert out.metrics["train/loss_unlikelihood"].item() == pytest.approx(0.5926172942, rel=1e-6)
    assert out.metrics["train/loss_sft"].item() == pytest.approx(1.0)
    assert "train/preference_loss" not in out.metrics
    assert out.metrics["logratios/rejected_span"].item() == pytest.approx(-0.2)  # the reference still logged
    step = _loss(Method.LDPO, LossSpec.of(["sft", "unlikelihood"]), unlikelihood_num_tokens=4.0)
    assert step.metrics["train/loss_unlikelihood"].item() == pytest.approx(0.2963086471, rel=1e-6)
