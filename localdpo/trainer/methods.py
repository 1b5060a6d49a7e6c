"""Training methods and their losses: every method sees the same batches and differs only here.

`method_loss` is pure (tensors in, tensors out): per-token log-probs of both sides and the batch masks.

References:
  DPO: Rafailov et al. 2023, "Direct Preference Optimization", eq. 7 (via `localdpo.localized_dpo_loss`).
  RPO (DPO + NLL of the chosen side): Pang et al. 2024, "Iterative Reasoning Preference Optimization", eq. 1.
  The other preference losses (APO, DPO-Positive, Cal-DPO), the unlikelihood term and their sources:
  `localdpo.losses`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum

import torch

from localdpo.losses import LossSpec, masked_sft_loss, masked_sum
from localdpo.steers.batches import CHOSEN_ATTENTION_MASK, CHOSEN_LOSS_MASK
from localdpo.steers.tokenization import SpanMode


class Method(str, Enum):
    """What the trainer optimizes on the steers."""

    LDPO = "ldpo"
    """Localized DPO: the DPO loss on the scored spans (default: the divergent span, the edit itself)."""
    DPO = "dpo"
    """Standard DPO on the same steers: the whole assistant completion of each side is scored."""
    SFT = "sft"
    """Supervised fine-tuning on the corrected tokens only (the chosen span)."""
    SFT_FULL = "sft_full"
    """SFT on the whole chosen sequence, prompt included (the common mistake; an ablation)."""

    @property
    def is_preference(self) -> bool:
        """Whether the loss compares chosen against rejected (and so needs the rejected forward)."""
        return self in (Method.LDPO, Method.DPO)

    @property
    def needs_reference(self) -> bool:
        """Whether training needs reference log-probs (evaluation always uses them for the margins)."""
        return self.is_preference

    @property
    def default_span_mode(self) -> SpanMode:
        return {
            Method.LDPO: SpanMode.DIVERGENT,
            Method.DPO: SpanMode.COMPLETION,
            Method.SFT: SpanMode.DIVERGENT,
            Method.SFT_FULL: SpanMode.COMPLETION,
        }[self]

    @property
    def allowed_span_modes(self) -> tuple[SpanMode, ...]:
        """Span modes this method accepts; standard DPO is defined on the whole completion only."""
        if self in (Method.LDPO, Method.SFT):
            return (SpanMode.DIVERGENT, SpanMode.TO_END, SpanMode.COMPLETION)
        if self in (Method.DPO, Method.SFT_FULL):
            return (SpanMode.COMPLETION,)
        raise ValueError(f"method {self.value!r} has no span modes")

    @property
    def disables_dropout(self) -> bool:
        """Default for `model.disable_dropout`: DPO's policy/reference ratio assumes deterministic forwards."""
        return self.is_preference


def full_sequence_mask(attention_mask: torch.Tensor) -> torch.Tensor:
    """Every real token except the first (which has no prediction): the `sft_full` loss mask.

    Shape: attention_mask (B, T) -> (B, T) bool.
    """
    mask = attention_mask.bool().clone()  # (B, T)
    mask[:, 0] = False
    return mask


