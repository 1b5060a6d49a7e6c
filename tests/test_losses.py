import math

import pytest
import torch
import torch.nn.functional as F

from localdpo import localized_dpo_loss, masked_sft_loss, token_logps
from localdpo.losses import (
    UNLIKELIHOOD_MIN_ONE_MINUS_P,
    LossSpec,
    LossType,
    log1mexp,
    needs_reference,
    unlikelihood_loss,
)

# --- token_logps ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_token_logps_matches_log_softmax_gather(dtype):
    torch.manual_seed(0)
    logits = torch.randn(3, 7, 11).to(dtype)
    ids = torch.randint(0, 11, (3, 7))
    expected = torch.zeros(3, 7)
    expected[:, 1:] = logits[:, :-1].float().log_softmax(-1).gather(-1, ids[:, 1:, None]).squeeze(-1)
    out = token_logps(logits, ids, chunk_size=2)
    assert out.dtype == torch.float32 and out.shape == (3, 7)
    assert torch.equal(out[:, 0], torch.zeros(3))
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)


def test_token_logps_hand_computed():
    """Vocabulary of 2, logits [0, ln 3] -> p = [1/4, 3/4]: log p(token 1) = ln 0.75."""
    logits = torch.tensor([[[0.0, math.log(3.0)], [0.0, 0.0]]])
    out = token_logps(logits, torch.tensor([[0, 1]]))
    torch.testing.assert_close(out, torch.tensor([[0.0, math.log(0.75)]]))


def test_token_logps_shape_mismatch():
    with pytest.raises(ValueError, match="disagree"):
        token_logps(torch.zeros(2, 3, 4), torch.zeros(2, 4, dtype=torch.long))


# --- localized_dpo_loss ---------------------------------------------------------------------------------


def random_pair(batch=4, tc=6, tr=9, seed=0):
    g = torch.Generator().manual_seed(seed)
    logps = [-torch.rand(batch, t, generator=g) * 3 for t in (tc, tr, tc, tr)]
    return logps


def test_completion_span_equals_textbook_dpo_on_sequence_sums():
    """Masks over the whole completion: -log σ(β[(Σπ_w - Σref_w) - (Σπ_l - Σref_l)]) (Rafailov et al., eq. 7)."""
    pc, pr, rc, rr = random_pair()
    completion_c = torch.zeros(4, 6, dtype=torch.bool)
    completion_c[:, 2:] = True
    completion_r = torch.zeros(4, 9, dtype=torch.bool)
    completion_r[:, 2:] = True
    out = localized_dpo_loss(pc, pr, rc, rr, completion_c, completion_r, beta=0.3)
    sums = [x[:, 2:].sum(-1) for x in (pc, pr, rc, rr)]
    logits = (sums[0] - sums[2]) - (sums[1] - sums[3])
    expected = -F.logsigmoid(0.3 * logits)
    torch.testing.assert_close(out.losses, expected)
    torch.testing.assert_close(out.loss, expected.mean())
    torch.testing.assert_close(out.chosen_rewards, 0.3 * (sums[0] - sums[2]))
    torch.testing.assert_close(out.rejected_rewards, 0.3 * (sums[1] - sums[3]))
    assert not out.chosen_rewards.requires_grad


def hand_case():
    """One row; chosen span = positions 1..2, rejected span = position 2.

    policy chosen  [-9, -1.0, -0.5]   span sum -1.5   reference chosen  [-9, -1.5, -1.0]  span sum -2.5
    policy rejected[-9, -9, -2.0, -7] span sum -2.0   reference rejected[-9, -9, -1.0, -7] span sum -1.0
    h = (-1.5 + 2.5) - (-2.0 + 1.0) = 1 + 1 = 2
    """
    pc = torch.tensor([[-9.0, -1.0, -0.5]], requires_grad=True)
    rc = torch.tensor([[-9.0, -1.5, -1.0]])
    pr = torch.tensor([[-9.0, -9.0, -2.0, -7.0]], requires_grad=True)
    rr = torch.tensor([[-9.0, -9.0, -1.0, -7.0]])
    cm = torch.tensor([[False, True, True]])
    rm = torch.tensor([[False, False, True, False]])
    return pc, pr, rc, rr, cm, rm


