"""Hugging Face `transformers.Trainer` integration: the localized DPO loss as a `compute_loss`.

Batches are `localdpo.steers.batches.collate_pairs` batches (built by `SteerPairCollator` from a `SteerPairDataset`),
optionally carrying the reference's per-token log-probs under `REF_CHOSEN_LOGPS` / `REF_REJECTED_LOGPS`
(filled from a `localdpo.reference.cache.ReferenceCache`). The reference is, in order: those batch tensors, an
explicit `ref_model`, or the policy with its PEFT adapter disabled.

Dataset items are `IndexedSteer` objects, not dicts, so `Trainer`'s `remove_unused_columns` (which only
filters dict items) can never strip them; the collator, not the model signature, decides what a batch holds.
"""

from __future__ import annotations

import contextlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch

from localdpo.integrations.compat import check_versions

check_versions(("transformers",), integration="localdpo.integrations.hf")

from transformers import Trainer  # noqa: E402

from localdpo.forward import pair_logps  # noqa: E402
from localdpo.losses import LossSpec, LossType, PreferenceLossOutput  # noqa: E402
from localdpo.reference.cache import padded_pair_values  # noqa: E402
from localdpo.steers.batches import (  # noqa: E402
    CHOSEN_INPUT_IDS,
    CHOSEN_LOSS_MASK,
    REJECTED_INPUT_IDS,
    REJECTED_LOSS_MASK,
    collate_pairs,
    trim_to_scored,
)
from localdpo.steers.steer import Steer  # noqa: E402
from localdpo.steers.tokenization import SpanMode, TokenizedSteer, tokenize_steers  # noqa: E402

REF_CHOSEN_LOGPS = "ref_chosen_token_logps"
"""(B, Tc) float32: the reference's per-token log-probs of the chosen side (0 on padding)."""
REF_REJECTED_LOGPS = "ref_rejected_token_logps"
"""(B, Tr) float32: the reference's per-token log-probs of the rejected side (0 on padding)."""


@dataclass
class LocalizedLossConfig:
    """The loss options of the Trainer integration, as a person writes them; the trainer computes the frozen
    `localdpo.losses.LossSpec` they make (`spec()`)."""

    beta: float = 0.1
    """β: scale of the log-ratio margin (and of the logged rewards)."""
    loss_type: LossType | str | list[LossType | str] = LossType.SIGMOID
    """One `localdpo.LossType` (sigmoid, ipo, hinge, robust, apo_zero, apo_down, dpop, cal_dpo) or a list of
    terms summed with `loss_weights`, e.g. `["sigmoid", "sft"]` (`sft`: NLL of the chosen span, a token mean
    over the micro-batch) or `["sft", "unlikelihood"]` (`unlikelihood`: -log(1 - p) of the rejected span's
    tokens, a token mean over the micro-batch; with no preference term no reference is needed)."""
    loss_weights: list[float] | None = None
    """Weight of each `loss_type` term, same length; None = 1 each."""
    label_smoothing: float = 0.0
    """ε of conservative (sigmoid) or robust DPO."""
    length_normalize: bool = False
    """Divide each side's span log-ratio by its number of scored tokens."""
    dpop_lambda: float = 50.0
    """λ of DPO-Positive (`dpop`): weight of the penalty when the chosen span falls below the reference."""

    def spec(self) -> LossSpec:
        """The frozen loss these options describe; `ValueError` naming a bad type or combination."""
        return LossSpec.of(
            self.loss_type,
            self.loss_weights,
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            length_normalize=self.length_normalize,
            dpop_lambda=self.dpop_lambda,
        )


@dataclass(frozen=True)
class IndexedSteer:
    """One dataset item: a tokenized steer and its position in the dataset."""

    index: int
    example: TokenizedSteer


