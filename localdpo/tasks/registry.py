"""The tasks a name reaches: the built-in ones, and tasks of one's own loaded from a person's code.

A task of one's own is named by where its class lives, `module:Class` (imported with the current directory on
the import path, as `python -m` would) or `path/to/file.py:Class`; `load_task` imports it, makes one instance,
checks it against the task protocol (`Task`: `sample`, `check`, `correct`, a `name`; docs/tasks.md) and
registers it under its `name`, so the steers it makes (`meta["task"]`) and the prompts it samples
(`TaskPrompt.task`) find it again in this process. Anything that does not fit is one `TaskLoadError` line.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.util
import inspect
import os
import random
import re
import sys
from pathlib import Path

from localdpo.tasks.arithmetic import Addition
from localdpo.tasks.base import SPLITS, Judgement, Task, TaskPrompt
from localdpo.tasks.lists import Multiples, RunningSum, SortWords

TASKS: dict[str, Task] = {task.name: task for task in (Addition(), RunningSum(), Multiples(), SortWords())}
"""The built-in tasks, by name."""
SPEC_SEPARATOR = ":"
"""`module:Class`: a name holding it names a task of one's own."""
TASK_NAME = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*")
"""A task's `name`: it starts every prompt id (`name/...`) and names a comparison's task directory."""

_LOADED: dict[str, Task] = {}
"""Spec (`module:Class`) -> the task loaded from it, once per process."""
_BY_NAME: dict[str, tuple[str, Task]] = {}
"""Name of a loaded task -> (its spec, the task)."""


class UnknownTaskError(KeyError):
    """No task is registered under this name; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


class TaskLoadError(UnknownTaskError):
    """A `module:Class` that does not import, or whose class does not fit the task protocol."""


def is_task_spec(name: str) -> bool:
    """Whether `name` names a task of one's own (`module:Class`, `file.py:Class`) rather than a built-in."""
    return SPEC_SEPARATOR in name


def known_tasks() -> dict[str, Task]:
    """Every task by name: the built-in ones, then those loaded in this process (`load_task`)."""
    return {**TASKS, **{name: task for name, (_, task) in _BY_NAME.items()}}


def get_task(name: str | Task) -> Task:
    """The task `name` names: a built-in or loaded task's name, or a `module:Class` spec (`load_task`); a
    `Task` is returned as is. `UnknownTaskError` lists the known names."""
    if isinstance(name, Task):
        return name
    if name in TASKS:
        return TASKS[name]
    if is_task_spec(name):
        return load_task(name)
    if name in _BY_NAME:
        return _BY_NAME[name][1]
    raise UnknownTaskError(
        f"unknown task {name!r}; known tasks: {', '.join(known_tasks())} (or all, or module:Class for a task "
        "of your own: docs/tasks.md)"
    )


def resolve_tasks(names: list[str] | tuple[str, ...] | str) -> list[Task]:
    """Tasks for a list of names where `"all"` means every built-in task."""
    names = [names] if isinstance(names, str) else list(names)
    if "all" in names:
        return list(TASKS.values())
    return [get_task(name) for name in dict.fromkeys(names)]


def task_prompt_of(meta: dict) -> TaskPrompt | None:
    """The task prompt a steer was made from, by its `meta["task"]` and `meta["prompt_id"]` (as `make_steers`
    and the studio record them); None when the meta names no known task or no prompt id, or the task cannot
    rebuild prompts from ids (`Task.from_id_body`); ValueError when the id is no prompt of the named task."""
    name, prompt_id = meta.get("task"), meta.get("prompt_id")
    task = known_tasks().get(name) if isinstance(name, str) else None
    if task is None or not isinstance(prompt_id, str):
        return None
    try:
        return task.from_id(prompt_id)
    except NotImplementedError:
        return None


def task_code_digest(task: str | Task | None) -> str | None:
    """SHA-256 of the file that defines a loaded task's class (its code decides the prompts and verdicts, so a
    result made with it names it); None for no task or a built-in one."""
    if task is None:
        return None
    task = get_task(task)
    if TASKS.get(task.name) is task:
        return None
    source = inspect.getsourcefile(type(task))
    return hashlib.sha256(Path(source).read_bytes()).hexdigest() if source else None


# ---------------------------------------------------------------------------------------------- loading


def load_task(spec: str) -> Task:
    """The task of one's own that `spec` names (`module:Class` or `path/to/file.py:Class`), imported, made and
    checked once per process (`check_protocol`) and registered under its `name`; `TaskLoadError` otherwise."""
    if spec in _LOADED:
        return _LOADED[spec]
    where, _, attribute = spec.rpartition(SPEC_SEPARATOR)
    if not where or not attribute:
        raise TaskLoadError(f"task {spec!r}: expected module:Class or path/to/file.py:Class")
    module = _import(spec, where)
    if not hasattr(module, attribute):
        raise TaskLoadError(f"task {spec!r}: {where} has no {attribute!r}")
    task = _instance(spec, getattr(module, attribute))
    check_protocol(task, spec)
    taken = _BY_NAME.get(task.name)
    if taken is not None:
        raise TaskLoadError(f"task {spec!r}: its name {task.name!r} is already taken by {taken[0]!r}")
    _LOADED[spec] = task
    _BY_NAME[task.name] = (spec, task)
    return task