@pytest.mark.parametrize(
    ("loss_type", "beta", "eps", "expected"),
    [
        # -log σ(0.5 · 2) = log(1 + e^-1)
        ("sigmoid", 0.5, 0.0, math.log1p(math.exp(-1))),
        # conservative: 0.9 log(1 + e^-1) + 0.1 log(1 + e^1)
        ("sigmoid", 0.5, 0.1, 0.9 * math.log1p(math.exp(-1)) + 0.1 * math.log1p(math.exp(1))),
        # (h - 1/(2β))² = (2 - 1)² = 1
        ("ipo", 0.5, 0.0, 1.0),
        # max(0, 1 - 0.25 · 2) = 0.5, and max(0, 1 - 1 · 2) = 0
        ("hinge", 0.25, 0.0, 0.5),
        ("hinge", 1.0, 0.0, 0.0),
        # (0.8 log(1 + e^-1) - 0.2 log(1 + e^1)) / 0.6
        ("robust", 0.5, 0.2, (0.8 * math.log1p(math.exp(-1)) - 0.2 * math.log1p(math.exp(1))) / 0.6),
    ],
)
def test_each_loss_type_against_hand_computed_values(loss_type, beta, eps, expected):
    out = localized_dpo_loss(*hand_case(), beta=beta, loss_type=loss_type, label_smoothing=eps)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert out.chosen_rewards.item() == pytest.approx(beta * 1.0)
    assert out.rejected_rewards.item() == pytest.approx(beta * -1.0)


def test_length_normalize_divides_each_side_by_its_span_length():
    """chosen log-ratio 1.0 over 2 tokens -> 0.5; rejected -1.0 over 1 token -> -1.0; h = 1.5."""
    out = localized_dpo_loss(*hand_case(), beta=1.0, length_normalize=True)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-1.5)))
    assert out.chosen_rewards.item() == pytest.approx(0.5)


def test_gradients_are_exactly_zero_outside_the_spans():
    pc, pr, rc, rr, cm, rm = hand_case()
    localized_dpo_loss(pc, pr, rc, rr, cm, rm, beta=0.5).loss.backward()
    assert torch.all(pc.grad[~cm] == 0) and torch.all(pc.grad[cm] != 0)
    assert torch.all(pr.grad[~rm] == 0) and torch.all(pr.grad[rm] != 0)


def test_values_outside_spans_never_leak_even_if_infinite():
    pc, pr, rc, rr, cm, rm = hand_case()
    pr = pr.detach().clone()
    pr[0, 3] = -math.inf  # e.g. padding or an unscored run-on
    out = localized_dpo_loss(pc, pr, rc, rr, cm, rm, beta=0.5)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-1)))


def test_empty_rejected_span_sums_to_zero():
    """Insertion: rejected span empty, h = chosen log-ratio = 1."""
    pc, pr, rc, rr, cm, _ = hand_case()
    out = localized_dpo_loss(pc, pr, rc, rr, cm, torch.zeros(1, 4, dtype=torch.bool), beta=1.0)
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-1)))
    assert out.rejected_rewards.item() == 0.0


def test_row_with_both_spans_empty_raises_naming_the_row():
    pc, pr, rc, rr = random_pair(batch=3)
    cm = torch.ones(3, 6, dtype=torch.bool)
    rm = torch.ones(3, 9, dtype=torch.bool)
    cm[1] = False
    rm[1] = False
    with pytest.raises(ValueError, match=r"rows \[1\]"):
        localized_dpo_loss(pc, pr, rc, rr, cm, rm)


def test_shape_mismatch_is_reported():
    pc, pr, rc, rr = random_pair()
    with pytest.raises(ValueError, match="chosen shapes disagree"):
        localized_dpo_loss(
            pc, pr, rc[:, :5], rr, torch.ones(4, 6, dtype=torch.bool), torch.ones(4, 9, dtype=torch.bool)
        )


def test_robust_rejects_label_smoothing_of_one_half():
    with pytest.raises(ValueError, match="robust"):
        localized_dpo_loss(*hand_case(), loss_type=LossType.ROBUST, label_smoothing=0.5)


# --- masked_sft_loss ------------------------------------------------------------------------------------


def test_masked_sft_matches_cross_entropy_with_ignore_index():
    torch.manual_seed(1)
    logits = torch.randn(3, 8, 13)
    ids = torch.randint(0, 13, (3, 8))
    mask = torch.rand(3, 8) > 0.5
    mask[:, 0] = False
    labels = torch.where(mask, ids, torch.full_like(ids, -100))
    expected = F.cross_entropy(logits[:, :-1].reshape(-1, 13), labels[:, 1:].reshape(-1), ignore_index=-100)
    torch.testing.assert_close(masked_sft_loss(token_logps(logits, ids), mask), expected)


