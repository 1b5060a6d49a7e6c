import math

import pytest
import torch
import torch.nn.functional as F

from localdpo import localized_dpo_loss, masked_sft_loss, token_logps
from localdpo.losses import LossType

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


@pytest.mark.parametrize("loss_type", [*EVERY_TYPE, ["dpop", "sft"], ["apo_down", "cal_dpo", "sft"]])
def test_every_type_has_exactly_zero_gradient_outside_the_spans(loss_type):
    pc, pr, rc, rr, cm, rm = hand_case()
    localized_dpo_loss(pc, pr, rc, rr, cm, rm, beta=0.3, loss_type=loss_type, label_smoothing=0.1).loss.backward()
    assert torch.all(pc.grad[~cm] == 0) and torch.all(pr.grad[~rm] == 0)
    assert torch.all(torch.isfinite(pc.grad)) and torch.all(torch.isfinite(pr.grad))
    assert pc.grad[cm].abs().sum() > 0


@pytest.mark.parametrize("loss_type", [*EVERY_TYPE, ["sigmoid", "sft"]])
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
    assert torch.all(torch.isfinite(pc.grad)) and torch.all(torch.isfinite(pr.grad))


@pytest.mark.parametrize(
    ("loss_type", "weights", "message"),
    [
        ("kto", None, r"loss_type 'kto': expected one of sigmoid"),
        (["sigmoid", "sft"], [1.0, -0.5], r"weight of sft is -0.5"),
        (["sigmoid", "sft"], [1.0], r"1 values for 2 loss types"),
        (["dpop", "dpop"], None, r"each type may appear once"),
        ("sft", None, r"no preference term"),
        (["sigmoid", "sft"], [0.0, 1.0], r"no preference term"),
    ],
)
def test_bad_combination_is_a_clear_error(loss_type, weights, message):
    with pytest.raises(ValueError, match=message):
        localized_dpo_loss(*hand_case(), loss_type=loss_type, loss_weights=weights)
