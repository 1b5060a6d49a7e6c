"""TRL integration: `LocalizedDPOTrainer`, a TRL 1.16 `DPOTrainer` whose loss scores only each row's span.

TRL's loss (`DPOTrainer._compute_loss`) sums per-token log-probs where the collator's `completion_mask` is 1
(labels elsewhere are -100, whose log-probs the fused LM head sets to 0). Replacing that mask with the span
mask therefore turns every TRL loss into its span-localized form, with TRL's own forward, reference handling
(separate model, PEFT adapter switched off, `precompute_ref_log_probs`) and metrics.

Where the spans come from:

- Steers (`list[Steer]`, a steer file path, or a `datasets.Dataset` with a `prefix` column) are tokenized by
  `localdpo.tokenize_steer`, and its ids become TRL's `prompt_ids`/`chosen_ids`/`rejected_ids`: the model is
  trained on exactly the tokens and spans localdpo's own trainer uses. TRL's tokenization would be wrong for
  steers: it appends EOS to both sides, so a partial correction (the model is meant to resume after it) would
  be scored as ending the answer.
- TRL preference rows (`prompt`/`chosen`/`rejected`, plain or conversational) are tokenized by TRL itself;
  the span is then found by `localdpo.divergent_span` on TRL's own `prompt_ids + chosen_ids` and
  `prompt_ids + rejected_ids`, so it is aligned to the ids TRL trains on.

Span columns (`SPAN_COLUMNS`, positions in `prompt_ids + side_ids`, half-open) are added by a `map` whose
fingerprint includes the span rule, so TRL's reference log-prob cache (keyed by the prepared dataset's
fingerprint and the model hash) never returns values computed under another span rule.

Loss types: `trl_loss_type` maps localdpo's `(LossType, length_normalize)` to TRL's `DPOConfig.loss_type`.
TRL's `ipo` always divides each side's log-ratio by its number of scored tokens (localdpo's
`length_normalize=True`); TRL's `sigmoid` ignores `label_smoothing` (localdpo's conservative DPO has no TRL
counterpart), so that combination is refused rather than silently changed. `dpop`, `cal_dpo` and
`unlikelihood`, which TRL 1.16 lacks, are accepted in `loss_type` too (alone or in a list with TRL's types): a
loss naming one of them is computed by `localdpo.localized_dpo_loss` on TRL's own forward and reference
values; every other loss is TRL's own code on the span masks. A list of reference-free terms only
(`["sft", "unlikelihood"]`) skips the per-step reference forward (TRL still builds its reference model).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from localdpo.integrations.compat import check_versions

check_versions(("trl", "transformers"), integration="localdpo.integrations.trl")

from datasets import Dataset, IterableDataset  # noqa: E402
from datasets.fingerprint import Hasher  # noqa: E402
from trl import DPOConfig, DPOTrainer  # noqa: E402
from trl.trainer.dpo_trainer import DataCollatorForPreference  # noqa: E402
from trl.trainer.utils import pad  # noqa: E402

from localdpo.losses import LossSpec, LossType, loss_combination, masked_sum  # noqa: E402
from localdpo.steers.steer import STEER_FIELDS, Steer, load_steers, steer_from_row  # noqa: E402
from localdpo.steers.tokenization import (  # noqa: E402
    SPAN_RULE_VERSION,
    SpanMode,
    TokenizedSteer,
    divergent_span,
    tokenize_steer,
)

CHOSEN_SPAN_START = "localdpo_chosen_span_start"
CHOSEN_SPAN_END = "localdpo_chosen_span_end"
REJECTED_SPAN_START = "localdpo_rejected_span_start"
REJECTED_SPAN_END = "localdpo_rejected_span_end"
SPAN_COLUMNS = (CHOSEN_SPAN_START, CHOSEN_SPAN_END, REJECTED_SPAN_START, REJECTED_SPAN_END)
"""int columns: the scored half-open range of each side, as positions in `prompt_ids + {side}_ids`."""
SPAN_MODE_COLUMN = "localdpo_span_mode"
"""str column: the span rule the span columns were computed with."""
STEER_ID_COLUMN = "localdpo_steer_id"

_TRL_LOSS_TYPES = {
    (LossType.SIGMOID, False): "sigmoid",
    (LossType.SIGMOID, True): "sigmoid_norm",
    (LossType.IPO, True): "ipo",
    (LossType.HINGE, False): "hinge",
    (LossType.ROBUST, False): "robust",
    (LossType.APO_ZERO, False): "apo_zero",
    (LossType.APO_DOWN, False): "apo_down",
    (LossType.SFT, False): "sft",
    (LossType.SFT, True): "sft",  # a token mean of the chosen span's NLL, normalized either way
}
"""TRL 1.16's own losses, computed by `DPOTrainer._compute_loss` on the span masks."""
_LOCALIZED_LOSS_TYPES = {
    (LossType.DPOP, False): "dpop",
    (LossType.CAL_DPO, False): "cal_dpo",
    (LossType.UNLIKELIHOOD, False): "unlikelihood",
}
"""Losses TRL 1.16 lacks: `LocalizedDPOTrainer` computes them (and any list naming them) with `localized_dpo_loss`."""