def test_masked_sft_empty_mask_returns_zero_not_nan():
    logps = torch.randn(2, 4, requires_grad=True)
    loss = masked_sft_loss(logps, torch.zeros(2, 4, dtype=torch.bool))
    assert loss.item() == 0.0
    loss.backward()
    assert torch.all(logps.grad == 0)


def test_masked_sft_num_tokens_makes_micro_batches_one_token_mean():
    """Micro-batch A scores one token of NLL 1, micro-batch B three tokens of NLL 2, 3, 4.

    One big batch: (1 + 2 + 3 + 4) / 4 = 2.5. Averaging the two micro-batch means gives (1 + 3) / 2 = 2;
    with num_tokens = 4 tokens / 2 micro-batches = 2 they give 1/2 and 9/2, whose mean is 2.5.
    """
    a, mask_a = torch.tensor([[0.0, -1.0, 0.0, 0.0]]), torch.tensor([[False, True, False, False]])
    b, mask_b = torch.tensor([[0.0, -2.0, -3.0, -4.0]]), torch.tensor([[False, True, True, True]])
    per_micro_mean = (masked_sft_loss(a, mask_a) + masked_sft_loss(b, mask_b)) / 2
    assert per_micro_mean.item() == pytest.approx(2.0)
    step_mean = (masked_sft_loss(a, mask_a, num_tokens=2.0) + masked_sft_loss(b, mask_b, num_tokens=2.0)) / 2
    assert step_mean.item() == pytest.approx(2.5)
    assert masked_sft_loss(a, mask_a, num_tokens=0.5).item() == pytest.approx(2.0)  # fractional divisors too


# --- losses made for small edits (APO, DPO-Positive, Cal-DPO) and combinations ------------------------------


def displacement_case():
    """One row where both spans fell below the reference (likelihood displacement), one token each.

    policy chosen [-9, -1.5]  reference chosen [-9, -1.0]  Δc = -0.5
    policy rejected [-9, -3.0]  reference rejected [-9, -1.0]  Δr = -2.0   h = 1.5
    """
    pc = torch.tensor([[-9.0, -1.5]], requires_grad=True)
    rc = torch.tensor([[-9.0, -1.0]])
    pr = torch.tensor([[-9.0, -3.0]], requires_grad=True)
    rr = torch.tensor([[-9.0, -1.0]])
    mask = torch.tensor([[False, True]])
    return pc, pr, rc, rr, mask, mask.clone()


@pytest.mark.parametrize(
    ("case", "loss_type", "beta", "lam", "expected"),
    [
        # hand_case: Δc = 1, Δr = -1. APO-zero (APO eq. 7): (1 - σ(0.5)) + σ(-0.5) = 2 σ(-0.5) = 0.7550813376
        (hand_case, "apo_zero", 0.5, 50.0, 2 * (1 - 1 / (1 + math.exp(-0.5)))),
        # APO-down (APO eq. 8): σ(0.5 · 1) + (1 - σ(0.5 · 2)) = 0.6224593312 + 0.2689414214 = 0.8914007526
        (hand_case, "apo_down", 0.5, 50.0, 1 / (1 + math.exp(-0.5)) + 1 - 1 / (1 + math.exp(-1.0))),
        # DPOP with Δc > 0: no penalty, plain DPO -log σ(0.5 · 2) = log(1 + e^-1) = 0.3132616875
        (hand_case, "dpop", 0.5, 50.0, math.log1p(math.exp(-1.0))),
        # DPOP with Δc = -0.5, λ = 2: -log σ(0.5 (1.5 - 2 · 0.5)) = log(1 + e^-0.25) = 0.5759394199
        (displacement_case, "dpop", 0.5, 2.0, math.log1p(math.exp(-0.25))),
        # Cal-DPO (eq. 10), β = 0.25, targets ±1/(2β) = ±2: -log σ(1 - (-1)) + (1 - 2)² + (-1 + 2)²
        #   = log(1 + e^-2) + 1 + 1 = 2.1269280110
        (hand_case, "cal_dpo", 0.25, 50.0, math.log1p(math.exp(-2.0)) + 2.0),
        # Cal-DPO, β = 0.5, targets ±1: log(1 + e^-1.5) + (-0.5 - 1)² + (-2 + 1)² = 0.2014132780 + 2.25 + 1
        (displacement_case, "cal_dpo", 0.5, 50.0, math.log1p(math.exp(-1.5)) + 3.25),
    ],
)
def test_small_edit_losses_against_hand_computed_values(case, loss_type, beta, lam, expected):
    out = localized_dpo_loss(*case(), beta=beta, loss_type=loss_type, dpop_lambda=lam)
    assert out.loss.item() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert out.losses.shape == (1,) and out.losses.item() == pytest.approx(expected, rel=1e-6, abs=1e-7)
    assert not out.chosen_rewards.requires_grad and not out.rejected_rewards.requires_grad


