"""The run's steers: loaded from files or passed in, split, tokenized in the train and eval span modes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from localdpo.steers import Steer, load_steers
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


def prepare_steers(
    config: RunConfig,
    tokenizer,
    train: Sequence[Steer | TokenizedSteer] | None = None,
    held: Sequence[Steer | TokenizedSteer] | None = None,
) -> tuple[list[TokenizedSteer], list[TokenizedSteer], dict[str, Any]]:
    """(train examples in the run's span mode, eval examples in `eval.span_mode`, tokenize reports).

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
    return train_examples, eval_examples, reports