def trl_loss_type(loss_type: LossType | str, length_normalize: bool = False) -> str:
    """`DPOConfig.loss_type` name under which `LocalizedDPOTrainer` computes localdpo's
    `localized_dpo_loss(loss_type, length_normalize)`.

    TRL's `ipo` averages log-ratios over the scored tokens, so localdpo's IPO maps only with
    `length_normalize=True`; TRL has no length-normalized hinge, robust or APO loss. `dpop`, `cal_dpo` and
    `unlikelihood` are not TRL names: only `LocalizedDPOTrainer` accepts them.
    """
    loss_type = LossType(loss_type)
    key = (loss_type, bool(length_normalize))
    name = _TRL_LOSS_TYPES.get(key) or _LOCALIZED_LOSS_TYPES.get(key)
    if name is None:
        supported = ", ".join(
            f"({t.value}, length_normalize={n})" for t, n in (*_TRL_LOSS_TYPES, *_LOCALIZED_LOSS_TYPES)
        )
        raise ValueError(
            f"TRL 1.16 has no loss equal to localdpo's {loss_type.value} with length_normalize={length_normalize}; "
            f"supported: {supported}"
        )
    return name


def localized_loss_types(trl_names: Sequence[str]) -> list[LossType] | None:
    """localdpo's `LossType`s of a `DPOConfig.loss_type` list naming a type TRL lacks (`dpop`, `cal_dpo`,
    `unlikelihood`); None for TRL's own losses.

    Such a list is computed by `localized_dpo_loss` with `length_normalize=False`, so each of its names must be
    one of localdpo's types unnormalized (`sigmoid_norm` and TRL's length-normalized `ipo` are refused, and so
    are TRL losses localdpo does not have).
    """
    if not any(name in _LOCALIZED_LOSS_TYPES.values() for name in trl_names):
        return None
    by_name = {name: t for (t, normalized), name in (*_TRL_LOSS_TYPES.items(), *_LOCALIZED_LOSS_TYPES.items())
               if not normalized}  # fmt: skip
    unsupported = [name for name in trl_names if name not in by_name]
    if unsupported:
        raise ValueError(
            f"loss_type {list(trl_names)}: {unsupported} cannot be combined with dpop, cal_dpo or unlikelihood "
            f"(such a list is computed by localdpo's localized_dpo_loss on summed span log-ratios; it combines "
            f"{sorted(by_name)})"
        )
    return [by_name[name] for name in trl_names]