def test_dpop_penalty_pushes_the_chosen_span_up_where_dpo_does_not_care():
    """On the displacement case, DPO's gradient on the chosen token is -β σ(-βh) < 0 in loss (pushes it up)
    by 0.5 σ(-0.75) = 0.3208; DPOP adds λβ σ(-β(h - λ·0.5)) · 1: with λ = 2, 0.5 (1 + 2) σ(-0.25) = 0.8342."""
    pc, pr, rc, rr, cm, rm = displacement_case()
    localized_dpo_loss(pc, pr, rc, rr, cm, rm, beta=0.5, loss_type="dpop", dpop_lambda=2.0).loss.backward()
    assert pc.grad[0, 1].item() == pytest.approx(-0.5 * 3 / (1 + math.exp(0.25)), rel=1e-6)


def test_cal_dpo_matches_the_equation_on_a_random_batch():
    """-log σ(Δc - Δr) + (Δc - 1/(2β))² + (Δr + 1/(2β))², per row, with Δ summed over each span."""
    pc, pr, rc, rr = random_pair(batch=5, seed=3)
    cm = torch.rand(5, 6, generator=torch.Generator().manual_seed(1)) > 0.4
    rm = torch.rand(5, 9, generator=torch.Generator().manual_seed(2)) > 0.4
    cm[:, 0] = rm[:, 0] = True
    out = localized_dpo_loss(pc, pr, rc, rr, cm, rm, beta=0.2, loss_type="cal_dpo")
    dc = ((pc - rc) * cm).sum(-1)
    dr = ((pr - rr) * rm).sum(-1)
    expected = -F.logsigmoid(dc - dr) + (dc - 2.5) ** 2 + (dr + 2.5) ** 2
    torch.testing.assert_close(out.losses, expected)


def test_a_combination_is_the_weighted_sum_of_its_terms():
    """[sigmoid, sft] with weights [1, 0.5], β = 0.5 on hand_case: log(1 + e^-1) + 0.5 · NLL of the chosen span
    (tokens -1.0 and -0.5: mean 0.75) = 0.3132616875 + 0.375 = 0.6882616875."""
    out = localized_dpo_loss(*hand_case(), beta=0.5, loss_type=["sigmoid", "sft"], loss_weights=[1.0, 0.5])
    assert out.loss.item() == pytest.approx(math.log1p(math.exp(-1)) + 0.375, rel=1e-6)
    assert out.terms["sigmoid"].item() == pytest.approx(math.log1p(math.exp(-1)), rel=1e-6)
    assert out.terms["sft"].item() == pytest.approx(0.75, rel=1e-6)


def test_combination_per_example_losses_average_to_the_loss():
    """The SFT term is one token mean over the batch; its per-example share (NLL sum × B / tokens) keeps
    `losses.mean() == loss`, also with `sft_num_tokens` set by a trainer that accumulates gradients."""
    pc, pr, rc, rr = random_pair(batch=3, seed=5)
    cm = torch.zeros(3, 6, dtype=torch.bool)
    cm[0, 1:3] = cm[1, 2:6] = cm[2, 4] = True
    rm = torch.ones(3, 9, dtype=torch.bool)
    for num_tokens in (None, 4.5):
        out = localized_dpo_loss(
            pc, pr, rc, rr, cm, rm, loss_type=["apo_zero", "sft"], loss_weights=[2.0, 0.3], sft_num_tokens=num_tokens
        )
        torch.testing.assert_close(out.losses.mean(), out.loss)
        sft = masked_sft_loss(pc, cm, num_tokens=num_tokens)
        apo = localized_dpo_loss(pc, pr, rc, rr, cm, rm, loss_type="apo_zero").loss
        torch.testing.assert_close(out.loss, 2.0 * apo + 0.3 * sft)


