"""May a command write this path: the one check before any `localdpo` command writes a file, and the steer
file's locks that `localdpo studio` holds.

A command never replaces a file by accident. `claimed_output` checks the path when the command starts (before
any slow work) and again when it writes, and refuses, with one line that names the path and the choices
(`OutputRefusedError`: exit status 2 from the CLI):

1. a directory (a command that writes a directory, `localdpo export`, says `directory=True`: then a file);
2. a path that is also an input of the same command (the same file: `./a.jsonl`, `a.jsonl`, a symlink or a
   hard link to it; for a directory output, also an input inside it), even with `--overwrite`;
3. a file that a running `localdpo studio` holds (it saves a person's steers there), even with `--overwrite`;
4. an existing file, unless the command is told `--overwrite` (replace it, atomically) or, for a steer file,
   `--append` (`localdpo.steers.steer.write_steers`).

The studio's locks are `flock`s on two files beside the steer file, both left in place:

- `.<name>.lock`, the write lock: exclusive, held for each read-modify-write of the file by every studio
  (`localdpo.studio.store`), and by a command while it appends or writes a file a studio has opened before,
  so that writers take turns and no row is lost;
- `.<name>.studio.lock`, the studio's hold: shared, held by each studio on the file for as long as it runs.
  A command that would write the file tries to take it exclusively without waiting; failing means a studio
  holds it. (The write lock alone cannot say so: a studio holds it for milliseconds per saved steer.)

Without `fcntl` (not POSIX) there are no locks: a studio's own requests are still serialized by its thread
lock, and commands cannot see a running studio.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from enum import Enum
from pathlib import Path
from typing import IO

try:
    import fcntl
except ImportError:  # not POSIX: no locks (module docstring)
    fcntl = None


class WriteMode(str, Enum):
    """What a command does with an output path that already holds a file."""

    CREATE = "create"
    """Refuse it (every command's default)."""
    OVERWRITE = "overwrite"
    """Replace it atomically (`--overwrite`)."""
    APPEND = "append"
    """Steer files only: add the new steers after its rows (`--append`); a missing file is created."""


class OutputRefusedError(ValueError):
    """A command may not write this path; the message is one line naming the path and the choices."""


def write_lock_path(path: str | os.PathLike) -> Path:
    """`.<name>.lock` beside the resolved `path`: the write lock."""
    path = Path(path).expanduser().resolve()
    return path.with_name(f".{path.name}.lock")


def studio_hold_path(path: str | os.PathLike) -> Path:
    """`.<name>.studio.lock` beside the resolved `path`: the studio's hold."""
    path = Path(path).expanduser().resolve()
    return path.with_name(f".{path.name}.studio.lock")


@contextmanager
def write_lock(path: str | os.PathLike) -> Iterator[None]:
    """Hold the write lock of `path` (exclusive, waiting for it) for the block."""
    if fcntl is None:
        yield
        return
    with open(write_lock_path(path), "a") as handle:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle.fileno(), fcntl.LOCK_UN)


def hold_for_studio(path: str | os.PathLike) -> IO | None:
    """Take a studio's hold on the steer file `path` (shared, waiting for a command's write to end); it lasts
    until the returned handle is closed or the process ends. None without `fcntl`."""
    if fcntl is None:
        return None
    # Readable and writable (`flock` over NFS needs both); the handle outlives this call, so no `with`.
    handle = open(studio_hold_path(path), "a+")  # noqa: SIM115
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_SH)
    except BaseException:
        handle.close()
        raise
    return handle


def _open_hold(hold: Path) -> int | None:
    """A descriptor of the studio's hold file `hold`, None when no studio ever opened the steer file."""
    try:
        return os.open(hold, os.O_RDWR)
    except FileNotFoundError:
        return None
    except PermissionError:  # another user's studio made it; a local `flock` needs no write access
        return os.open(hold, os.O_RDONLY)


