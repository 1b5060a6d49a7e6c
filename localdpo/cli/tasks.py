"""`localdpo tasks`: list the checkable tasks."""

from __future__ import annotations

HELP = "list the checkable tasks, one name per line (and load and check tasks of your own)"


def add_arguments(parser) -> None:
    parser.add_argument("--describe", action="store_true", help="add each task's description")
    parser.add_argument(
        "--task",
        action="append",
        default=[],
        help="a task of your own to load, check against the task protocol and list: module:Class or "
        "path/to/file.py:Class (repeatable; docs/tasks.md)",
    )


def run(args) -> int:
    from localdpo.tasks import TASKS, get_task

    tasks = dict(TASKS)
    for spec in args.task:  # a task that does not fit the protocol: one line, exit status 2
        task = get_task(spec)
        tasks[task.name] = task
    for name, task in tasks.items():
        print(f"{name}\t{task.description}" if args.describe else name)
    return 0
