"""The run's steers: loaded from files or passed in, split, tokenized in the train and eval span modes."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Sequence
from typing import Any

import torch

from localdpo.steers import Steer, load_steers
from localdpo.tasks import TaskPrompt, task_prompt_of
from localdpo.tokenization import SpanMode, TokenizedSteer, tokenize_steers
from localdpo.trainer.config import ConfigError, RunConfig


def split_steers(steers: Sequence[Steer], fraction: float, seed: int) -> tuple[list[Steer], list[Steer]]:
    """(train, held out): a seeded `fraction` of `steers` held out (at least one when fraction > 0)."""
    if not fraction:
        return list(steers), []
    order = torch.randperm(len(steers), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = max(1, round(len(steers) * fraction))
    held = set(order[:n_eval])
    return [s for i, s in enumerate(steers) if i not in held], [s for i, s in enumerate(steers) if i in held]


def _tokenize(
    config: RunConfig, tokenizer, steers, span_mode: SpanMode, what: str, reports: dict
) -> list[TokenizedSteer]:
    if steers and isinstance(steers[0], TokenizedSteer):
        wrong = [t.steer_id for t in steers if t.span_mode is not span_mode]
        if wrong:
            raise ValueError(
                f"{what} steers were tokenized with another span mode than {span_mode.value}: {wrong[:5]}"
            )
        return list(steers)
    examples, report = tokenize_steers(
        steers,
        tokenizer,
        max_length=config.data.max_length,
        span_mode=span_mode,
        on_too_long=config.data.on_too_long.value,
    )
    reports[what] = report
    return examples


def held_out_task_prompts(
    examples: Sequence[TokenizedSteer], held: Sequence[Steer | TokenizedSteer]
) -> list[TaskPrompt | None]:
    """Per held-out example, the task prompt its steer was made from (`localdpo.tasks.task_prompt_of` of its
    meta), found by steer id; None for a steer of no task, for one without an id or whose id another held-out
    steer shares (ids from files are unique), and for steers passed in already tokenized (no meta). A steer
    whose `prompt_id` is no prompt of its task gets None too, with one warning for all such steers: its
    answer cannot be checked, which should not stop a run."""
    ids = Counter(s.id for s in held if isinstance(s, Steer))
    prompts: dict[str, TaskPrompt | None] = {}
    unknown: list[str] = []
    for steer in held:
        if isinstance(steer, Steer) and steer.id is not None and ids[steer.id] == 1:
            try:
                prompts[steer.id] = task_prompt_of(steer.meta)
            except ValueError:
                unknown.append(f"{steer.id} ({steer.meta.get('prompt_id')!r})")
    if unknown:
        warnings.warn(
            f"{len(unknown)} held-out steers name no prompt of their task, so no continuation accuracy for "
            f"them: {', '.join(unknown[:3])}",
            stacklevel=2,
        )
    return [prompts.get(e.steer_id) if e.steer_id is not None else None for e in examples]


def prepare_steers(
    config: RunConfig,
    tokenizer,
    train: Sequence[Steer | TokenizedSteer] | None = None,
    held: Sequence[Steer | TokenizedSteer] | None = None,
) -> tuple[list[TokenizedSteer], list[TokenizedSteer], dict[str, Any], list[TaskPrompt | None]]:
    """(train examples in the run's span mode, eval examples in `eval.span_mode`, tokenize reports, the task
    prompt of each eval example or None: `held_out_task_prompts`).

    Steers come from `train`/`held` when given, else from `data.train_steers` / `data.eval_steers`; without
    held-out steers a seeded `data.eval_fraction` of the train steers is held out. Over-long steers are
    skipped and counted in the reports (`data.on_too_long=skip`) or raise.
    """
    if train is None:
        if not config.data.train_steers:
            raise ConfigError("data.train_steers is not set and no steers were passed in")
        train = load_steers(config.data.train_steers)
        if held is None and config.data.eval_steers:
            held = load_steers(config.data.eval_steers)
    if held is None:
        if train and isinstance(train[0], TokenizedSteer):
            raise ValueError("pass eval_steers along with tokenized train steers")
        train, held = split_steers(train, config.data.eval_fraction, config.data_seed)
    reports: dict[str, Any] = {}
    train_examples = _tokenize(config, tokenizer, train, config.span_mode, "train", reports)
    eval_examples = _tokenize(config, tokenizer, held, config.eval.span_mode, "eval", reports)
    if config.eval.max_steers:
        eval_examples = eval_examples[: config.eval.max_steers]
    if not train_examples:
        raise ValueError("no training steers left after tokenization")
    return train_examples, eval_examples, reports, held_out_task_prompts(eval_examples, held)