class SteerPairDataset(torch.utils.data.Dataset):
    """Tokenized steers as a map-style dataset of `IndexedSteer` (tokenized once, at construction).

    With `trim` (default), each side is cut after its last scored token: lossless under causal attention,
    and no forward is spent on the rejected run-on past the edit.
    """

    def __init__(
        self,
        steers: Sequence[Steer],
        tokenizer,
        *,
        span_mode: SpanMode | str = SpanMode.DIVERGENT,
        max_length: int | None = None,
        trim: bool = True,
    ):
        examples, _ = tokenize_steers(steers, tokenizer, max_length=max_length, span_mode=span_mode)
        self.examples = [trim_to_scored(e) for e in examples] if trim else examples

    def __len__(self) -> int:
        return len(self.examples)

    def __getitem__(self, index: int) -> IndexedSteer:
        return IndexedSteer(index=index, example=self.examples[index])


@dataclass
class SteerPairCollator:
    """`collate_pairs` batch of `IndexedSteer` items, plus reference per-token log-probs from `reference_cache`.

    `reference_cache` is anything with `.get(examples) -> list[(chosen (Tc,), rejected (Tr,))]` (a
    `localdpo.reference.cache.ReferenceCache`); build it before training (`cache.precompute(dataset.examples)`)
    and keep `dataloader_num_workers=0` when misses may still be computed, since they run a forward.
    """

    pad_token_id: int
    reference_cache: Any = None
    pad_to_multiple_of: int | None = None

    def __call__(self, items: Sequence[IndexedSteer]) -> dict[str, torch.Tensor]:
        if not items or not all(isinstance(item, IndexedSteer) for item in items):
            raise TypeError("SteerPairCollator collates IndexedSteer items (from SteerPairDataset)")
        examples = [item.example for item in items]
        batch = collate_pairs(
            examples,
            pad_token_id=self.pad_token_id,
            indices=[item.index for item in items],
            pad_to_multiple_of=self.pad_to_multiple_of,
        )
        if self.reference_cache is not None:
            batch[REF_CHOSEN_LOGPS], batch[REF_REJECTED_LOGPS] = padded_pair_values(  # (B, Tc), (B, Tr)
                self.reference_cache.get(examples),
                examples,
                lengths=([e.chosen_ids.numel() for e in examples], [e.rejected_ids.numel() for e in examples]),
                widths=(batch[CHOSEN_INPUT_IDS].shape[1], batch[REJECTED_INPUT_IDS].shape[1]),
            )
        return batch


