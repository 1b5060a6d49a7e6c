"""Checkable tasks: registry of the built-in tasks (`get_task(name)`, `TASKS`)."""

from __future__ import annotations

from localdpo.tasks.arithmetic import Addition
from localdpo.tasks.base import (
    HELDOUT_PERCENT,
    SPLITS,
    Correction,
    Judgement,
    Mistake,
    MistakeKind,
    Task,
    TaskPrompt,
    Verdict,
    split_of,
)
from localdpo.tasks.lists import Multiples, RunningSum, SortWords

TASKS: dict[str, Task] = {task.name: task for task in (Addition(), RunningSum(), Multiples(), SortWords())}


class UnknownTaskError(KeyError):
    """No task is registered under this name; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def get_task(name: str | Task) -> Task:
    """The task registered as `name` (a `Task` is returned as is); `UnknownTaskError` lists the known names."""
    if isinstance(name, Task):
        return name
    try:
        return TASKS[name]
    except KeyError:
        raise UnknownTaskError(f"unknown task {name!r}; known tasks: {', '.join(TASKS)} (or all)") from None


def task_prompt_of(meta: dict) -> TaskPrompt | None:
    """The task prompt a steer was made from, by its `meta["task"]` and `meta["prompt_id"]` (as `make_steers`
    and the studio record them); None when the meta names no registered task or no prompt id, ValueError when
    the id is no prompt of the named task."""
    name, prompt_id = meta.get("task"), meta.get("prompt_id")
    if not isinstance(name, str) or name not in TASKS or not isinstance(prompt_id, str):
        return None
    return TASKS[name].from_id(prompt_id)


def resolve_tasks(names: list[str] | tuple[str, ...] | str) -> list[Task]:
    """Tasks for a list of names where `"all"` means every registered task."""
    names = [names] if isinstance(names, str) else list(names)
    if "all" in names:
        return list(TASKS.values())
    return [get_task(name) for name in dict.fromkeys(names)]


__all__ = [
    "HELDOUT_PERCENT",
    "SPLITS",
    "TASKS",
    "Correction",
    "Judgement",
    "Mistake",
    "MistakeKind",
    "Task",
    "TaskPrompt",
    "UnknownTaskError",
    "Verdict",
    "get_task",
    "resolve_tasks",
    "split_of",
    "task_prompt_of",
]
