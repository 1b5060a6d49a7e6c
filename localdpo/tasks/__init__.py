"""Checkable tasks: the built-in ones (`TASKS`), tasks of one's own (`module:Class`, docs/tasks.md), `get_task`."""

from __future__ import annotations

from localdpo.tasks.base import (
    HELDOUT_PERCENT,
    SPLITS,
    Correction,
    Judgement,
    Mistake,
    MistakeKind,
    PromptSpaceError,
    Task,
    TaskPrompt,
    Verdict,
    split_of,
    stop_at_first_mistake,
)
from localdpo.tasks.registry import (
    TASKS,
    TaskLoadError,
    UnknownTaskError,
    get_task,
    is_task_spec,
    known_tasks,
    load_task,
    resolve_tasks,
    task_code_digest,
    task_prompt_of,
)

__all__ = [
    "HELDOUT_PERCENT",
    "SPLITS",
    "TASKS",
    "Correction",
    "Judgement",
    "Mistake",
    "MistakeKind",
    "PromptSpaceError",
    "Task",
    "TaskLoadError",
    "TaskPrompt",
    "UnknownTaskError",
    "Verdict",
    "get_task",
    "is_task_spec",
    "known_tasks",
    "load_task",
    "resolve_tasks",
    "split_of",
    "stop_at_first_mistake",
    "task_code_digest",
    "task_prompt_of",
]
