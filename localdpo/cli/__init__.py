"""`localdpo` command line: one module per subcommand under `localdpo.cli`.

Each command module defines `HELP` (one line), `add_arguments(parser)` and `run(args) -> int`, and keeps
its top-level imports light (torch and transformers are imported inside `run`), so `localdpo --help` is fast.

Error policy, for every command: a user's mistake (unknown preset, task or config key, a model that is
neither local nor on the hub, a missing or malformed file, a bad value) is printed as one line,
`localdpo COMMAND: what is wrong and what to do`, with exit status 2. A command raises `UsageError` for
mistakes it finds itself; the package's own input errors (`user_error_types`) are mapped here. `--debug` (or
LOCALDPO_DEBUG=1) shows the traceback instead.
"""

from __future__ import annotations

import argparse
import importlib
import os
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
    "show": "show",
    "convert": "convert",
    "export": "export",
}

USAGE_ERROR_STATUS = 2
DEBUG_ENV = "LOCALDPO_DEBUG"


class UsageError(Exception):
    """A user's mistake found by a command: printed as one line, exit status 2."""


def checked_device(name: str | None) -> str:
    """A command's `--device`, checked before any work (None: cuda when available, else cpu)."""
    import torch

    if name is None:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(name)
    except RuntimeError as error:
        raise UsageError(f"--device {name}: {error}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device {name}: CUDA is not available on this machine; use --device cpu")
    return name


def user_error_types() -> tuple[type[BaseException], ...]:
    """The exceptions that mean bad input, never a bug: each message names the input and what to do."""
    from localdpo.export.gguf import ExportError
    from localdpo.models.loading import ModelNotFoundError
    from localdpo.steers.convert import ConvertError
    from localdpo.steers.steer import SteerFileError, SteerValidationError
    from localdpo.steers.tokenization import SteerTooLongError
    from localdpo.storage.writeguard import OutputRefusedError
    from localdpo.tasks import PromptSpaceError, UnknownTaskError
    from localdpo.trainer.config import ConfigError

    return (
        UsageError,
        ConfigError,
        SteerFileError,
        SteerValidationError,
        SteerTooLongError,
        ModelNotFoundError,
        UnknownTaskError,
        PromptSpaceError,
        ConvertError,
        ExportError,
        OutputRefusedError,
        FileNotFoundError,
    )


def _debug_parent() -> argparse.ArgumentParser:
    parent = argparse.ArgumentParser(add_help=False)
    parent.add_argument(
        "--debug",
        action="store_true",
        default=argparse.SUPPRESS,
        help=f"show the traceback of an error (also: {DEBUG_ENV}=1)",
    )
    return parent


def build_parser() -> argparse.ArgumentParser:
    debug = _debug_parent()
    parser = argparse.ArgumentParser(prog="localdpo", description=__doc__.splitlines()[0], parents=[debug])
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, module_name in COMMANDS.items():
        module = importlib.import_module(f"localdpo.cli.{module_name}")
        sub = subparsers.add_parser(name, help=module.HELP, description=module.HELP, parents=[debug])
        module.add_arguments(sub)
        sub.set_defaults(_run=module.run)
    return parser


def _message(error: BaseException) -> str:
    # KeyError's str() is the repr of its argument; FileNotFoundError from open() has errno and filename.
    if isinstance(error, KeyError) and error.args:
        return str(error.args[0])
    if isinstance(error, FileNotFoundError) and error.filename is not None and error.strerror:
        return f"{error.filename}: {error.strerror.lower()}"
    return " ".join(str(error).split()) or type(error).__name__


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    debug = getattr(args, "debug", False) or os.environ.get(DEBUG_ENV, "") not in ("", "0")
    if debug:
        return int(args._run(args) or 0)
    try:
        return int(args._run(args) or 0)
    except user_error_types() as error:
        print(f"localdpo {args.command}: {_message(error)}", file=sys.stderr)
        return USAGE_ERROR_STATUS
    except KeyboardInterrupt:
        print(f"\nlocaldpo {args.command}: interrupted", file=sys.stderr)
        return 130  # 128 + SIGINT, as a shell reports it


if __name__ == "__main__":
    sys.exit(main())
