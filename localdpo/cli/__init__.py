"""`localdpo` command line: one module per subcommand under `localdpo.cli`.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`, and keeps
its top-level imports light (torch and transformers are imported inside `run`), so `localdpo --help` is fast.
"""

from __future__ import annotations

import argparse
import importlib
import sys

# subcommand name -> module under localdpo.cli
COMMANDS: dict[str, str] = {
    "tasks": "tasks",
    "make-steers": "make_steers",
    "eval": "eval",
    "cache": "cache",
    "train": "train",
    "compare": "compare",
    "studio": "studio",
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="localdpo", description=__doc__.splitlines()[0])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        try:
            module = importlib.import_module(f"localdpo.cli.{module_name}")
        except ModuleNotFoundError as error:
            if error.name != f"localdpo.cli.{module_name}":
                raise
            continue  # command not built yet
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args._run(args) or 0)


if __name__ == "__main__":
    sys.exit(main())