EVERY_TYPE = [t.value for t in LossType if t.is_preference]


@pytest.mark.parametrize(
    "loss_type",
    [*EVERY_TYPE, ["dpop", "sft"], ["apo_down", "cal_dpo", "sft"], ["sft", "unlikelihood"], ["ipo", "unlikelihood"]],
)
def test_every_type_has_exactly_zero_gradient_outside_the_spans(loss_type):
    pc, pr, rc, rr, cm, rm = hand_case()
    localized_dpo_loss(pc, pr, rc, rr, cm, rm, beta=0.3, loss_type=loss_type, label_smoothing=0.1).loss.backward()
    assert torch.all(pc.grad[~cm] == 0) and torch.all(pr.grad[~rm] == 0)
    assert torch.all(torch.isfinite(pc.grad)) and torch.all(torch.isfinite(pr.grad))
    assert pc.grad[cm].abs().sum() > 0


@pytest.mark.parametrize("loss_type", [*EVERY_TYPE, ["sigmoid", "sft"], "unlikelihood", ["sft", "unlikelihood"]])
@pytest.mark.parametrize("empty_side", ["chosen", "rejected"])
def test_every_type_is_finite_with_one_empty_span(loss_type, empty_side):
    """An insertion (rejected span empty) or a deletion (chosen span empty) steer: no NaN, in value or grad."""
    pc, pr, rc, rr, cm, rm = hand_case()
    if empty_side == "chosen":
        cm = torch.zeros_like(cm)
    else:
        rm = torch.zeros_like(rm)
    out = localized_dpo_loss(pc, pr, rc, rr, cm, rm, beta=0.5, loss_type=loss_type, length_normalize=True)
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.all(torch.isfinite(out.losses))
    # (`unlikelihood` alone never reads the chosen side: no gradient there at all)
    assert all(x.grad is None or torch.all(torch.isfinite(x.grad)) for x in (pc, pr)) and pr.grad is not None


@pytest.mark.parametrize(
    ("loss_type", "weights", "message"),
    [
        ("kto", None, r"loss_type 'kto': expected one of sigmoid"),
        (["sigmoid", "sft"], [1.0, -0.5], r"weight of sft is -0.5"),
        (["sigmoid", "sft"], [1.0], r"1 values for 2 loss types"),
        (["dpop", "dpop"], None, r"each type may appear once"),
        ("sft", None, r"no preference or unlikelihood term"),
        (["sigmoid", "sft"], [0.0, 1.0], r"no preference or unlikelihood term"),
        (["sft", "unlikelihood"], [1.0, 0.0], r"no preference or unlikelihood term"),
    ],
)
def test_bad_combination_is_a_clear_error(loss_type, weights, message):
    with pytest.raises(ValueError, match=message):
        localized_dpo_loss(*hand_case(), loss_type=loss_type, loss_weights=weights)


# --- unlikelihood (Welleck et al. 2020, eq. 4) on the rejected span -----------------------------------------


def unlikelihood_case():
    """Two rows, three rejected-span tokens; the chosen spans (one token each) only keep the rows non-empty.

    row 0: span p = 0.5, 0.75 -> -log(1 - 0.5) - log(1 - 0.75) = log 2 + log 4 = 3 log 2 = 2.0794415417
    row 1: span p = 0.2      -> -log(0.8) = 0.2231435513;  position 2 (p = 0.9) is off the span
    token mean over the batch: (2.0794415417 + 0.2231435513) / 3 = 0.7675283643
    per-example shares (sum × B / tokens): 2.0794415417 · 2/3 = 2 log 2 = 1.3862943611, 0.1487623675
    """
    pc = torch.tensor([[-9.0, -1.0, -9.0], [-9.0, -2.0, -9.0]], requires_grad=True)
    pr = torch.tensor([[-9.0, math.log(0.5), math.log(0.75)], [-9.0, math.log(0.2), math.log(0.9)]])
    pr.requires_grad_(True)
    cm = torch.tensor([[False, True, False], [False, True, False]])
    rm = torch.tensor([[False, True, True], [False, True, False]])
    return pc, pr, cm, rm


