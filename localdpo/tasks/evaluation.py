"""Greedy evaluation of a model on the held-out prompts of checkable tasks.

Metrics per task (all over the `n` prompts):
- `accuracy`: answers entirely right (every item, no missing or extra item).
- `format_kept`: answers holding a checkable answer (right or wrong), i.e. not `Verdict.UNCHECKABLE`.
- `first_item_accuracy`: answers whose first item is right.
- `mean_first_mistake_position`: mean 0-based index of the first wrong item over the wrong answers
  (None when no answer is wrong).

Generation stops an answer as soon as its first mistake is judged (`stop_early`): every metric above is
decided by then, and a small model's answers are mostly wrong early, so this saves most of the decoding.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from localdpo.generation import GenerationConfig, generate_answers
from localdpo.tasks import Task, TaskPrompt, Verdict, get_task
from localdpo.tasks.base import stop_at_first_mistake

METRIC_KEYS = ("accuracy", "format_kept", "first_item_accuracy", "mean_first_mistake_position", "n")


def evaluate_task(
    model,
    tokenizer,
    task: Task | str,
    *,
    n: int = 200,
    seed: int = 0,
    batch_size: int = 32,
    max_new_tokens: int | None = None,
    prompts: Sequence[TaskPrompt] | None = None,
    split: str = "heldout",
    stop_early: bool = True,
    records: bool = False,
    progress: bool = False,
) -> dict:
    """Metrics of greedy answers to `n` `split` prompts of `task` (or to `prompts` when given).

    Returns `{"task", "n", "accuracy", "format_kept", "first_item_accuracy",
    "mean_first_mistake_position", "seconds"}` plus `"records"` (one dict per answer) with `records=True`.
    """
    task = get_task(task)
    prompts = list(prompts) if prompts is not None else task.prompts(n, seed, split)
    if not prompts:
        raise ValueError(f"task {task.name}: no prompts to evaluate")
    config = GenerationConfig(max_new_tokens=max_new_tokens or task.max_new_tokens, batch_size=batch_size)
    start = time.perf_counter()
    answers = generate_answers(
        model,
        tokenizer,
        [p.text for p in prompts],
        config,
        should_stop=stop_at_first_mistake(task, prompts) if stop_early else None,
        progress=progress,
        desc=f"eval {task.name}",
    )
    seconds = time.perf_counter() - start
    correct = kept = first_right = 0
    mistake_positions: list[int] = []
    rows = []
    for prompt, answer in zip(prompts, answers):
        judgement = task.check(prompt, answer.text, complete=answer.complete)
        correct += judgement.verdict is Verdict.CORRECT
        kept += judgement.verdict is not Verdict.UNCHECKABLE
        first_right += judgement.first_item_correct
        if judgement.mistake is not None:
            mistake_positions.append(judgement.mistake.item)
        if records:
            mistake = judgement.mistake
            rows.append(
                {
                    "prompt_id": prompt.id,
                    "output": answer.text,
                    "complete": answer.complete,
                    "verdict": judgement.verdict.value,
                    "mistake": None
                    if mistake is None
                    else {
                        "item": mistake.item,
                        "kind": mistake.kind.value,
                        "found": mistake.found,
                        "expected": mistake.expected,
                    },
                    "reason": judgement.reason,
                }
            )
    total = len(prompts)
    result = {
        "task": task.name,
        "n": total,
        "accuracy": correct / total,
        "format_kept": kept / total,
        "first_item_accuracy": first_right / total,
        "mean_first_mistake_position": sum(mistake_positions) / len(mistake_positions)
        if mistake_positions
        else None,
        "seconds": seconds,
        "generated_tokens": sum(a.num_tokens for a in answers),
    }
    if records:
        result["records"] = rows
    return result


def evaluate_tasks(model, tokenizer, tasks: Sequence[Task | str], **kwargs) -> dict[str, dict]:
    """`evaluate_task` for each task, keyed by task name."""
    results = {}
    for task in tasks:
        task = get_task(task)
        results[task.name] = evaluate_task(model, tokenizer, task, **kwargs)
    return results
