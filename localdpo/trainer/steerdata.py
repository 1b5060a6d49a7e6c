"""The run's steers: loaded from files or passed in, split, tokenized in the train and eval span modes."""

from __future__ import annotations

import re
import warnings
from collections import Counter
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import torch

from localdpo.steers.steer import Steer, load_steers
from localdpo.steers.tokenization import SpanMode, TokenizedSteer, tokenize_steers
from localdpo.tasks import TaskPrompt, task_prompt_of
from localdpo.trainer.config import ConfigError, DataConfig, RunConfig


def held_out_count(n_steers: int, fraction: float) -> int:
    """How many of `n_steers` a split with `fraction` > 0 holds out: the rounded share, at least one."""
    return max(1, round(n_steers * fraction))


def split_steers(steers: Sequence[Steer], fraction: float, seed: int) -> tuple[list[Steer], list[Steer]]:
    """(train, held out): a seeded `fraction` of `steers` held out (at least one when fraction > 0)."""
    if not fraction:
        return list(steers), []
    order = torch.randperm(len(steers), generator=torch.Generator().manual_seed(seed)).tolist()
    n_eval = held_out_count(len(steers), fraction)
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


ROUND_FILE = re.compile(r"round-(\d+)\.jsonl")
"""A file of one steering round in a directory of rounds: `round-1.jsonl`, `round-2.jsonl`, ..."""


def round_sources(data: DataConfig) -> list[tuple[int | None, str]]:
    """`(round, file)` of the train steers: `data.train_files` in order (rounds 1, 2, ...), the
    `round-<r>.jsonl` files of a `data.train_steers` directory by r (1 .. R, no gap), or the one
    `data.train_steers` file (round None: each steer's own `round`, if any)."""
    if data.train_files and data.train_steers:
        raise ConfigError("data.train_steers and data.train_files both give train steers: keep one")
    if data.train_files:
        return [(index + 1, path) for index, path in enumerate(data.train_files)]
    if not data.train_steers:
        raise ConfigError("data.train_steers is not set and no steers were passed in")
    path = Path(data.train_steers)
    if not path.is_dir():
        return [(None, str(path))]
    found = sorted((int(m[1]), child) for child in path.iterdir() if (m := ROUND_FILE.fullmatch(child.name)))
    rounds = [r for r, _ in found]
    if rounds != list(range(1, len(rounds) + 1)):
        held = ", ".join(p.name for _, p in found) or "none"
        raise ConfigError(
            f"data.train_steers={path}: a directory of rounds holds round-1.jsonl, round-2.jsonl, ... with no "
            f"gap; found {held}"
        )
    return [(r, str(child)) for r, child in found]


def load_round_steers(data: DataConfig) -> list[Steer]:
    """The train steers of `data` (`round_sources`), each with its round, in round order (file order within a
    round); `ConfigError` naming the file and steer where a steer's own `round` disagrees with its file's, or
    where some steers of one file carry a round and others do not."""
    rounds: dict[int | None, list[Steer]] = {}
    for round_, path in round_sources(data):
        steers = load_steers(path)
        for index, steer in enumerate(steers, 1):
            if round_ is not None and steer.round is not None and steer.round != round_:
                raise ConfigError(
                    f"{path}: steer {index} (id {steer.id!r}) has round={steer.round}, but the file is round {round_}"
                )
            own = round_ if round_ is not None else steer.round
            rounds.setdefault(own, []).append(replace(steer, round=own))
        if None in rounds and len(rounds) > 1:
            raise ConfigError(
                f"{path}: {len(rounds[None])} of its {len(steers)} steers carry no round: give every steer its "
                "round, or none"
            )
    return [steer for key in sorted(rounds, key=lambda r: r or 0) for steer in rounds[key]]


def round_sizes(examples: Sequence[TokenizedSteer], steers: Sequence[Steer]) -> list[int]:
    """Examples per round of the tokenized train `examples`, in round order: `steers` (with their rounds, in
    the same order) less those tokenization skipped, matched in order by steer id; [] when no steer has a
    round."""
    if not steers or not isinstance(steers[0], Steer) or steers[0].round is None:
        return []
    sizes: dict[int, int] = {}
    kept = 0
    for steer in steers:
        if kept < len(examples) and examples[kept].steer_id == steer.id:
            sizes[steer.round] = sizes.get(steer.round, 0) + 1
            kept += 1
    return [sizes[r] for r in sorted(sizes)]


def prepare_steers(
    config: RunConfig,
    tokenizer,
    train: Sequence[Steer | TokenizedSteer] | None = None,
    held: Sequence[Steer | TokenizedSteer] | None = None,
) -> tuple[list[TokenizedSteer], list[TokenizedSteer], dict[str, Any], list[TaskPrompt | None], list[int]]:
    """(train examples in the run's span mode, eval examples in `eval.span_mode`, tokenize reports, the task
    prompt of each eval example or None: `held_out_task_prompts`, the number of train examples of each
    steering round in order: [] without rounds).

    Steers come from `train`/`held` when given, else from `data.train_steers` (or `data.train_files`, rounds
    in order: `load_round_steers`) / `data.eval_steers`; without held-out steers a seeded `data.eval_fraction`
    of the train steers is held out. Over-long steers are skipped and counted in the reports
    (`data.on_too_long=skip`) or raise.
    """
    if train is None:
        train = load_round_steers(config.data)
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
    sizes = round_sizes(train_examples, train) if config.data.train_steers or config.data.train_files else []
    return train_examples, eval_examples, reports, held_out_task_prompts(eval_examples, held), sizes