@contextmanager
def _locked_against_studio(target: Path, shown: str, *, append: bool) -> Iterator[None]:
    """For the block: the write lock of `target`, and the studio's hold taken exclusively without waiting;
    `OutputRefusedError` when a running studio holds it.

    The write lock comes first, so that two commands take turns and a failed attempt on the hold can only mean
    a studio. Both are skipped (no lock file made) for a file no studio has ever opened, unless appending:
    a studio takes its hold before it writes, so one starting now loses nothing.
    """
    hold = studio_hold_path(target)
    if fcntl is None or not (append or hold.exists()):
        yield
        return
    with write_lock(target):
        fd = _open_hold(hold)
        if fd is None:
            yield
            return
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise OutputRefusedError(
                    f"{shown} is held by a running `localdpo studio` (it saves a person's steers there); "
                    "stop the studio or choose another path"
                ) from None
            yield
        finally:
            os.close(fd)  # releases the hold


def _same_file(target: Path, other: str | os.PathLike) -> bool:
    """Whether `other` names the file `target` (same inode when both exist, else the same resolved path)."""
    other = Path(other).expanduser()
    try:
        return os.path.samefile(target, other)
    except OSError:  # one of them does not exist (or `other` is no path at all, e.g. a hub dataset id)
        return target == other.resolve()


def _inside(target: Path, other: str | os.PathLike) -> bool:
    """Whether `other` is an existing path inside the directory `target` (replacing `target` would delete
    it); a name that is no path here (a hub model id) is not."""
    other = Path(other).expanduser()
    return other.exists() and other.resolve().is_relative_to(target)


@contextmanager
def claimed_output(
    path: str | os.PathLike,
    mode: WriteMode | str = WriteMode.CREATE,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    steer_file: bool = False,
    directory: bool = False,
) -> Iterator[Path]:
    """The resolved `path`, checked as the module docstring says, kept from a studio starting on it and held
    under its write lock (`_locked_against_studio`) while the block writes it.

    A symlink resolves to its target, so `--overwrite` replaces the target and the link stays. The checks
    read nothing of an existing file but its name and inode, and create no file but the write lock's when
    appending. `directory`: the output is a directory, which the block replaces whole (an existing file there
    is refused, and so is an input inside it).
    """
    mode = WriteMode(mode)
    if mode is WriteMode.APPEND and not steer_file:
        raise ValueError("WriteMode.APPEND is for steer files only")
    shown = str(path)
    target = Path(path).expanduser().resolve()
    if target.is_dir() and not directory:
        raise OutputRefusedError(f"{shown} is a directory; give a file path")
    if directory and target.exists() and not target.is_dir():
        raise OutputRefusedError(f"{shown} is a file; give a directory path")
    for source in inputs:
        flags = "--overwrite and --append do not apply" if steer_file else "--overwrite does not apply"
        if _same_file(target, source):
            raise OutputRefusedError(
                f"{shown} is also this command's input ({source}); write to another path ({flags})"
            )
        if directory and _inside(target, source):
            raise OutputRefusedError(
                f"{shown} holds this command's input ({source}), which replacing it would delete; write to "
                f"another path ({flags})"
            )
    with _locked_against_studio(target, shown, append=mode is WriteMode.APPEND):
        if mode is WriteMode.CREATE and target.exists():
            choices = "--overwrite to replace it"
            if steer_file:
                choices += ", --append to add the new steers to it"
            raise OutputRefusedError(f"{shown} exists; pass {choices}, or choose another path")
        yield target


def check_output(
    path: str | os.PathLike,
    mode: WriteMode | str = WriteMode.CREATE,
    *,
    inputs: Iterable[str | os.PathLike] = (),
    steer_file: bool = False,
    directory: bool = False,
) -> Path:
    """`claimed_output`'s checks now (before a command's slow work); returns the resolved path."""
    with claimed_output(path, mode, inputs=inputs, steer_file=steer_file, directory=directory) as target:
        return target


def add_write_mode_arguments(parser: argparse.ArgumentParser, *, what: str, steer_file: bool) -> None:
    """`--overwrite` (and for a steer file `--append`, exclusive of it) for a command that writes `what`."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        "--overwrite",
        action="store_true",
        help=f"replace {what} if it exists (default: refuse an existing file)",
    )
    if steer_file:
        group.add_argument(
            "--append",
            action="store_true",
            help=f"add the new steers to {what} if it exists (ids must stay unique)",
        )


def write_mode_of(args: argparse.Namespace) -> WriteMode:
    """The `WriteMode` of a command's `--overwrite` / `--append` flags."""
    if getattr(args, "append", False):
        return WriteMode.APPEND
    return WriteMode.OVERWRITE if args.overwrite else WriteMode.CREATE
