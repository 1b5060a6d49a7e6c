"""Checkable tasks: seeded prompts, a checker that finds the first wrong item, a corrector that rewrites it.

Splits: a prompt is held out (or kept for validation) when a hash of its id (and `split_seed`) says so,
independently of the seed that sampled it, so no sampling seed can ever put a held-out or validation prompt
into training steers.
"""

from __future__ import annotations

import hashlib
import random
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

HELDOUT_PERCENT = 25
"""Share of each task's prompt space held out for evaluation (hash of the prompt id < this, out of 100)."""
VALIDATION_PERCENT = 15
"""Share kept for choosing hyperparameters (hash in [HELDOUT_PERCENT, HELDOUT_PERCENT + this)), taken from
what was the train share, so the held-out split is the same as before the validation split existed."""
SPLITS = ("train", "validation", "heldout")


class PromptSpaceError(ValueError):
    """More distinct prompts of a split were asked for than the task's prompt space holds."""


class Verdict(str, Enum):
    """What a checker concluded about one output."""

    CORRECT = "correct"
    WRONG = "wrong"
    """A checkable answer with a mistake; `Judgement.mistake` points at the first one."""
    UNCHECKABLE = "uncheckable"
    """No answer in the expected form (format not kept, or cut off before the answer was complete)."""


class MistakeKind(str, Enum):
    WRONG = "wrong"
    """An item with the wrong value: replace `output[start:end]`."""
    MISSING = "missing"
    """The answer stopped before all items: insert the next item at `start` (== end)."""
    EXTRA = "extra"
    """The answer went on past its last item: it should have ended at `start`."""


@dataclass(frozen=True)
class TaskPrompt:
    """One prompt of a task and what is needed to check an answer to it."""

    id: str
    """Stable id from the prompt's content, e.g. `"multiples/k=7,n=8"`; decides the split."""
    task: str
    text: str
    """The user message."""
    answer: tuple[str, ...]
    """The expected items, in order."""
    data: dict[str, Any] = field(default_factory=dict)
    """Task-specific inputs (operands, input list, ...)."""


@dataclass(frozen=True)
class Mistake:
    """The first wrong part of an output: character offsets `[start, end)` and the item judged there."""

    item: int
    """0-based index of the judged item in the answer."""
    start: int
    end: int
    kind: MistakeKind
    found: str
    """`output[start:end]`."""
    expected: str
    """The right item."""


@dataclass(frozen=True)
class Judgement:
    """A checker's result for one output."""

    verdict: Verdict
    mistake: Mistake | None = None
    items_found: int = 0
    """Items of the answer that were judged (0 when uncheckable)."""
    reason: str = ""
    """Why an output is uncheckable."""

    @property
    def first_item_correct(self) -> bool:
        return self.verdict is Verdict.CORRECT or (self.mistake is not None and self.mistake.item > 0)


@dataclass(frozen=True)
class Correction:
    """How to rewrite a mistake: replace `output[mistake.start:mistake.end]` by `text`."""

    text: str
    ends_answer: bool = False
    """The answer should end right after `text` (an extra item was written)."""


def split_of(prompt_id: str, split_seed: int = 0) -> str:
    """`"heldout"`, `"validation"` or `"train"`: a hash of the prompt id and `split_seed`, stable across runs
    and machines (25 / 15 / 60 points out of 100)."""
    digest = hashlib.sha256(f"{split_seed}:{prompt_id}".encode()).digest()
    point = int.from_bytes(digest[:8], "big") % 100
    if point < HELDOUT_PERCENT:
        return "heldout"
    return "validation" if point < HELDOUT_PERCENT + VALIDATION_PERCENT else "train"


class Task(ABC):
    """A family of prompts whose answers can be checked item by item."""

    name: str = ""
    description: str = ""
    max_new_tokens: int = 96
    """Enough for a correct answer with SmolLM2's usual framing sentence."""

    @abstractmethod
    def sample(self, rng: random.Random) -> TaskPrompt:
        """One random prompt."""

    @abstractmethod
    def check(self, prompt: TaskPrompt, output: str, *, complete: bool = True) -> Judgement:
        """Judge `output`; `complete=False` means generation was cut off (the last item may be partial)."""

    @abstractmethod
    def correct(self, prompt: TaskPrompt, output: str, mistake: Mistake) -> Correction:
        """The right text for the mistaken span."""

    def from_id_body(self, body: str) -> TaskPrompt:
        """The prompt whose id is `f"{name}/{body}"` (may raise ValueError on a body of another form).

        Optional for a task of one's own (docs/tasks.md): without it, steers loaded from a file cannot be
        checked again, so continuation accuracy leaves them out (`task_prompt_of` gives None)."""
        raise NotImplementedError(f"task {self.name} cannot rebuild a prompt from its id (no from_id_body)")

    def from_id(self, prompt_id: str) -> TaskPrompt:
        """The prompt whose `id` is `prompt_id` (what a steer's `meta["prompt_id"]` records), so an answer to
        it can be checked again; ValueError when `prompt_id` is no id of this task, NotImplementedError when
        the task does not rebuild prompts (`from_id_body`)."""
        head, _, body = prompt_id.partition("/")
        try:
            if head != self.name:
                raise ValueError
            prompt = self.from_id_body(body)
        except ValueError:
            prompt = None
        if prompt is None or prompt.id != prompt_id:
            raise ValueError(f"{prompt_id!r} is not a prompt id of task {self.name}")
        return prompt

    def prompts(self, n: int, seed: int, split: str = "train", *, split_seed: int = 0) -> list[TaskPrompt]:
        """`n` distinct prompts of `split`, sampled with `random.Random(seed)`; same arguments, same list."""
        if split not in SPLITS:
            raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
        if n < 0:
            raise ValueError(f"n must be >= 0, got {n}")
        rng = random.Random(f"{self.name}:{seed}")
        chosen: dict[str, TaskPrompt] = {}
        attempts = 0
        while len(chosen) < n:
            attempts += 1
            if attempts > 200 * n + 1000:
                raise PromptSpaceError(
                    f"task {self.name}: could not find {n} distinct {split} prompts (found {len(chosen)}); "
                    f"ask for at most {len(chosen)}"
                )
            prompt = self.sample(rng)
            if prompt.id not in chosen and split_of(prompt.id, split_seed) == split:
                chosen[prompt.id] = prompt
        return list(chosen.values())


def stop_at_first_mistake(task: Task, prompts: Sequence[TaskPrompt]):
    """`should_stop` for `localdpo.generation.generate_answers`: True once the partial answer to prompts[i] has a judged mistake."""

    def should_stop(index: int, text: str) -> bool:
        return task.check(prompts[index], text, complete=False).verdict is Verdict.WRONG

    return should_stop