def span_sums_as_token_logps(sums: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """Per-token values whose masked sum is `sums`: each row's sum on its first masked position, 0 elsewhere.

    TRL keeps reference log-probs as span sums (the precomputed column, `compute_ref_log_probs`);
    `localized_dpo_loss` takes per-token values and only ever sums them over the span. A row with an empty
    mask keeps nothing (its TRL sum is 0: the fused LM head gives 0 off the labels).

    Shape: sums (B,), mask (B, T) bool -> (B, T).
    """
    first = mask.int().argmax(-1)  # (B,) first masked position (0 for an empty row)
    values = torch.zeros(mask.shape, dtype=sums.dtype, device=sums.device)  # (B, T)
    values[torch.arange(mask.shape[0], device=mask.device), first] = sums
    return torch.where(mask, values, torch.zeros_like(values))  # (B, T)


def _span_of(mask: torch.Tensor, steer_id: str | None, side: str) -> tuple[int, int]:
    positions = mask.nonzero().flatten()
    if positions.numel() == 0:
        return 0, 0
    start, end = int(positions[0]), int(positions[-1]) + 1
    if end - start != positions.numel():
        raise ValueError(f"steer {steer_id!r}: the {side} scored tokens are not one contiguous span")
    return start, end


def trl_row_from_tokenized(example: TokenizedSteer) -> dict[str, Any]:
    """TRL's tokenized columns (`prompt_ids`, `chosen_ids`, `rejected_ids`) and the span columns of one steer.

    `prompt_ids` is the shared head of both sides up to the first assistant token or the first differing
    token, whichever comes first, so `prompt_ids + chosen_ids == example.chosen_ids` (same for rejected).
    """
    chosen, rejected = example.chosen_ids.tolist(), example.rejected_ids.tolist()
    cut = min(example.chosen_assistant_start, example.rejected_assistant_start, example.divergence)
    chosen_start, chosen_end = _span_of(example.chosen_mask, example.steer_id, "chosen")
    rejected_start, rejected_end = _span_of(example.rejected_mask, example.steer_id, "rejected")
    return {
        "prompt_ids": chosen[:cut],
        "chosen_ids": chosen[cut:],
        "rejected_ids": rejected[cut:],
        CHOSEN_SPAN_START: chosen_start,
        CHOSEN_SPAN_END: chosen_end,
        REJECTED_SPAN_START: rejected_start,
        REJECTED_SPAN_END: rejected_end,
        SPAN_MODE_COLUMN: example.span_mode.value,
        STEER_ID_COLUMN: example.steer_id,
    }


def steers_to_trl_dataset(
    steers: Sequence[Steer],
    tokenizer,
    *,
    span_mode: SpanMode | str = SpanMode.DIVERGENT,
    max_length: int | None = None,
) -> Dataset:
    """A tokenized TRL dataset of steers: localdpo's token ids and spans in TRL's column layout.

    Sides longer than `max_length` lose unscored tail tokens only; a scored token past it raises
    `SteerTooLongError` (see `localdpo.steers.tokenization`).
    """
    if not steers:
        raise ValueError("no steers to train on")
    rows = [
        trl_row_from_tokenized(tokenize_steer(s, tokenizer, max_length=max_length, span_mode=span_mode))
        for s in steers
    ]
    return Dataset.from_dict({key: [row[key] for row in rows] for key in rows[0]})


def _steers_of_dataset(dataset: Dataset) -> list[Steer]:
    """Steers from the rows of a `datasets.Dataset` with steer columns (`prefix` among them)."""
    steers = []
    for index, row in enumerate(dataset):
        values = {k: row[k] for k in STEER_FIELDS if k in row and row[k] is not None}
        try:
            steers.append(steer_from_row(values, default_id=f"row{index}"))
        except ValueError as error:
            raise ValueError(f"dataset row {index}: {error}") from None
    return steers


def _is_span_tokenized(dataset) -> bool:
    names = dataset.column_names if isinstance(dataset, Dataset) else list(next(iter(dataset)).keys())
    return names is not None and all(c in names for c in (*SPAN_COLUMNS, "prompt_ids"))


def _span_columns(example: dict[str, Any], index: int, span_mode: str) -> dict[str, int]:
    """Span columns of one TRL-tokenized row, found on TRL's own ids."""
    prompt = list(example["prompt_ids"])
    chosen, rejected = prompt + list(example["chosen_ids"]), prompt + list(example["rejected_ids"])
    if span_mode == SpanMode.COMPLETION.value:
        spans = (len(prompt), len(chosen), len(prompt), len(rejected))  # TRL's own completion mask
    else:
        try:
            spans = divergent_span(chosen, rejected, resync=span_mode == SpanMode.DIVERGENT.value)
        except ValueError as error:
            raise ValueError(f"preference row {index}: {error}") from None
    return dict(zip(SPAN_COLUMNS, spans), **{SPAN_MODE_COLUMN: span_mode})


def add_span_columns(
    dataset: Dataset | IterableDataset, span_mode: SpanMode | str, *, num_proc: int | None = None
):
    """`dataset` (TRL-tokenized) with `SPAN_COLUMNS` found by `divergent_span` on TRL's ids.

    The map's fingerprint hashes the parent fingerprint with the span rule, so each rule has its own cache
    entry, and so does TRL's reference log-prob cache built on top of it.
    """
    span_mode = SpanMode(span_mode)
    kwargs: dict[str, Any] = {}
    if isinstance(dataset, Dataset):
        kwargs = {
            "num_proc": num_proc,
            "desc": f"localdpo: {span_mode.value} spans",
            "new_fingerprint": Hasher.hash((dataset._fingerprint, SPAN_RULE_VERSION, span_mode.value)),
        }
    return dataset.map(_span_columns, with_indices=True, fn_kwargs={"span_mode": span_mode.value}, **kwargs)


def _span_masks(examples: list[dict[str, Any]], side: str) -> list[list[int]]:
    start_key, end_key = (
        (CHOSEN_SPAN_START, CHOSEN_SPAN_END) if side == "chosen" else (REJECTED_SPAN_START, REJECTED_SPAN_END)
    )
    masks = []
    for example in examples:
        if start_key not in example:
            raise KeyError(
                f"batch example has no '{start_key}' column: build the dataset with LocalizedDPOTrainer (or "
                "add_span_columns) and keep its span columns (they are in the trainer's signature columns)"
            )
        length = len(example["prompt_ids"]) + len(example[f"{side}_ids"])
        start, end = int(example[start_key]), int(example[end_key])
        if not 0 <= start <= end <= length:
            raise ValueError(f"{side} span [{start}, {end}) lies outside the {length}-token sequence")
        masks.append([0] * start + [1] * (end - start) + [0] * (length - end))
    return masks


@dataclass
class SpanDataCollatorForPreference(DataCollatorForPreference):
    """TRL's preference collator with `completion_mask` replaced by the span mask of each side.

    Truncation and padding follow the parent exactly; a truncation that would cut a scored token raises
    (nothing is dropped silently).
    """

    def torch_call(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        output = super().torch_call(examples)
        masks = _span_masks(examples, "chosen") + _span_masks(examples, "rejected")
        if self.max_length is not None:
            sl = (
                slice(None, self.max_length)
                if self.truncation_mode == "keep_start"
                else slice(-self.max_length, None)
            )
            cut = [m[sl] for m in masks]
            for row, (full, kept) in enumerate(zip(masks, cut)):
                if sum(kept) != sum(full):
                    side = "chosen" if row < len(examples) else "rejected"
                    raise ValueError(
                        f"max_length={self.max_length} ({self.truncation_mode}) cuts scored {side} tokens of batch row "
                        f"{row % len(examples)}; raise max_length"
                    )
            masks = cut
        completion_mask = pad(
            [torch.tensor(m, dtype=torch.long) for m in masks],
            padding_value=0,
            padding_side="right",
            pad_to_multiple_of=self.pad_to_multiple_of,
        )  # (2B, T)
        if completion_mask.shape != output["input_ids"].shape:
            raise AssertionError(
                f"span mask {tuple(completion_mask.shape)} != input_ids {tuple(output['input_ids'].shape)}"
            )
        output["completion_mask"] = completion_mask
        return output


@dataclass
class LocalizedDPOConfig(DPOConfig):
    """`DPOConfig` plus the parameters of the losses `LocalizedDPOTrainer` adds to TRL's."""

    dpop_lambda: float = field(
        default=50.0,
        metadata={
            "help": "λ of DPO-Positive (`loss_type='dpop'`, Pal et al. 2024): weight of the penalty "
            "max(0, -Δc) when the chosen span's log-ratio falls below 0 (default 50, as `localized_dpo_loss`)."
        },
    )


def _check_args(args: DPOConfig, span_mode: SpanMode) -> None:
    types = localized_loss_types(args.loss_type)
    if types is not None:
        loss_combination(types, args.loss_weights)  # a bad combination fails here, not at the first step
        if LossType.DPOP in types and not hasattr(args, "dpop_lambda"):
            raise ValueError("loss_type 'dpop' needs its λ: pass a LocalizedDPOConfig (field dpop_lambda)")
        if args.use_weighting:
            raise ValueError("use_weighting (WPO) is not implemented with dpop, cal_dpo or unlikelihood: unset it")
        if args.ld_alpha is not None:
            raise ValueError("ld_alpha is not implemented for losses with dpop, cal_dpo or unlikelihood: unset it")
    if args.label_smoothing and "sigmoid" in args.loss_type:
        raise ValueError(
            "TRL 1.16's 'sigmoid' loss ignores label_smoothing, so localdpo's conservative DPO (sigmoid with "
            "label_smoothing > 0) has no TRL counterpart: use loss_type='robust', or localdpo's own trainer"
        )
    if args.ld_alpha is not None and span_mode is not SpanMode.COMPLETION:
        raise ValueError(
            "ld_alpha reweights tokens past the shorter completion and is not defined on spans: unset it"
        )


class LocalizedDPOTrainer(DPOTrainer):
    """TRL `DPOTrainer` whose loss scores only each row's span (`span_mode`).

    `train_dataset` / `eval_dataset`: a list of `Steer`, a steer JSONL path, a `datasets.Dataset` of steer
    rows (with a `prefix` column), or TRL preference data (`prompt`/`chosen`/`rejected`). Steers need
    `processing_class` (the tokenizer). With `span_mode="completion"` on TRL preference data it trains exactly
    as `DPOTrainer`. `args.loss_type` may also name `dpop`, `cal_dpo` and `unlikelihood` (`dpop_lambda`:
    `LocalizedDPOConfig`). Every other argument is `DPOTrainer`'s.
    """

    def __init__(
        self,
        model,
        ref_model=None,
        args: DPOConfig | None = None,
        data_collator=None,
        train_dataset=None,
        eval_dataset=None,
        processing_class=None,
        *,
        span_mode: SpanMode | str = SpanMode.DIVERGENT,
        **kwargs,
    ):
        self.span_mode = SpanMode(span_mode)
        if args is None:
            args = LocalizedDPOConfig(output_dir="localdpo-trl")
        _check_args(args, self.span_mode)
        # localdpo's types of a loss TRL cannot compute (a list naming dpop, cal_dpo or unlikelihood), else None
        self.localized_loss_types = localized_loss_types(args.loss_type)
        self.loss_spec = None
        """The loss localdpo computes in TRL's place (`localdpo.losses.LossSpec`), or None when TRL computes it."""
        if self.localized_loss_types is not None:
            self.loss_spec = LossSpec.of(
                self.localized_loss_types,
                args.loss_weights,
                beta=args.beta,
                label_smoothing=args.label_smoothing,
                dpop_lambda=getattr(args, "dpop_lambda", 0.0),  # unused without dpop (_check_args)
            )
        train_dataset = self._steer_dataset(train_dataset, processing_class, args)
        if isinstance(eval_dataset, dict):
            eval_dataset = {
                k: self._steer_dataset(v, processing_class, args) for k, v in eval_dataset.items()
            }
        else:
            eval_dataset = self._steer_dataset(eval_dataset, processing_class, args)
        if data_collator is None and processing_class is not None:
            tokenizer = getattr(processing_class, "tokenizer", processing_class)
            pad_token = args.pad_token or tokenizer.pad_token or tokenizer.eos_token
            data_collator = SpanDataCollatorForPreference(
                pad_token_id=tokenizer.convert_tokens_to_ids(pad_token),
                max_length=args.max_length,
                truncation_mode=args.truncation_mode,
                pad_to_multiple_of=args.pad_to_multiple_of,
            )
        if data_collator is not None and not isinstance(data_collator, SpanDataCollatorForPreference):
            raise TypeError(
                "LocalizedDPOTrainer needs a SpanDataCollatorForPreference (it writes the span mask)"
            )
        if data_collator is None:
            raise ValueError(
                "LocalizedDPOTrainer needs processing_class (the tokenizer) to build its collator"
            )
        super().__init__(
            model,
            ref_model=ref_model,
            args=args,
            data_collator=data_collator,
            train_dataset=train_dataset,
            eval_dataset=eval_dataset,
            processing_class=processing_class,
            **kwargs,
        )

    def _steer_dataset(self, dataset, processing_class, args: DPOConfig):
        """Steers (list, file path, or Dataset with a `prefix` column) as a tokenized span dataset; others unchanged."""
        if isinstance(dataset, (str, os.PathLike)):
            dataset = load_steers(Path(dataset))
        elif isinstance(dataset, Dataset) and "prefix" in dataset.column_names:
            dataset = _steers_of_dataset(dataset)
        if isinstance(dataset, list) and (not dataset or isinstance(dataset[0], Steer)):
            if processing_class is None:
                raise ValueError(
                    "training on steers needs processing_class (the tokenizer used to tokenize them)"
                )
            tokenizer = getattr(processing_class, "tokenizer", processing_class)
            return steers_to_trl_dataset(
                dataset, tokenizer, span_mode=self.span_mode, max_length=args.max_length
            )
        return dataset

    def _prepare_dataset(self, dataset, processing_class, args, dataset_name):
        dataset = self._steer_dataset(dataset, processing_class, args)
        if _is_span_tokenized(dataset):
            modes = set(dataset.unique(SPAN_MODE_COLUMN)) if isinstance(dataset, Dataset) else None
            if modes is not None and modes != {self.span_mode.value}:
                raise ValueError(
                    f"{dataset_name} dataset has spans computed with span_mode {sorted(modes)}, but the trainer "
                    f"uses {self.span_mode.value!r}: rebuild it from the steers"
                )
            return dataset
        before = len(dataset) if isinstance(dataset, Dataset) else None
        dataset = super()._prepare_dataset(dataset, processing_class, args, dataset_name)
        if before is not None and len(dataset) != before:
            import warnings

            warnings.warn(
                f"TRL dropped {before - len(dataset)} of {before} {dataset_name} rows whose prompt alone fills "
                f"max_length={args.max_length}",
                stacklevel=2,
            )
        return add_span_columns(dataset, self.span_mode, num_proc=args.dataset_num_proc)

    def _set_signature_columns_if_needed(self):
        super()._set_signature_columns_if_needed()
        for column in SPAN_COLUMNS:
            if column not in self._signature_columns:
                self._signature_columns.append(column)

    def _compute_loss(self, model, inputs, return_outputs):
        if self.localized_loss_types is None:
            return super()._compute_loss(model, inputs, return_outputs)
        return self._compute_localized_loss(model, inputs, return_outputs)

    def _compute_localized_loss(self, model, inputs, return_outputs):
        """The loss of a `loss_type` list naming dpop, cal_dpo or unlikelihood: TRL's policy forward and
        reference values (no reference forward for reference-free terms only), `self.loss_spec` on the
        span masks, and TRL's reward and log-prob metrics."""
        mode = "train" if self.model.training else "eval"
        non_model_keys = {"completion_mask", "ref_chosen_logps", "ref_rejected_logps"}
        model_kwargs = {k: v for k, v in inputs.items() if k not in non_model_keys}
        model_kwargs["use_cache"] = False
        if self.aux_loss_enabled:
            model_kwargs["output_router_logits"] = True
        completion_mask = inputs["completion_mask"]  # (2B, T): the span masks, chosen rows then rejected
        labels = inputs["input_ids"].masked_fill(completion_mask == 0, -100)
        outputs = model(**model_kwargs, labels=labels, fused_lm_head=True)
        span_mask = completion_mask[:, 1:].bool()  # (2B, T-1), aligned with the log-probs of tokens 1..T-1
        # (2B, T-1): prompt-learning PEFT prepends virtual tokens to the outputs; keep the real tokens' positions
        per_token_logps = outputs.log_probs[:, -span_mask.shape[1] :]
        chosen_mask, rejected_mask = span_mask.chunk(2)  # (B, T-1) each
        policy_chosen, policy_rejected = per_token_logps.chunk(2)  # (B, T-1) each
        ref_chosen = ref_rejected = None  # reference-free terms only: rewards against a reference of 0
        if self.precompute_ref_logps:
            ref_chosen, ref_rejected = inputs["ref_chosen_logps"], inputs["ref_rejected_logps"]  # (B,) each
        elif self.loss_spec.needs_reference:
            # TRL's reference: ref_model, or the policy with its PEFT adapter switched off (or its "ref" adapter)
            reference = self.ref_model if self.ref_model is not None else self.model
            ref_chosen, ref_rejected = self.compute_ref_log_probs(reference, inputs)  # (B,) each
        if ref_chosen is not None:
            ref_chosen = span_sums_as_token_logps(ref_chosen.to(policy_chosen.dtype), chosen_mask)  # (B, T-1)
            ref_rejected = span_sums_as_token_logps(ref_rejected.to(policy_rejected.dtype), rejected_mask)
        out = self.loss_spec.loss(policy_chosen, policy_rejected, ref_chosen, ref_rejected, chosen_mask, rejected_mask)
        loss = out.loss
        if self.aux_loss_enabled:
            loss = loss + self.router_aux_loss_coef * outputs.aux_loss
            aux_loss = self.accelerator.gather_for_metrics(outputs.aux_loss).mean().item()
            self._metrics[mode]["aux_loss"].append(aux_loss)
        metrics = {
            "rewards/chosen": out.chosen_rewards,
            "rewards/rejected": out.rejected_rewards,
            "rewards/accuracies": (out.margins > 0).float(),
            "rewards/margins": out.margins,
            "logps/chosen": masked_sum(policy_chosen.detach(), chosen_mask),
            "logps/rejected": masked_sum(policy_rejected.detach(), rejected_mask),
            **{f"loss_{name}": value for name, value in out.terms.items()},
        }
        for key, value in metrics.items():
            self._metrics[mode][key].append(self.accelerator.gather(value).mean().item())
        if return_outputs:  # TRL's deprecated path: logits for compute_metrics need a plain forward
            with torch.no_grad():
                outputs = model(**model_kwargs)
        return (loss, outputs) if return_outputs else loss