def test_unlikelihood_against_hand_computed_values():
    pc, pr, cm, rm = unlikelihood_case()
    out = localized_dpo_loss(pc, pr, None, None, cm, rm, loss_type="unlikelihood")
    assert out.loss.item() == pytest.approx((3 * math.log(2) - math.log(0.8)) / 3, rel=1e-6)
    assert out.losses.tolist() == pytest.approx([2 * math.log(2), -math.log(0.8) * 2 / 3], rel=1e-6)
    assert out.terms == {"unlikelihood": pytest.approx(out.loss.item())}
    assert unlikelihood_loss(pr, rm).item() == pytest.approx(out.loss.item(), rel=1e-7)
    # no reference: the rewards are β · the policy's span log-probs (DPO's reference-free convention)
    assert out.rejected_rewards.tolist() == pytest.approx([0.1 * math.log(0.375), 0.1 * math.log(0.2)])


def test_unlikelihood_gradient_is_p_over_one_minus_p_on_the_span_and_zero_elsewhere():
    """d/d log p of -log(1 - p) = p / (1 - p), divided by the 3 span tokens of the batch:
    p = 0.5 -> 1/3, p = 0.75 -> 3/3 = 1, p = 0.2 -> 0.25/3; 0 off the rejected span and on the chosen side."""
    pc, pr, cm, rm = unlikelihood_case()
    localized_dpo_loss(pc, pr, None, None, cm, rm, loss_type="unlikelihood").loss.backward()
    expected = torch.tensor([[0.0, 1 / 3, 1.0], [0.0, 0.25 / 3, 0.0]])
    torch.testing.assert_close(pr.grad, expected)
    assert torch.all(pr.grad[~rm] == 0) and pc.grad is None  # the chosen side is never read


def test_unlikelihood_off_span_values_never_leak_even_if_nan_or_infinite():
    """Padding or an unscored run-on holding -inf, 0 (p = 1) or NaN changes neither the value nor the
    gradient (a NaN there would otherwise turn the whole gradient to NaN through 0 · NaN)."""
    pc, pr, cm, rm = unlikelihood_case()
    clean = localized_dpo_loss(pc, pr, None, None, cm, rm, loss_type="unlikelihood").loss.item()
    dirty = pr.detach().clone()
    dirty[0, 0], dirty[1, 0], dirty[1, 2] = -math.inf, float("nan"), 0.0
    dirty.requires_grad_(True)
    out = localized_dpo_loss(pc, dirty, None, None, cm, rm, loss_type="unlikelihood")
    out.loss.backward()
    assert out.loss.item() == pytest.approx(clean, rel=1e-7)
    assert torch.all(torch.isfinite(dirty.grad)) and torch.all(dirty.grad[~rm] == 0)


def test_unlikelihood_of_a_certain_token_is_finite_and_large():
    """p -> 1 (fp32 log p of exactly 0, or -1e-9): 1 - p is floored at 1e-5, -log(1e-5) = 11.5129254650,
    and the gradient passes straight through the floor: p / (1 - p) there = (1 - 1e-5) / 1e-5 = 99999.
    Just below the floor the value is exact: log p = -1e-4 -> -log(-expm1(-1e-4)) = 9.2103903716."""
    assert UNLIKELIHOOD_MIN_ONE_MINUS_P == 1e-5
    logps = torch.tensor([[0.0, -1e-9, -1e-4]], requires_grad=True)
    one = torch.ones(1, 1, dtype=torch.bool)
    values = [unlikelihood_loss(logps[:, i : i + 1], one).item() for i in range(3)]
    assert values == pytest.approx([-math.log(1e-5), -math.log(1e-5), 9.2103903716], rel=1e-5)
    unlikelihood_loss(logps, torch.ones(1, 3, dtype=torch.bool)).backward()
    assert torch.all(torch.isfinite(logps.grad))
    assert logps.grad[0, :2].tolist() == pytest.approx([99999.0 / 3, 99999.0 / 3], rel=1e-3)


def test_unlikelihood_of_an_unlikely_token_is_about_p():
    """p tiny: -log(1 - p) = p + p²/2 + ... ≈ p: e^-30 = 9.3576229688e-14, e^-50 = 1.9287498480e-22
    (1 - p rounds to 1 in fp32, so log(-expm1(log p)) would give exactly 0 here)."""
    logps = torch.tensor([[-30.0, -50.0]])
    one = torch.ones(1, 1, dtype=torch.bool)
    values = [unlikelihood_loss(logps[:, i : i + 1], one).item() for i in range(2)]
    assert values == pytest.approx([math.exp(-30), math.exp(-50)], rel=1e-5)
    assert torch.log(-torch.expm1(torch.tensor(-30.0))).item() == 0.0  # the cancellation log1mexp avoids