def _import(spec: str, where: str):
    """The module `where` names: a `.py` file (by path) or a dotted module (current directory first)."""
    if where.endswith(".py") or os.sep in where or "/" in where:
        path = Path(where).expanduser().resolve()
        if not path.is_file():
            raise TaskLoadError(f"task {spec!r}: no file {where}")
        digest = hashlib.sha256(str(path).encode()).hexdigest()[:12]
        stem = re.sub(r"\W", "_", path.stem)
        name = f"localdpo_task_{stem}_{digest}"
        if name in sys.modules:
            return sys.modules[name]
        module_spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(module_spec)
        sys.modules[name] = module  # before running it: dataclasses and pickling look their module up there
        try:
            module_spec.loader.exec_module(module)
        except Exception as error:
            del sys.modules[name]
            raise TaskLoadError(f"task {spec!r}: running {where} raised {_said(error)}") from None
        return module
    cwd = os.getcwd()
    if cwd not in sys.path:
        sys.path.insert(0, cwd)  # `localdpo` as a console script does not put it there; `python -m` does
    try:
        return importlib.import_module(where)
    except ModuleNotFoundError as error:
        if error.name and (where == error.name or where.startswith(error.name + ".")):
            raise TaskLoadError(
                f"task {spec!r}: no module {where!r} in the current directory or on the Python path (or give "
                f"the file: path/to/{where.replace('.', '/')}.py:{spec.rpartition(SPEC_SEPARATOR)[2]})"
            ) from None
        raise TaskLoadError(f"task {spec!r}: importing {where} raised {_said(error)}") from None
    except Exception as error:
        raise TaskLoadError(f"task {spec!r}: importing {where} raised {_said(error)}") from None


def _instance(spec: str, value) -> Task:
    """`value` made into a task: a `Task` subclass is instantiated with no arguments, a `Task` kept."""
    if isinstance(value, Task):
        return value
    if not (isinstance(value, type) and issubclass(value, Task)):
        raise TaskLoadError(
            f"task {spec!r}: {_shown(value)} is not a subclass of localdpo.tasks.Task (docs/tasks.md)"
        )
    missing = sorted(getattr(value, "__abstractmethods__", ()))
    if missing:
        raise TaskLoadError(
            f"task {spec!r}: {value.__name__} does not define {', '.join(missing)} (docs/tasks.md)"
        )
    try:
        return value()
    except Exception as error:
        raise TaskLoadError(f"task {spec!r}: {value.__name__}() raised {_said(error)}") from None


def check_protocol(task: Task, spec: str) -> None:
    """Nothing when `task` fits the protocol: a valid `name` that is no built-in's; `sample` gives a
    `TaskPrompt` of this task (`task` field = its name, id `name/...`); `check` gives a `Judgement` (tried on
    an empty answer); every split has a prompt (`Task.prompts`, the hash split of the ids); and `from_id`, when
    the task defines it, gives the sampled prompt back. `TaskLoadError` naming the first misfit otherwise."""
    label = type(task).__name__
    name = getattr(task, "name", "")
    if not isinstance(name, str) or not TASK_NAME.fullmatch(name):
        raise TaskLoadError(
            f"task {spec!r}: {label}.name={name!r}; set a name of letters, digits, '_', '.' or '-'"
        )
    if name in TASKS:
        raise TaskLoadError(f"task {spec!r}: {label}.name={name!r} is a built-in task's name; choose another")
    what = "sample(random.Random(0))"
    try:
        prompt = task.sample(random.Random(0))
        if not isinstance(prompt, TaskPrompt):
            raise TaskLoadError(f"task {spec!r}: {label}.{what} gave {_shown(prompt)}, not a TaskPrompt")
        if prompt.task != name or not prompt.id.startswith(f"{name}/"):
            raise TaskLoadError(
                f"task {spec!r}: {label}.{what} gave a prompt with task={prompt.task!r}, id={prompt.id!r}; "
                f"expected task={name!r} and an id starting {name + '/'!r}"
            )
        what = "check(prompt, '')"
        judgement = task.check(prompt, "", complete=True)
        if not isinstance(judgement, Judgement):
            raise TaskLoadError(f"task {spec!r}: {label}.{what} gave {_shown(judgement)}, not a Judgement")
        for split in SPLITS:
            what = f"prompts(1, seed=0, split={split!r})"
            task.prompts(1, 0, split)
        what = f"from_id({prompt.id!r})"
        try:
            again = task.from_id(prompt.id)
        except NotImplementedError:
            again = prompt  # optional: without it, steers from files are not checked again
        if again != prompt:
            raise TaskLoadError(f"task {spec!r}: {label}.{what} gives another prompt than the one sampled")
    except TaskLoadError:
        raise
    except Exception as error:
        raise TaskLoadError(f"task {spec!r}: {label}.{what} raised {_said(error)}") from None


def _said(error: BaseException) -> str:
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _shown(value) -> str:
    return value.__name__ if isinstance(value, type) else f"a {type(value).__name__}"
