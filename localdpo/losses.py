"""Pure loss functions on tensors: per-token log-probs, the localized preference losses, masked SFT.

No configs, no models: other trainers import these directly. `LossSpec` is the one frozen value of a loss's
parameters that every trainer passes.

Notation: Δc and Δr are the policy-minus-reference log-probs summed over the chosen and the rejected span
(divided by the span length when `length_normalize`), h = Δc − Δr the DPO margin, σ the logistic function.

References:
  DPO: Rafailov et al. 2023, "Direct Preference Optimization", eq. 7.
  Conservative DPO (label smoothing): Mitchell 2023, "A note on DPO with noisy preferences".
  IPO: Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences", eq. 17.
  Hinge (SLiC): Zhao et al. 2023, "SLiC-HF".
  Robust DPO: Chowdhury et al. 2024, "Provably Robust DPO", eq. 8.
  APO-zero, APO-down: D'Oosterlinck et al. 2024, "Anchored Preference Optimization and Contrastive Revisions",
    arXiv 2408.06266, eqs. 7 and 8 (TRL 1.16's `apo_zero` / `apo_down`).
  DPO-Positive: Pal et al. 2024, "Smaug: Fixing Failure Modes of Preference Optimisation with DPO-Positive",
    arXiv 2402.13228, eq. 3.
  Cal-DPO: Xiao et al. 2024, "Cal-DPO: Calibrated Direct Preference Optimization for Language Model
    Alignment", arXiv 2412.14516, eq. 10 (the paper's objective, implemented as written; the authors' code,
    github.com/tengxiao1/Cal-DPO `scripts/dpo_trainer.py`, weights the two squared terms by 1/2).
  Chosen-side NLL added to a preference loss (RPO): Pang et al. 2024, "Iterative Reasoning Preference
    Optimization", eq. 1.
  Unlikelihood: Welleck et al. 2020, "Neural Text Generation with Unlikelihood Training", ICLR 2020, eq. 4
    (token-level unlikelihood, here with the rejected span's tokens as the negative candidates).
  log(1 - e^x) computed stably: Mächler 2012, "Accurately Computing log(1 - exp(-|a|)) Assessed by the Rmpfr
    package" (expm1 for x > -log 2, log1p below).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch
import torch.nn.functional as F


class LossType(str, Enum):
    """One term of the localized loss; a loss is a weighted sum of one or more terms (`loss_weights`)."""

    SIGMOID = "sigmoid"
    """-log σ(βh); with label smoothing ε: -(1-ε) log σ(βh) - ε log σ(-βh) (conservative DPO)."""
    IPO = "ipo"
    """(h - 1/(2β))²."""
    HINGE = "hinge"
    """max(0, 1 - βh)."""
    ROBUST = "robust"
    """(-(1-ε) log σ(βh) + ε log σ(-βh)) / (1 - 2ε)."""
    APO_ZERO = "apo_zero"
    """(1 - σ(βΔc)) + σ(βΔr): push the chosen span up and the rejected span down, each against the reference."""
    APO_DOWN = "apo_down"
    """σ(βΔc) + (1 - σ(β(Δc - Δr))): both spans down, the rejected more (for chosen worse than the model's own)."""
    DPOP = "dpop"
    """-log σ(β(Δc - Δr - λ·max(0, -Δc))): DPO with a penalty when the chosen span falls below the reference."""
    CAL_DPO = "cal_dpo"
    """-log σ(Δc - Δr) + (Δc - 1/(2β))² + (Δr + 1/(2β))²: DPO with the log-ratios calibrated to ±1/(2β)."""
    SFT = "sft"
    """Masked NLL of the chosen span, one token mean over the batch (or step): the SFT term of a combination."""
    UNLIKELIHOOD = "unlikelihood"
    """-log(1 - p) of each rejected-span token, one token mean over the batch (or step) as `sft`: token-level
    unlikelihood (Welleck et al. 2020, eq. 4) on the original tokens, no reference (`unlikelihood_loss`)."""

    @property
    def is_preference(self) -> bool:
        """Whether the term compares the two sides: every type but `sft` and `unlikelihood`."""
        return self not in (LossType.SFT, LossType.UNLIKELIHOOD)

    @property
    def needs_reference(self) -> bool:
        """Whether the term reads reference log-probs: the preference terms (log-ratios), not `sft` or
        `unlikelihood` (policy log-probs alone). A combination needs one when any of its terms does."""
        return self.is_preference

    @property
    def scores_rejected(self) -> bool:
        """Whether the term reads the rejected span: every type but `sft`."""
        return self is not LossType.SFT


@dataclass(frozen=True)
class PreferenceLossOutput:
    """What `localized_dpo_loss` returns."""

    loss: torch.Tensor
    """() Σ_k w_k · (batch mean of term k); equal to `losses.mean()` up to rounding."""
    losses: torch.Tensor
    """(B,) per-example loss: Σ_k w_k · term k of the example (the SFT term's share: its NLL sum × B / tokens)."""
    chosen_rewards: torch.Tensor
    """(B,) β · Δc, detached; without reference log-probs (`sft` / `unlikelihood` terms only) the reference
    counts as 0, DPO's reference-free convention, so this is β · the policy's span log-prob."""
    rejected_rewards: torch.Tensor
    """(B,) β · Δr, detached (β · the policy's span log-prob without a reference)."""
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    """() detached batch mean of each term, unweighted, under its `LossType` value."""

    @property
    def margins(self) -> torch.Tensor:
        """(B,) chosen_rewards - rejected_rewards."""
        return self.chosen_rewards - self.rejected_rewards


def token_logps(logits: torch.Tensor, input_ids: torch.Tensor, *, chunk_size: int = 1) -> torch.Tensor:
    """Per-token log-probs: `out[b, t] = log p(input_ids[b, t] | input_ids[b, :t])`, `out[:, 0] = 0`.

    Computed as gathered logit minus logsumexp, in fp32, `chunk_size` rows at a time, so no fp32 copy
    of the full (B, T, V) log-softmax is kept beyond one chunk (under autograd each chunk's fp32 upcast of
    half-precision logits is saved for backward).

    Shape: logits (B, T, V), input_ids (B, T) -> (B, T) float32.
    """
    if logits.shape[:2] != input_ids.shape:
        raise ValueError(
            f"logits {tuple(logits.shape)} and input_ids {tuple(input_ids.shape)} disagree on (B, T)"
        )
    batch, length = input_ids.shape
    out = logits.new_zeros((batch, length), dtype=torch.float32)
    if length < 2:
        return out
    targets = input_ids[:, 1:].unsqueeze(-1)  # (B, T-1, 1)
    rows = []
    for start in range(0, batch, chunk_size):
        chunk = logits[start : start + chunk_size, :-1].float()  # (b, T-1, V)
        picked = chunk.gather(-1, targets[start : start + chunk_size]).squeeze(-1)  # (b, T-1)
        rows.append(picked - torch.logsumexp(chunk, dim=-1))  # (b, T-1)
    return torch.cat([out[:, :1], torch.cat(rows, dim=0)], dim=1)  # (B, T)


def masked_sum(values: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Sum over the masked positions of each row; masked-out values (even -inf or NaN) never leak in.

    Shape: values (B, T), mask (B, T) bool -> (B,).
    """
    return torch.where(mask, values, torch.zeros((), dtype=values.dtype, device=values.device)).sum(-1)


def _check_nonempty_rows(chosen_mask: torch.Tensor, rejected_mask: torch.Tensor) -> None:
    both_empty = ~(chosen_mask.any(-1) | rejected_mask.any(-1))  # (B,)
    if bool(both_empty.any()):
        rows = both_empty.nonzero().flatten().tolist()
        raise ValueError(f"rows {rows} have empty chosen and rejected spans: nothing to score")


def preference_losses(
    chosen_logratios: torch.Tensor,
    rejected_logratios: torch.Tensor,
    *,
    beta: float,
    loss_type: LossType | str = LossType.SIGMOID,
    label_smoothing: float = 0.0,
    dpop_lambda: float = 50.0,
) -> torch.Tensor:
    """Per-example preference loss of one `LossType` from the span log-ratios Δc and Δr (see `LossType`).

    Shape: chosen_logratios (B,), rejected_logratios (B,) -> (B,).
    """
    loss_type = LossType(loss_type)
    eps = label_smoothing
    margins = chosen_logratios - rejected_logratios  # (B,) h
    if loss_type is LossType.SIGMOID:
        # DPO eq. 7; conservative DPO with ε > 0
        return -(1 - eps) * F.logsigmoid(beta * margins) - eps * F.logsigmoid(-beta * margins)
    if loss_type is LossType.IPO:
        return (margins - 1 / (2 * beta)) ** 2  # IPO eq. 17
    if loss_type is LossType.HINGE:
        return torch.relu(1 - beta * margins)
    if loss_type is LossType.ROBUST:
        if not 0 <= eps < 0.5:
            raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {eps}")
        return (-(1 - eps) * F.logsigmoid(beta * margins) + eps * F.logsigmoid(-beta * margins)) / (1 - 2 * eps)
    if loss_type is LossType.APO_ZERO:
        return (1 - torch.sigmoid(beta * chosen_logratios)) + torch.sigmoid(beta * rejected_logratios)
    if loss_type is LossType.APO_DOWN:
        return torch.sigmoid(beta * chosen_logratios) + (1 - torch.sigmoid(beta * margins))
    if loss_type is LossType.DPOP:
        if dpop_lambda < 0:
            raise ValueError(f"DPO-Positive needs dpop_lambda >= 0, got {dpop_lambda}")
        # max(0, log π_ref(y_w) - log π(y_w)): zero while the chosen span is at least as likely as under the reference
        penalty = torch.relu(-chosen_logratios)  # (B,)
        return -F.logsigmoid(beta * (margins - dpop_lambda * penalty))
    if loss_type is LossType.CAL_DPO:
        # The paper's objective: the contrastive term has no β; β sets the calibration targets ±1/(2β).
        target = 1 / (2 * beta)
        return (
            -F.logsigmoid(margins) + (chosen_logratios - target) ** 2 + (rejected_logratios + target) ** 2
        )
    if loss_type is LossType.SFT:
        raise ValueError("'sft' is the chosen-span NLL term of a combination, not a preference loss of Δc and Δr")
    if loss_type is LossType.UNLIKELIHOOD:
        raise ValueError(
            "'unlikelihood' is a per-token term of the rejected span, not a preference loss of Δc and Δr"
        )
    raise ValueError(f"unknown loss type {loss_type!r}")


def loss_combination(
    loss_type: LossType | str | Sequence[LossType | str], loss_weights: Sequence[float] | None = None
) -> list[tuple[LossType, float]]:
    """`[(type, weight), ...]` of a loss given as one type or a list of types with weights (default 1 each).

    Raises `ValueError` for an unknown type, a repeated type, a negative or non-finite weight, weights and
    types of different lengths, or a combination with no positive-weight term on the rejected span (a
    preference term or `unlikelihood`; `sft` alone is SFT itself).
    """
    types_in = [loss_type] if isinstance(loss_type, (str, LossType)) else list(loss_type)
    if not types_in:
        raise ValueError("loss_type: no loss given")
    valid = ", ".join(t.value for t in LossType)
    types = []
    for item in types_in:
        try:
            types.append(LossType(item))
        except ValueError:
            raise ValueError(f"loss_type {item!r}: expected one of {valid}") from None
    if len(set(types)) != len(types):
        raise ValueError(f"loss_type {[t.value for t in types]}: each type may appear once")
    weights = [1.0] * len(types) if loss_weights is None else [float(w) for w in loss_weights]
    if len(weights) != len(types):
        raise ValueError(
            f"loss_weights has {len(weights)} values for {len(types)} loss types {[t.value for t in types]}"
        )
    for t, w in zip(types, weights):
        if not w >= 0 or w == float("inf"):
            raise ValueError(f"loss_weights: weight of {t.value} is {w}; weights must be finite and >= 0")
    if not any(t.scores_rejected and w > 0 for t, w in zip(types, weights)):
        raise ValueError(
            f"loss_type {[t.value for t in types]} with weights {weights} has no preference or unlikelihood "
            "term with a positive weight"
        )
    return list(zip(types, weights))


def needs_reference(loss_type: LossType | str | Sequence[LossType | str]) -> bool:
    """Whether a loss (one type or a list of terms) reads reference log-probs: whether any term does, whatever
    its weight (`LossType.needs_reference`); `[sft, unlikelihood]` does not, `[sft, sigmoid]` does."""
    types = [loss_type] if isinstance(loss_type, (str, LossType)) else list(loss_type)
    return any(LossType(t).needs_reference for t in types)


def localized_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor | None,
    ref_rejected_logps: torch.Tensor | None,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: LossType | str | Sequence[LossType | str] = LossType.SIGMOID,
    loss_weights: Sequence[float] | None = None,
    label_smoothing: float = 0.0,
    length_normalize: bool = False,
    dpop_lambda: float = 50.0,
    sft_num_tokens: float | None = None,
    unlikelihood_num_tokens: float | None = None,
) -> PreferenceLossOutput:
    """Preference loss restricted to the scored spans of each side: Σ_k w_k · term_k (see `LossType`).

    Δc = Σ_{t in chosen span} (π - ref), Δr likewise (each divided by its span length if `length_normalize`);
    h = Δc - Δr is the DPO margin h_π^{y_w,y_l} of eq. 7. `loss_type` is one type or a list combined with
    `loss_weights`, as TRL's `loss_type=[...]`, `loss_weights=[...]`; `sft` is the masked NLL of the chosen
    span (`masked_sft_loss`, a token mean over the batch, or over `sft_num_tokens`), `unlikelihood` the
    unlikelihood of the rejected span (`unlikelihood_loss`, a token mean over the batch, or over
    `unlikelihood_num_tokens`). With masks covering the whole completion, `sigmoid` is standard DPO. An empty
    span sums to 0; a row with both spans empty raises `ValueError` naming the row. The reference log-probs
    may be None when no term reads them (`needs_reference`: `sft` and `unlikelihood` only).

    Shape: *_chosen_logps (B, Tc), *_rejected_logps (B, Tr), chosen_mask (B, Tc) bool,
    rejected_mask (B, Tr) bool; Tc and Tr may differ.
    """
    combination = loss_combination(loss_type, loss_weights)
    if ref_chosen_logps is None or ref_rejected_logps is None:
        if needs_reference([t for t, _ in combination]):
            names = [t.value for t, _ in combination]
            raise ValueError(
                f"loss_type {names} needs reference log-probs of both sides (sft and unlikelihood alone do not)"
            )
        # reference-free terms only: Δ (hence the logged rewards) against a reference of 0
        ref_chosen_logps = torch.zeros_like(policy_chosen_logps)
        ref_rejected_logps = torch.zeros_like(policy_rejected_logps)
    if policy_chosen_logps.shape != ref_chosen_logps.shape or policy_chosen_logps.shape != chosen_mask.shape:
        raise ValueError(
            f"chosen shapes disagree: policy {tuple(policy_chosen_logps.shape)}, reference "
            f"{tuple(ref_chosen_logps.shape)}, mask {tuple(chosen_mask.shape)}"
        )
    if (
        policy_rejected_logps.shape != ref_rejected_logps.shape
        or policy_rejected_logps.shape != rejected_mask.shape
    ):
        raise ValueError(
            f"rejected shapes disagree: policy {tuple(policy_rejected_logps.shape)}, reference "
            f"{tuple(ref_rejected_logps.shape)}, mask {tuple(rejected_mask.shape)}"
        )
    chosen_mask, rejected_mask = chosen_mask.bool(), rejected_mask.bool()
    _check_nonempty_rows(chosen_mask, rejected_mask)
    chosen_logratios = masked_sum(policy_chosen_logps - ref_chosen_logps, chosen_mask)  # (B,) Δc
    rejected_logratios = masked_sum(policy_rejected_logps - ref_rejected_logps, rejected_mask)  # (B,) Δr
    if length_normalize:
        chosen_logratios = chosen_logratios / chosen_mask.sum(-1).clamp(min=1)
        rejected_logratios = rejected_logratios / rejected_mask.sum(-1).clamp(min=1)
    loss = losses = None
    terms = {}
    for term_type, weight in combination:
        if term_type is LossType.SFT:
            term, per_example = _token_mean_term(policy_chosen_logps, chosen_mask, sft_num_tokens)
        elif term_type is LossType.UNLIKELIHOOD:
            not_rejected = log_one_minus_p(policy_rejected_logps, rejected_mask)  # (B, Tr) log(1 - p)
            term, per_example = _token_mean_term(not_rejected, rejected_mask, unlikelihood_num_tokens)
        else:
            per_example = preference_losses(
                chosen_logratios,
                rejected_logratios,
                beta=beta,
                loss_type=term_type,
                label_smoothing=label_smoothing,
                dpop_lambda=dpop_lambda,
            )  # (B,)
            term = per_example.mean()
        terms[term_type.value] = term.detach()
        loss = weight * term if loss is None else loss + weight * term
        losses = weight * per_example if losses is None else losses + weight * per_example
    return PreferenceLossOutput(
        loss=loss,
        losses=losses,
        chosen_rewards=(beta * chosen_logratios).detach(),
        rejected_rewards=(beta * rejected_logratios).detach(),
        terms=terms,
    )



@dataclass(frozen=True)
class LossSpec:
    """Everything besides the tensors that decides a localized preference loss: its weighted terms and their
    parameters, checked once when built (`ValueError` as `loss_combination` raises it).

    Built from a config once (`RunConfig.loss.spec()`, `LocalizedLossConfig.spec()`, a TRL `DPOConfig` in
    `LocalizedDPOTrainer`) and read by every trainer, so no layer unpacks the loss parameters field by field.
    E.g. `LossSpec((LossType.SIGMOID, LossType.SFT), (1.0, 0.5), beta=0.1)`: DPO plus half the chosen-span NLL.
    """

    loss_types: tuple[LossType, ...] = (LossType.SIGMOID,)
    """The terms, in the order they are summed (`LossType`; each once)."""
    loss_weights: tuple[float, ...] = (1.0,)
    """Weight of each term, same length."""
    beta: float = 0.1
    """β: scale of the log-ratio margin (and of the logged rewards)."""
    label_smoothing: float = 0.0
    """ε of conservative (sigmoid) or robust DPO."""
    length_normalize: bool = False
    """Divide each span's log-ratio by its token count."""
    dpop_lambda: float = 50.0
    """λ of DPO-Positive (`dpop`)."""

    def __post_init__(self):
        combination = loss_combination(self.loss_types, self.loss_weights)
        object.__setattr__(self, "loss_types", tuple(t for t, _ in combination))
        object.__setattr__(self, "loss_weights", tuple(w for _, w in combination))

    @classmethod
    def of(
        cls, loss_type: LossType | str | Sequence[LossType | str], loss_weights: Sequence[float] | None = None, **params
    ) -> LossSpec:
        """The spec of a loss given as one type or a list of terms with weights (default 1 each)."""
        combination = loss_combination(loss_type, loss_weights)
        return cls(tuple(t for t, _ in combination), tuple(w for _, w in combination), **params)

    @property
    def combination(self) -> list[tuple[LossType, float]]:
        """`[(type, weight), ...]`."""
        return list(zip(self.loss_types, self.loss_weights))

    @property
    def needs_reference(self) -> bool:
        """Whether any term reads reference log-probs (`needs_reference`)."""
        return needs_reference(self.loss_types)

    def loss(
        self,
        policy_chosen_logps: torch.Tensor,
        policy_rejected_logps: torch.Tensor,
        ref_chosen_logps: torch.Tensor | None,
        ref_rejected_logps: torch.Tensor | None,
        chosen_mask: torch.Tensor,
        rejected_mask: torch.Tensor,
        *,
        sft_num_tokens: float | None = None,
        unlikelihood_num_tokens: float | None = None,
    ) -> PreferenceLossOutput:
        """`localized_dpo_loss` of this spec on one batch.

        Shape: *_chosen_logps (B, Tc), *_rejected_logps (B, Tr), chosen_mask (B, Tc), rejected_mask (B, Tr).
        """
        return localized_dpo_loss(
            policy_chosen_logps,
            policy_rejected_logps,
            ref_chosen_logps,
            ref_rejected_logps,
            chosen_mask,
            rejected_mask,
            beta=self.beta,
            loss_type=list(self.loss_types),
            loss_weights=list(self.loss_weights),
            label_smoothing=self.label_smoothing,
            length_normalize=self.length_normalize,
            dpop_lambda=self.dpop_lambda,
            sft_num_tokens=sft_num_tokens,
            unlikelihood_num_tokens=unlikelihood_num_tokens,
        )

def _token_mean_term(
    logps: torch.Tensor, mask: torch.Tensor, num_tokens: float | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """`(masked_sft_loss(logps, mask, num_tokens), per-example share)`: each row's NLL sum × B / divisor,
    whose batch mean is the term, so `PreferenceLossOutput.losses.mean() == loss` in every combination.

    Shape: logps (B, T), mask (B, T) bool -> (), (B,).
    """
    term = masked_sft_loss(logps, mask, num_tokens=num_tokens)  # ()
    divisor = mask.sum().clamp(min=1) if num_tokens is None else max(num_tokens, 1e-12)
    return term, -masked_sum(logps, mask) * logps.shape[0] / divisor  # (), (B,)


UNLIKELIHOOD_MIN_ONE_MINUS_P = 1e-5
"""Floor of 1 - p in the unlikelihood term (the authors' code clamps 1 - p at 1e-5 too): -log(1 - p) <= 11.51.
A token of fp32 log-prob 0 (p rounded to 1) is finite there, the case unlikelihood exists for."""


def log1mexp(x: torch.Tensor) -> torch.Tensor:
    """log(1 - e^x) for x < 0, accurate at both ends (Mächler 2012): log(-expm1(x)) for x > -log 2, where
    1 - e^x would cancel, else log1p(-e^x), where e^x is small (log1mexp(x) ≈ -e^x, not 0).

    Shape: x (...) -> (...).
    """
    near_zero = x > -math.log(2)
    return torch.where(near_zero, torch.log(-torch.expm1(x)), torch.log1p(-torch.exp(x)))


def log_one_minus_p(logps: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """log(1 - p) of each masked token from its log-prob log p; 0 off the mask (whatever the value there).

    log p is capped at log(1 - `UNLIKELIHOOD_MIN_ONE_MINUS_P`) with the gradient passed straight through, so a
    token the model is sure of gets the cap's finite value and the largest gradient, not none (the authors'
    clamp of 1 - p gives it zero gradient). Off-mask values (padding, -inf, NaN) are replaced before any
    arithmetic, so neither they nor their gradients (0 · NaN) leak in.

    Shape: logps (B, T), mask (B, T) bool -> (B, T).
    """
    mask = mask.bool()
    safe = torch.where(mask, logps, torch.full_like(logps, -1.0))  # (B, T) off-mask: any finite log-prob
    cap = math.log1p(-UNLIKELIHOOD_MIN_ONE_MINUS_P)
    capped = safe - (safe - cap).clamp(min=0).detach()  # value min(log p, cap), d/d log p = 1
    return torch.where(mask, log1mexp(capped), torch.zeros_like(capped))  # (B, T)


def unlikelihood_loss(
    logps: torch.Tensor, mask: torch.Tensor, num_tokens: float | None = None
) -> torch.Tensor:
    """Token-level unlikelihood of the masked tokens: `-Σ_{masked} log(1 - p(token)) / mask.sum()`.

    Welleck et al. 2020, eq. 4, with each masked token (the rejected span: the tokens the correction replaced)
    as the negative candidate of its own position; no reference model. Normalized as `masked_sft_loss`, of
    which it is the NLL of the complement event "not this token": one token mean over the batch, or over
    `num_tokens` (the step's masked tokens / micro-batches under gradient accumulation), 0 (in the graph,
    with a zero gradient) for a batch with no masked token. Per token it is ≈ p for small p and grows without
    bound as p → 1 (capped at -log `UNLIKELIHOOD_MIN_ONE_MINUS_P`); its gradient on the token's own logit is p.

    Shape: logps (B, T), mask (B, T) bool -> ().
    """
    return masked_sft_loss(log_one_minus_p(logps, mask), mask, num_tokens=num_tokens)


def masked_sft_loss(logps: torch.Tensor, mask: torch.Tensor, num_tokens: float | None = None) -> torch.Tensor:
    """Mean negative log-likelihood over the masked tokens of the whole batch.

    `-sum(logps[mask]) / mask.sum()`; a batch with no masked token gives 0 (still in the graph), not NaN.
    `num_tokens` replaces the divisor `mask.sum()`: with gradient accumulation, pass the step's scored tokens
    divided by its number of micro-batches, so that the averaged micro-batch losses are one token mean over the
    step (micro-batches with few scored tokens otherwise weigh more than in one big batch).

    Shape: logps (B, T), mask (B, T) bool -> ().
    """
    mask = mask.bool()
    total = masked_sum(logps, mask).sum()
    if num_tokens is None:
        return -total / mask.sum().clamp(min=1)
    return -total / max(float(num_tokens), 1e-12)  # 0 tokens in the whole step: total is 0, so is the loss
