"""Steers made from a model's own mistakes on checkable tasks.

The workflow mirrored: a person watches the model answer, stops it shortly after the first wrong item,
rewrites that item and lets it resume. So a steer's `prefix` is the output up to the mistake, `rejected` is
the wrong item plus the few tokens the model wrote before it was stopped, and `chosen` is the corrected
item only (a partial correction: the rest of the answer is left to the model).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field, replace

from localdpo.generation import Generation, GenerationConfig, generate_answers
from localdpo.steers.steer import Steer
from localdpo.steers.tokenization import tokenize_steer
from localdpo.tasks import Mistake, MistakeKind, Task, TaskPrompt, Verdict, get_task
from localdpo.tasks.base import stop_at_first_mistake

STOP_AFTER_TOKENS = 3
"""Tokens of the original output kept in `rejected` after the wrong item: where a watcher would stop it."""


def _first_tokens(tokenizer, text: str, k: int) -> str:
    """The first `k` tokens of `text` decoded back (a prefix of `text` for byte-level BPE)."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"][:k]
    head = tokenizer.decode(ids)
    return head if text.startswith(head) else ""


def steer_from_mistake(
    task: Task,
    prompt: TaskPrompt,
    generation: Generation,
    mistake: Mistake,
    tokenizer,
    *,
    stop_after_tokens: int = STOP_AFTER_TOKENS,
    meta: dict | None = None,
) -> Steer:
    """The steer a watcher makes at `mistake`: prefix up to it, the wrong item (+ a few tokens) against the fix."""
    output = generation.text
    correction = task.correct(prompt, output, mistake)
    after = output[mistake.end :]
    tail = _first_tokens(tokenizer, after, stop_after_tokens)
    rejected = output[mistake.start : mistake.end] + tail
    # The answer really ended right after the wrong part: its end-of-turn token is part of what is rejected.
    rejected_complete = generation.complete and tail == after
    if mistake.kind is MistakeKind.MISSING and not rejected and not generation.complete:
        raise ValueError("cut-off output: no missing item to correct")
    return Steer(
        prompt=[{"role": "user", "content": prompt.text}],
        prefix=output[: mistake.start],
        rejected=rejected,
        chosen=correction.text,
        chosen_complete=correction.ends_answer,
        rejected_complete=rejected_complete,
        replaces=mistake.end - mistake.start,
        id=f"{prompt.id}#{(meta or {}).get('seed', 0)}",
        meta={
            "task": task.name,
            "prompt_id": prompt.id,
            "mistake": {**asdict(mistake), "kind": mistake.kind.value},
            "output": output,
            "output_complete": generation.complete,
            **(meta or {}),
        },
    )


@dataclass
class SteerSummary:
    """Counts of one `make_steers` run."""

    task: str
    tried: int = 0
    """Prompts answered."""
    correct: int = 0
    """Answers already right (nothing to steer)."""
    uncheckable: int = 0
    """Answers with no checkable answer (format not kept or cut off)."""
    steers: int = 0
    """Steers made."""
    rejected_steers: list[str] = field(default_factory=list)
    """`prompt id: reason` for wrong answers that gave no valid steer (e.g. an empty token span)."""

    @property
    def wrong(self) -> int:
        return self.tried - self.correct - self.uncheckable

    def row(self) -> str:
        return (
            f"{self.task:<12} tried {self.tried:>5}  correct {self.correct:>5}  no checkable answer "
            f"{self.uncheckable:>5}  wrong {self.wrong:>5}  steers {self.steers:>5}  unusable {len(self.rejected_steers):>3}"
        )


def make_steers(
    model,
    tokenizer,
    task: Task | str,
    *,
    n: int | None = None,
    seed: int = 0,
    split: str = "train",
    generation: GenerationConfig | None = None,
    stop_after_tokens: int = STOP_AFTER_TOKENS,
    full_output: bool = False,
    meta: dict | None = None,
    progress: bool = True,
    prompts: Sequence[TaskPrompt] | None = None,
) -> tuple[list[Steer], SteerSummary]:
    """Steers from the model's answers to `n` prompts of `task` (`split` prompts, sampled with `seed`), or to
    the given `prompts` instead (`split` and `seed` then only recorded in each steer's meta and id). Sampling
    (`generation.temperature` > 0) draws from `seed` too, in place of `generation.seed`.

    As a watcher would, generation of an answer stops `stop_after_tokens` tokens after its first mistake
    (`meta["output"]` then holds the answer up to there); `full_output=True` lets every answer run to
    its end first (slower; the steers are the same up to sampling). `meta` is added to every steer's. Every
    steer is checked to tokenize with a non-empty divergent span; wrong answers that fail that are listed
    in `summary.rejected_steers`, never dropped silently.
    """
    task = get_task(task)
    config = replace(generation or GenerationConfig(max_new_tokens=task.max_new_tokens), seed=seed)
    if (n is None) == (prompts is None):
        raise ValueError("give either n (prompts drawn with seed) or prompts")
    prompts = list(prompts) if prompts is not None else task.prompts(n, seed, split)
    answers = generate_answers(
        model,
        tokenizer,
        [p.text for p in prompts],
        config,
        should_stop=None if full_output else stop_at_first_mistake(task, prompts),
        stop_delay=stop_after_tokens,
        progress=progress,
        desc=task.name,
    )
    summary = SteerSummary(task=task.name, tried=len(prompts))
    steers: list[Steer] = []
    meta = {
        "split": split,
        "seed": seed,
        "temperature": config.temperature,
        "top_p": config.top_p,
        **(meta or {}),
    }
    for prompt, answer in zip(prompts, answers):
        judgement = task.check(prompt, answer.text, complete=answer.complete)
        if judgement.verdict is Verdict.CORRECT:
            summary.correct += 1
            continue
        if judgement.verdict is Verdict.UNCHECKABLE:
            summary.uncheckable += 1
            continue
        try:
            steer = steer_from_mistake(
                task,
                prompt,
                answer,
                judgement.mistake,
                tokenizer,
                stop_after_tokens=stop_after_tokens,
                meta=meta,
            )
            tokenized = tokenize_steer(steer, tokenizer)
            # One side may be empty (the edit reads as a pure insertion or deletion), as the losses allow.
            if not bool(tokenized.chosen_mask.any() or tokenized.rejected_mask.any()):
                raise ValueError("empty divergent span: nothing to score")
        except ValueError as error:
            summary.rejected_steers.append(f"{prompt.id}: {error}")
            continue
        steers.append(steer)
        summary.steers += 1
    return steers, summary


def shuffle_steers(steers: list[Steer], seed: int) -> list[Steer]:
    """A seeded shuffle (tasks interleaved when several are written to one file)."""
    steers = list(steers)
    random.Random(seed).shuffle(steers)
    return steers
