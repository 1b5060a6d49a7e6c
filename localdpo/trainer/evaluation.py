"""Held-out evaluation: implicit-reward preference metrics on steers, what the model writes at each held-out
steer (`localdpo.trainer.steer_metrics`), and task accuracy by generation.

Every method is scored with the same implicit reward (DPO eq. 5 up to the partition term):
r(y) = β · Σ_{t in span} (log π(y_t) − log π_ref(y_t)) over the `eval.span_mode` span of each side, so the
numbers compare across methods, SFT included.
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import AbstractContextManager, nullcontext
from typing import NamedTuple

import torch

from localdpo.forward import pair_logps
from localdpo.losses import localized_dpo_loss, masked_sum
from localdpo.steers.batches import CHOSEN_LOSS_MASK, REJECTED_LOSS_MASK, collate_pairs, trim_to_scored
from localdpo.steers.tokenization import TokenizedSteer
from localdpo.trainer.steer_metrics import SteerProbe, aggregate_steer_items, steer_items


class EvaluationDue(NamedTuple):
    """Whether a step evaluates, and whether that evaluation includes the task evaluation."""

    evaluate: bool
    task: bool


def evaluation_due(eval_config, step: int, *, final: bool = False) -> EvaluationDue:
    """The one schedule of evaluations (`EvalConfig`): every `every` steps, and every `task_every` steps when a
    `task` is set, with the task evaluation on the `task_every` steps; step 0 (when `at_start`, which the caller
    checks) and the `final` evaluation always include the task evaluation."""
    task_step = bool(eval_config.task_every and step % eval_config.task_every == 0)
    if final or step == 0:
        return EvaluationDue(True, True)
    every_step = bool(eval_config.every and step % eval_config.every == 0)
    return EvaluationDue(every_step or (bool(eval_config.task) and task_step), task_step)


def held_out_batches(
    examples: Sequence[TokenizedSteer], *, batch_size: int, pad_token_id: int, device=None, to_device=None
):
    """Yield `(chunk, batch)`: consecutive chunks of `batch_size` examples, trimmed, collated and moved.

    The one batching of held-out steers: the policy's evaluation and its `EvalReference` run the same
    batches, so a policy equal to its reference computes bit-identical log-probs.
    """
    for start in range(0, len(examples), batch_size):
        chunk = list(examples[start : start + batch_size])
        batch = collate_pairs([trim_to_scored(e) for e in chunk], pad_token_id=pad_token_id)
        batch = to_device(batch) if to_device is not None else {k: v.to(device) for k, v in batch.items()}
        yield chunk, batch


@torch.no_grad()
def preference_items(
    model,
    examples: Sequence[TokenizedSteer],
    reference,
    *,
    beta: float,
    pad_token_id: int,
    batch_size: int = 8,
    device=None,
    autocast: AbstractContextManager | None = None,
    to_device=None,
    forward=None,
) -> dict[str, torch.Tensor]:
    """Per held-out steer: `margin`, `chosen_reward`, `rejected_reward`, `chosen_nll_sum` (NLL summed over
    the chosen span), `rejected_nll_sum`, `chosen_tokens` and `rejected_tokens`, each (N,) in the order of
    `examples`.

    `reference` has `batch_logps(examples, batch, device)`; `model` is put in eval mode by the caller.
    `forward(batch) -> (chosen (B, Tc), rejected (B, Tr))` gives the policy's log-probs on every scored
    position (the only ones these metrics read): the trainer passes its `PolicyForward` (packing, span-only
    head); default `pair_logps(model, batch)`, the plain forward.
    """
    device = device if device is not None else next(model.parameters()).device
    forward = forward if forward is not None else (lambda batch: pair_logps(model, batch))
    parts: dict[str, list[torch.Tensor]] = {
        k: []
        for k in (
            "margin",
            "chosen_reward",
            "rejected_reward",
            "chosen_nll_sum",
            "rejected_nll_sum",
            "chosen_tokens",
            "rejected_tokens",
        )
    }
    batches = held_out_batches(
        examples, batch_size=batch_size, pad_token_id=pad_token_id, device=device, to_device=to_device
    )
    for chunk, batch in batches:
        with autocast if autocast is not None else nullcontext():
            chosen, rejected = forward(batch)  # (B, Tc), (B, Tr)
        ref_chosen, ref_rejected = reference.batch_logps(chunk, batch, device)
        out = localized_dpo_loss(
            chosen,
            rejected,
            ref_chosen,
            ref_rejected,
            batch[CHOSEN_LOSS_MASK],
            batch[REJECTED_LOSS_MASK],
            beta=beta,
        )
        parts["margin"].append(out.margins.cpu())
        parts["chosen_reward"].append(out.chosen_rewards.cpu())
        parts["rejected_reward"].append(out.rejected_rewards.cpu())
        parts["chosen_nll_sum"].append(
            -masked_sum(chosen, batch[CHOSEN_LOSS_MASK].bool()).float().cpu()
        )  # (B,)
        parts["rejected_nll_sum"].append(
            -masked_sum(rejected, batch[REJECTED_LOSS_MASK].bool()).float().cpu()
        )  # (B,)
        parts["chosen_tokens"].append(batch[CHOSEN_LOSS_MASK].sum(-1).cpu())  # (B,)
        parts["rejected_tokens"].append(batch[REJECTED_LOSS_MASK].sum(-1).cpu())  # (B,)
    return {k: torch.cat(v) for k, v in parts.items()}


def aggregate_preference_items(items: dict[str, torch.Tensor], beta: float) -> dict[str, float]:
    """`eval/preference_accuracy` (share of margins > 0), `eval/rewards_margins` (mean), mean rewards,
    `eval/chosen_nll` (mean NLL per chosen-span token) and, per side, the policy's span log-prob and its
    log-ratio against the reference (summed per steer and per token: likelihood displacement) from
    `preference_items`."""
    spans = {}
    for side in ("chosen", "rejected"):
        logps = -items[f"{side}_nll_sum"].double()  # (N,)
        ratios = items[f"{side}_reward"].double() / beta  # (N,) Δ = reward / β
        tokens = max(1, int(items[f"{side}_tokens"].sum()))
        spans[f"eval/logps_{side}_span"] = float(logps.mean())
        spans[f"eval/logps_{side}_span_per_token"] = float(logps.sum()) / tokens
        spans[f"eval/logratios_{side}_span"] = float(ratios.mean())
        spans[f"eval/logratios_{side}_span_per_token"] = float(ratios.sum()) / tokens
    return {
        "eval/preference_accuracy": float((items["margin"] > 0).float().mean()),
        "eval/rewards_margins": float(items["margin"].mean()),
        "eval/rewards_chosen": float(items["chosen_reward"].mean()),
        "eval/rewards_rejected": float(items["rejected_reward"].mean()),
        "eval/chosen_nll": float(items["chosen_nll_sum"].sum()) / max(1, int(items["chosen_tokens"].sum())),
        "eval/num_steers": float(items["margin"].numel()),
        **spans,
    }


def task_metrics(
    model,
    tokenizer,
    task: str,
    *,
    n: int,
    seed: int,
    batch_size: int,
    max_new_tokens: int | None = None,
    split: str = "heldout",
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """`eval/task_accuracy`, `eval/task_format_kept`, ... from `localdpo.tasks.evaluation.evaluate_task` (greedy
    answers), and per prompt `task_accuracy` and `format_kept` (0/1, (n,))."""
    from localdpo.tasks.evaluation import evaluate_task

    result = evaluate_task(
        model,
        tokenizer,
        task,
        n=n,
        seed=seed,
        batch_size=batch_size,
        max_new_tokens=max_new_tokens,
        split=split,
        records=True,
    )
    verdicts = [record["verdict"] for record in result.pop("records")]
    metrics = {
        f"eval/task_{key}": float(value)
        for key, value in result.items()
        if isinstance(value, (int, float)) and not isinstance(value, bool)
    }
    items = {
        "task_accuracy": torch.tensor([v == "correct" for v in verdicts], dtype=torch.float64),
        "format_kept": torch.tensor([v != "uncheckable" for v in verdicts], dtype=torch.float64),
    }
    return metrics, items


@torch.no_grad()
def evaluate_policy(
    model,
    tokenizer,
    config,
    *,
    eval_examples: Sequence[TokenizedSteer],
    reference,
    drift_set,
    device,
    autocast: AbstractContextManager,
    autocast_dtype: torch.dtype | None,
    to_device,
    task: bool,
    forward=None,
    probes: Sequence[SteerProbe] | None = None,
) -> tuple[dict[str, float], dict[str, torch.Tensor]]:
    """`(metrics, items)` of `model` (in eval mode) on the held-out steers, the drift prompts and, when `task`,
    the task prompts: the aggregates under W&B keys, and the per-item values comparisons pair across methods.

    Items, each (N,) float64 in a fixed order: `preference_accuracy` (0/1) and `chosen_nll` (per token) per
    held-out steer, `recurrence`, `uptake` and `continuation_accuracy` (0/1, `localdpo.trainer.steer_metrics`)
    per held-out steer of each one's set when `probes` (the held-out steers' `SteerProbe`s) are given,
    `drift_kl` per drift prompt, `task_accuracy` and `format_kept` (0/1) per task prompt.
    `forward`: the policy's log-prob forward (see `preference_items`).
    """
    metrics: dict[str, float] = {}
    items: dict[str, torch.Tensor] = {}
    if eval_examples:
        pref = preference_items(
            model,
            eval_examples,
            reference,
            beta=config.loss.beta,
            pad_token_id=tokenizer.pad_token_id,
            batch_size=config.eval.batch_size,
            device=device,
            autocast=autocast,
            to_device=to_device,
            forward=forward,
        )
        metrics.update(aggregate_preference_items(pref, config.loss.beta))
        items["preference_accuracy"] = (pref["margin"] > 0).double()
        items["chosen_nll"] = pref["chosen_nll_sum"].double() / pref["chosen_tokens"].clamp(min=1)
    if probes:
        at_steers = steer_items(
            model,
            tokenizer,
            probes,
            batch_size=config.eval.task_batch_size or config.eval.batch_size,
            max_new_tokens=config.eval.task_max_new_tokens,
        )
        metrics.update(aggregate_steer_items(at_steers))
        items.update(at_steers)
    if drift_set is not None:
        kl_sums, kl_counts = drift_set.kl_per_prompt(model, device=device, autocast_dtype=autocast_dtype)
        metrics["eval/drift_kl"] = float(kl_sums.sum() / kl_counts.sum())
        items["drift_kl"] = (kl_sums / kl_counts).double()
    if task and config.eval.task:
        task_result, task_items = task_metrics(
            model,
            tokenizer,
            config.eval.task,
            n=config.eval.task_n,
            seed=config.eval.task_seed,
            batch_size=config.eval.task_batch_size or config.eval.batch_size,
            max_new_tokens=config.eval.task_max_new_tokens,
            split=config.eval.task_split.value,
        )
        metrics.update(task_result)
        items.update(task_items)
    return metrics, items
