"""Pure loss functions on tensors: per-token log-probs, the localized DPO loss, masked SFT.

No configs, no models: other trainers import these directly.

References:
  DPO: Rafailov et al. 2023, "Direct Preference Optimization", eq. 7.
  Conservative DPO (label smoothing): Mitchell 2023, "A note on DPO with noisy preferences".
  IPO: Azar et al. 2023, "A General Theoretical Paradigm to Understand Learning from Human Preferences", eq. 17.
  Hinge (SLiC): Zhao et al. 2023, "SLiC-HF".
  Robust DPO: Chowdhury et al. 2024, "Provably Robust DPO", eq. 8.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum

import torch
import torch.nn.functional as F


class LossType(str, Enum):
    """Preference loss on h, the policy-minus-reference log-ratio margin over the spans."""

    SIGMOID = "sigmoid"
    """-log σ(βh); with label smoothing ε: -(1-ε) log σ(βh) - ε log σ(-βh) (conservative DPO)."""
    IPO = "ipo"
    """(h - 1/(2β))²."""
    HINGE = "hinge"
    """max(0, 1 - βh)."""
    ROBUST = "robust"
    """(-(1-ε) log σ(βh) + ε log σ(-βh)) / (1 - 2ε)."""


@dataclass(frozen=True)
class PreferenceLossOutput:
    """What `localized_dpo_loss` returns."""

    loss: torch.Tensor
    """() mean of `losses` over the batch."""
    losses: torch.Tensor
    """(B,) per-example loss."""
    chosen_rewards: torch.Tensor
    """(B,) β · (policy - reference) log-prob of the chosen span, detached."""
    rejected_rewards: torch.Tensor
    """(B,) β · (policy - reference) log-prob of the rejected span, detached."""

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
    logits: torch.Tensor,
    *,
    beta: float,
    loss_type: LossType | str = LossType.SIGMOID,
    label_smoothing: float = 0.0,
) -> torch.Tensor:
    """Per-example preference loss of the margins `logits` = h (see `LossType`).

    Shape: logits (B,) -> (B,).
    """
    loss_type = LossType(loss_type)
    eps = label_smoothing
    if loss_type is LossType.SIGMOID:
        return -(1 - eps) * F.logsigmoid(beta * logits) - eps * F.logsigmoid(-beta * logits)
    if loss_type is LossType.IPO:
        return (logits - 1 / (2 * beta)) ** 2
    if loss_type is LossType.HINGE:
        return torch.relu(1 - beta * logits)
    if not 0 <= eps < 0.5:
        raise ValueError(f"robust DPO needs 0 <= label_smoothing < 0.5, got {eps}")
    return (-(1 - eps) * F.logsigmoid(beta * logits) + eps * F.logsigmoid(-beta * logits)) / (1 - 2 * eps)


def localized_dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    chosen_mask: torch.Tensor,
    rejected_mask: torch.Tensor,
    *,
    beta: float = 0.1,
    loss_type: LossType | str = LossType.SIGMOID,
    label_smoothing: float = 0.0,
    length_normalize: bool = False,
) -> PreferenceLossOutput:
    """DPO loss restricted to the scored spans of each side.

    With log-probs summed over each side's span (divided by the span length if `length_normalize`),
    h = (π_chosen - ref_chosen) - (π_rejected - ref_rejected), the DPO margin h_π^{y_w,y_l} of eq. 7, and
    the loss is `preference_losses(h)`. With masks covering the whole completion this is standard DPO.
    An empty span sums to 0; a row with both spans empty raises `ValueError` naming the row.

    Shape: *_chosen_logps (B, Tc), *_rejected_logps (B, Tr), chosen_mask (B, Tc) bool,
    rejected_mask (B, Tr) bool; Tc and Tr may differ.
    """
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
    chosen_logratio = masked_sum(policy_chosen_logps - ref_chosen_logps, chosen_mask)  # (B,)
    rejected_logratio = masked_sum(policy_rejected_logps - ref_rejected_logps, rejected_mask)  # (B,)
    if length_normalize:
        chosen_logratio = chosen_logratio / chosen_mask.sum(-1).clamp(min=1)
        rejected_logratio = rejected_logratio / rejected_mask.sum(-1).clamp(min=1)
    margins = chosen_logratio - rejected_logratio  # (B,) h
    losses = preference_losses(margins, beta=beta, loss_type=loss_type, label_smoothing=label_smoothing)
    return PreferenceLossOutput(
        loss=losses.mean(),
        losses=losses,
        chosen_rewards=(beta * chosen_logratio).detach(),
        rejected_rewards=(beta * rejected_logratio).detach(),
    )


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
