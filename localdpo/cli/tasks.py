"""`localdpo tasks`: list the checkable tasks."""

from __future__ import annotations

HELP = "list the checkable tasks, one name per line"


def add_arguments(parser) -> None:
    parser.add_argument("--describe", action="store_true", help="add each task's description")


def run(args) -> int:
    from localdpo.tasks import TASKS

    for name, task in TASKS.items():
        print(f"{name}\t{task.description}" if args.describe else name)
    return 0