def stacked_pair_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of both sides in one forward (chosen and rejected rows stacked): the package's one
    plain forward, `localdpo.forward.pair_logps`.

    Shape: batch chosen (B, Tc), rejected (B, Tr) -> ((B, Tc), (B, Tr)) float32.
    """
    return pair_logps(model, batch)


def _is_peft(model) -> bool:
    return hasattr(model, "peft_config") and hasattr(model, "disable_adapter")


def localized_loss_from_batch(
    model,
    batch: dict[str, torch.Tensor],
    spec: LossSpec | LocalizedLossConfig,
    *,
    ref_model=None,
) -> PreferenceLossOutput:
    """The loss `spec` of a `collate_pairs` batch: policy forward, reference, `LossSpec.loss`.

    The reference comes from the batch's `REF_*_LOGPS` tensors when present, else from `ref_model`, else
    from `model` with its PEFT adapter disabled; a plain model without any of them raises, unless the loss
    reads no reference (`sft` and `unlikelihood` terms only: no reference forward, rewards against 0).
    """
    spec = spec.spec() if isinstance(spec, LocalizedLossConfig) else spec
    policy_chosen, policy_rejected = stacked_pair_logps(model, batch)  # (B, Tc), (B, Tr)
    ref_chosen = ref_rejected = None
    if REF_CHOSEN_LOGPS in batch and REF_REJECTED_LOGPS in batch:
        ref_chosen, ref_rejected = batch[REF_CHOSEN_LOGPS], batch[REF_REJECTED_LOGPS]
    elif spec.needs_reference:
        inner = getattr(model, "module", model)  # DDP wraps the PEFT model
        if ref_model is not None:
            reference, context = ref_model, contextlib.nullcontext()
        elif _is_peft(inner):
            reference, context = model, inner.disable_adapter()
        else:
            raise ValueError(
                "no reference: pass ref_model, a PEFT policy (its adapter is disabled for the reference), or a "
                "reference cache to the collator"
            )
        with torch.no_grad(), context:
            ref_chosen, ref_rejected = stacked_pair_logps(reference, batch)
    return spec.loss(
        policy_chosen, policy_rejected, ref_chosen, ref_rejected, batch[CHOSEN_LOSS_MASK], batch[REJECTED_LOSS_MASK]
    )


class LocalizedDPOLossMixin:
    """Mix into a `transformers.Trainer` subclass: `compute_loss` is the localized DPO loss of the batch.

    Before training, call `self.init_localized_loss(config, ref_model)`. The loss is a per-example mean, so
    `Trainer` divides it by the gradient-accumulation steps itself (`loss_is_scaled_for_ga = False`).
    Logged metrics: `rewards/chosen`, `rewards/rejected`, `rewards/margins`, `rewards/accuracies`, and the
    unweighted batch mean of each loss term as `loss_<type>` (e.g. `loss_sigmoid`, `loss_sft`).
    """

    loss_is_scaled_for_ga = False

    def init_localized_loss(self, config: LocalizedLossConfig | LossSpec | None = None, ref_model=None) -> None:
        self.localized_loss_config = config or LocalizedLossConfig()
        # built once, so a bad name or combination fails here (ValueError naming it), not at the first step
        self.loss_spec = (
            self.localized_loss_config.spec()
            if isinstance(self.localized_loss_config, LocalizedLossConfig)
            else self.localized_loss_config
        )
        self.ref_model = ref_model
        if ref_model is not None:
            ref_model.requires_grad_(False)
            ref_model.eval()
            self.ref_model = ref_model.to(self.args.device)
        self._localized_metrics: dict[str, dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))

    def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
        out = localized_loss_from_batch(model, inputs, self.loss_spec, ref_model=self.ref_model)
        metrics = self._localized_metrics["train" if model.training else "eval"]
        metrics["rewards/chosen"].append(out.chosen_rewards.mean().item())
        metrics["rewards/rejected"].append(out.rejected_rewards.mean().item())
        metrics["rewards/margins"].append(out.margins.mean().item())
        metrics["rewards/accuracies"].append((out.margins > 0).float().mean().item())
        for name, value in out.terms.items():
            metrics[f"loss_{name}"].append(value.item())
        return (out.loss, out) if return_outputs else out.loss

    def prediction_step(self, model, inputs, prediction_loss_only, ignore_keys=None):
        # Batches carry no `labels`, so Trainer's default would skip the loss: compute it always.
        inputs = self._prepare_inputs(inputs)
        with torch.no_grad(), self.compute_loss_context_manager():
            loss = self.compute_loss(model, inputs)
        return loss.detach(), None, None

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        mode = "eval" if any(k.startswith("eval_") for k in logs) else "train"
        metrics = self._localized_metrics[mode]
        prefix = "eval_" if mode == "eval" else ""
        logs.update({f"{prefix}{k}": sum(v) / len(v) for k, v in metrics.items() if v})
        metrics.clear()
        super().log(logs, start_time)


class LocalizedDPOLossTrainer(LocalizedDPOLossMixin, Trainer):
    """`transformers.Trainer` training on steers with the localized DPO loss.

    `train_dataset` / `eval_dataset`: `SteerPairDataset`s. `ref_model`: a frozen reference; leave it None
    for a PEFT policy (adapter disabled) or when `reference_cache` supplies the reference log-probs.
    """

    def __init__(
        self,
        model,
        args=None,
        *,
        ref_model=None,
        loss_config: LocalizedLossConfig | LossSpec | None = None,
        reference_cache=None,
        data_collator=None,
        processing_class=None,
        **kwargs,
    ):
        if data_collator is None:
            if processing_class is None:
                raise ValueError("pass processing_class (the tokenizer: its pad token) or a data_collator")
            pad_id = processing_class.pad_token_id
            pad_id = processing_class.eos_token_id if pad_id is None else pad_id
            data_collator = SteerPairCollator(pad_token_id=pad_id, reference_cache=reference_cache)
        elif reference_cache is not None:
            raise ValueError("pass reference_cache to your own data_collator, not to the trainer")
        super().__init__(
            model=model, args=args, data_collator=data_collator, processing_class=processing_class, **kwargs
        )
        self.init_localized_loss(loss_config, ref_model)