def test_log1mexp_matches_float64_across_the_range():
    x = -torch.logspace(-4, 1.9, 60, dtype=torch.float64)  # -1e-4 .. -79: both sides of -log 2, e^x normal in fp32
    expected = torch.log(-torch.expm1(x)).where(x > -math.log(2), torch.log1p(-torch.exp(x)))
    torch.testing.assert_close(log1mexp(x.float()).double(), expected, rtol=1e-5, atol=0.0)


def test_sft_plus_unlikelihood_is_the_weighted_sum_and_needs_no_reference():
    """[sft, unlikelihood] with weights [1, 0.3] on hand_case: NLL of the chosen span (tokens -1.0, -0.5:
    mean 0.75) + 0.3 · -log(1 - e^-2) (the one rejected token) = 0.75 + 0.3 · 0.1454134579 = 0.7936240374;
    the reference log-probs are not read (None, or anything: the same value)."""
    pc, pr, rc, rr, cm, rm = hand_case()
    combination = {"loss_type": ["sft", "unlikelihood"], "loss_weights": [1, 0.3]}
    out = localized_dpo_loss(pc, pr, None, None, cm, rm, **combination)
    assert out.loss.item() == pytest.approx(0.7936240373606577, rel=1e-6)
    assert out.terms["sft"].item() == pytest.approx(0.75)
    assert out.terms["unlikelihood"].item() == pytest.approx(0.14541345786885906, rel=1e-6)
    with_reference = localized_dpo_loss(pc, pr, rc, rr, cm, rm, **combination)
    assert with_reference.loss.item() == pytest.approx(out.loss.item(), rel=1e-7)
    # with a DPO term the reference is read, and the sum is the weighted sum of the three terms
    both = localized_dpo_loss(
        pc, pr, rc, rr, cm, rm, beta=0.5, loss_type=["sigmoid", "sft", "unlikelihood"], loss_weights=[1, 1, 0.3]
    )
    assert both.loss.item() == pytest.approx(math.log1p(math.exp(-1)) + 0.7936240373606577, rel=1e-6)


def test_unlikelihood_with_an_empty_rejected_span_contributes_zero_with_a_finite_gradient():
    """An insertion steer (rejected span empty): the unlikelihood term is 0, the loss is the SFT term alone."""
    pc, pr, _, _, cm, _ = hand_case()
    rm = torch.zeros(1, 4, dtype=torch.bool)
    out = localized_dpo_loss(
        pc, pr, None, None, cm, rm, loss_type=["sft", "unlikelihood"], loss_weights=[1, 0.3]
    )
    out.loss.backward()
    assert out.terms["unlikelihood"].item() == 0.0 and out.loss.item() == pytest.approx(0.75)
    assert torch.all(pr.grad == 0) and torch.all(torch.isfinite(pc.grad))


def test_unlikelihood_num_tokens_makes_micro_batches_one_token_mean():
    """Micro-batch A: one rejected token of p = 0.5 (term log 2); B: one token of p = 0.75 (term log 4) and one
    of p = 0.5. One big batch: (log 2 + log 4 + log 2) / 3 = 4 log 2 / 3; with num_tokens = 3 tokens / 2
    micro-batches = 1.5 the micro-batch losses log 2 / 1.5 and 3 log 2 / 1.5 average to the same."""
    a, mask_a = torch.tensor([[math.log(0.5), 0.0]]), torch.tensor([[True, False]])
    b, mask_b = torch.tensor([[math.log(0.75), math.log(0.5)]]), torch.tensor([[True, True]])
    step = (unlikelihood_loss(a, mask_a, num_tokens=1.5) + unlikelihood_loss(b, mask_b, num_tokens=1.5)) / 2
    assert step.item() == pytest.approx(4 * math.log(2) / 3, rel=1e-6)
    pc = torch.full((1, 2), -1.0)
    out = localized_dpo_loss(
        pc, b, None, None, mask_b, mask_b, loss_type=["sft", "unlikelihood"], unlikelihood_num_tokens=1.5
    )
    assert out.terms["unlikelihood"].item() == pytest.approx(3 * math.log(2) / 1.5, rel=1e-6)
    torch.testing.assert_close(out.losses.mean(), out.loss)