def sft_mask(method: Method | str, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The chosen-side tokens `method`'s NLL term reads: every token after the first (`sft_full`), else the span.

    Shape: batch chosen (B, Tc) -> (B, Tc) bool.
    """
    if Method(method) is Method.SFT_FULL:
        return full_sequence_mask(batch[CHOSEN_ATTENTION_MASK])
    return batch[CHOSEN_LOSS_MASK].bool()


@dataclass(frozen=True)
class MethodOutput:
    """A method's loss on one micro-batch and its detached metrics."""

    loss: torch.Tensor
    """() the loss to backpropagate."""
    metrics: dict[str, torch.Tensor] = field(default_factory=dict)
    """Detached (B,) or () tensors under W&B keys (`rewards/chosen`, ...), averaged by the caller."""


def span_logp_metrics(
    side: str, policy_logps: torch.Tensor, mask: torch.Tensor, ref_logps: torch.Tensor | None = None
) -> dict[str, torch.Tensor]:
    """`logps/<side>_span` (policy log-prob summed over the span, batch mean), `..._per_token` (over every
    span token of the batch) and, with reference log-probs, the same of policy minus reference (`logratios/`):
    whether a loss pushes the corrected tokens up or only the original ones down (likelihood displacement).

    Shape: policy_logps, mask, ref_logps (B, T) -> every value ().
    """
    mask = mask.bool()
    tokens = mask.sum().clamp(min=1)
    sums = masked_sum(policy_logps.detach().float(), mask)  # (B,)
    out = {f"logps/{side}_span": sums.mean(), f"logps/{side}_span_per_token": sums.sum() / tokens}
    if ref_logps is not None:
        ratios = masked_sum((policy_logps.detach() - ref_logps).float(), mask)  # (B,)
        out[f"logratios/{side}_span"] = ratios.mean()
        out[f"logratios/{side}_span_per_token"] = ratios.sum() / tokens
    return out


def method_loss(
    method: Method | str,
    spec: LossSpec | None = None,
    *,
    policy_chosen_logps: torch.Tensor,
    chosen_loss_mask: torch.Tensor,
    chosen_attention_mask: torch.Tensor,
    policy_rejected_logps: torch.Tensor | None = None,
    rejected_loss_mask: torch.Tensor | None = None,
    ref_chosen_logps: torch.Tensor | None = None,
    ref_rejected_logps: torch.Tensor | None = None,
    sft_num_tokens: float | None = None,
    unlikelihood_num_tokens: float | None = None,
) -> MethodOutput:
    """The loss of `method` on one batch and its metrics.

    Preference methods: the loss of `spec` (`LossSpec.loss`; None = `LossSpec()`, DPO's sigmoid at β 0.1) on
    the loss masks (which the tokenizer set from the span mode), its terms weighted as the spec says (its `sft`
    term is the masked NLL of the chosen span, RPO-style). `sft`: masked NLL of the chosen span. `sft_full`: NLL of every chosen token after the first,
    prompt included. The NLL is a token mean: over this batch's scored tokens, or over `sft_num_tokens` (a
    trainer with gradient accumulation passes the step's scored tokens / micro-batches, so the step's gradient
    is one token mean over the whole step); an `unlikelihood` term likewise over the rejected span's tokens,
    or `unlikelihood_num_tokens`. `train/preference_loss` is the weighted sum of the preference terms (absent
    when there is none, e.g. `[sft, unlikelihood]`).

    Shape: policy_chosen_logps, ref_chosen_logps, chosen_loss_mask, chosen_attention_mask (B, Tc);
    policy_rejected_logps, ref_rejected_logps, rejected_loss_mask (B, Tr).
    """
    method = Method(method)
    chosen_loss_mask = chosen_loss_mask.bool()
    if method is Method.SFT_FULL:
        mask = full_sequence_mask(chosen_attention_mask)  # (B, Tc)
        loss = masked_sft_loss(policy_chosen_logps, mask, num_tokens=sft_num_tokens)
        metrics = {"train/sft_loss": loss.detach(), "tokens/scored": mask.sum().float()}
        return MethodOutput(loss, metrics | span_logp_metrics("chosen", policy_chosen_logps, chosen_loss_mask))
    sft = masked_sft_loss(policy_chosen_logps, chosen_loss_mask, num_tokens=sft_num_tokens)
    if method is Method.SFT:
        metrics = {"train/sft_loss": sft.detach(), "tokens/scored": chosen_loss_mask.sum().float()}
        return MethodOutput(sft, metrics | span_logp_metrics("chosen", policy_chosen_logps, chosen_loss_mask))
    if method not in (Method.LDPO, Method.DPO):
        raise ValueError(f"method {method.value!r} has no loss")
    if (
        policy_rejected_logps is None
        or rejected_loss_mask is None
        or ref_chosen_logps is None
        or ref_rejected_logps is None
    ):
        raise ValueError(
            f"method {method.value} needs rejected log-probs, its mask and reference log-probs of both sides"
        )
    rejected_loss_mask = rejected_loss_mask.bool()
    spec = spec or LossSpec()
    out = spec.loss(
        policy_chosen_logps,
        policy_rejected_logps,
        ref_chosen_logps,
        ref_rejected_logps,
        chosen_loss_mask,
        rejected_loss_mask,
        sft_num_tokens=sft_num_tokens,
        unlikelihood_num_tokens=unlikelihood_num_tokens,
    )
    preference = [(t, w) for t, w in spec.combination if t.is_preference]
    metrics = {
        **({"train/preference_loss": sum(w * out.terms[t.value] for t, w in preference)} if preference else {}),
        "train/sft_loss": sft.detach(),
        **{f"train/loss_{name}": value for name, value in out.terms.items()},
        "rewards/chosen": out.chosen_rewards,
        "rewards/rejected": out.rejected_rewards,
        "rewards/margins": out.margins,
        "rewards/accuracies": (out.margins > 0).float(),
        "tokens/scored": (chosen_loss_mask.sum() + rejected_loss_mask.sum()).float(),
        "tokens/chosen_span": chosen_loss_mask.sum(-1).float(),
        "tokens/rejected_span": rejected_loss_mask.sum(-1).float(),
        **span_logp_metrics("chosen", policy_chosen_logps, chosen_loss_mask, ref_chosen_logps),
        **span_logp_metrics("rejected", policy_rejected_logps, rejected_loss_mask, ref_rejected_logps),
    }
    return MethodOutput(out.loss, metrics)