def test_which_terms_need_a_reference():
    assert [t.value for t in LossType if not t.needs_reference] == ["sft", "unlikelihood"]
    assert not LossType.UNLIKELIHOOD.is_preference and LossType.UNLIKELIHOOD.scores_rejected
    assert not needs_reference(["sft", "unlikelihood"]) and not needs_reference("unlikelihood")
    assert needs_reference(["sft", "unlikelihood", "sigmoid"]) and needs_reference("dpop")
    with pytest.raises(ValueError, match=r"needs reference log-probs"):
        pc, pr, _, _, cm, rm = hand_case()
        localized_dpo_loss(pc, pr, None, None, cm, rm, loss_type=["sigmoid", "unlikelihood"])


def test_unlikelihood_is_not_a_preference_loss_of_the_log_ratios():
    from localdpo.losses import preference_losses

    with pytest.raises(ValueError, match="per-token term of the rejected span"):
        preference_losses(torch.zeros(1), torch.zeros(1), beta=0.1, loss_type="unlikelihood")


# --- LossSpec ------------------------------------------------------------------------------------------


def test_loss_spec_is_the_loss_with_its_parameters():
    """`LossSpec.loss` is `localized_dpo_loss` with the spec's parameters: dpop at β 0.2, λ 5, length-normalized,
    plus half the chosen-span NLL, on one hand-made batch."""
    policy_c = torch.tensor([[-1.0, -2.0, -0.5]])  # (1, 3)
    policy_r = torch.tensor([[-0.7, -1.5]])  # (1, 2)
    ref_c, ref_r = torch.tensor([[-1.2, -1.0, -0.5]]), torch.tensor([[-0.9, -1.0]])
    mask_c, mask_r = torch.tensor([[False, True, True]]), torch.tensor([[True, True]])
    spec = LossSpec.of(["dpop", "sft"], [1.0, 0.5], beta=0.2, length_normalize=True, dpop_lambda=5.0)
    assert spec.loss_types == (LossType.DPOP, LossType.SFT) and spec.loss_weights == (1.0, 0.5)
    assert spec.combination == [(LossType.DPOP, 1.0), (LossType.SFT, 0.5)] and spec.needs_reference
    direct = localized_dpo_loss(
        policy_c, policy_r, ref_c, ref_r, mask_c, mask_r,
        beta=0.2, loss_type=["dpop", "sft"], loss_weights=[1.0, 0.5], length_normalize=True, dpop_lambda=5.0,
    )  # fmt: skip
    out = spec.loss(policy_c, policy_r, ref_c, ref_r, mask_c, mask_r)
    assert torch.equal(out.loss, direct.loss) and torch.equal(out.margins, direct.margins)
    # Δc = (-2 + 1 + 0) / 2 = -0.5, Δr = (0.2 - 0.5) / 2 = -0.15: dpop = -log σ(0.2 (Δc - Δr - 5 · 0.5))
    dpop = -F.logsigmoid(torch.tensor(0.2 * (-0.5 + 0.15 - 5 * 0.5))).item()
    assert out.terms["dpop"].item() == pytest.approx(dpop, rel=1e-6)
    assert out.terms["sft"].item() == pytest.approx(1.25)  # NLL of the chosen span: (2 + 0.5) / 2
    assert out.loss.item() == pytest.approx(dpop + 0.5 * 1.25, rel=1e-6)


def test_loss_spec_is_checked_when_built_and_frozen():
    assert LossSpec() == LossSpec.of("sigmoid")  # DPO's sigmoid at β 0.1, weight 1
    assert not LossSpec.of(["sft", "unlikelihood"]).needs_reference
    with pytest.raises(ValueError, match="loss_type 'dpo': expected one of sigmoid"):
        LossSpec.of("dpo")
    with pytest.raises(ValueError, match="loss_weights has 1 values for 2 loss types"):
        LossSpec((LossType.SIGMOID, LossType.SFT), (1.0,))
    with pytest.raises(ValueError, match="no preference or unlikelihood term"):
        LossSpec.of("sft")
    with pytest.raises(AttributeError):
        LossSpec().beta = 0.5  # frozen: a trainer cannot change the loss under a run
