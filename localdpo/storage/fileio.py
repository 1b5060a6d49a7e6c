"""Atomic file writes: the one way localdpo writes a file that a reader must never see half-written.

A file is written to a temporary name in its own directory, flushed and fsynced, renamed over the target
(`os.replace`, atomic on POSIX and Windows), and the directory is fsynced so the rename survives a crash; on
any failure the temporary file is removed and the target is left as it was. Readers therefore see the old
file or the new one, never a mix, even if the writer is killed mid-write. Whole directories (checkpoints, a
final model, the converted embedded model) are written the same way one level up: `atomic_directory`, or
`publish_directory` for a temporary directory filled by several processes.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def fsync_file(path: Path) -> None:
    """Flush a written file's data to disk."""
    with Path(path).open("rb") as handle:
        os.fsync(handle.fileno())


def fsync_dir(directory: Path) -> None:
    """Flush a directory's entries (a rename into it) to disk, where the platform can."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # a platform that cannot open directories (Windows): the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _umask() -> int:
    """The process's umask, read without changing it where Linux shows it (else set and restored at once)."""
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _target_mode(path: Path) -> int:
    """Permissions for the file replacing `path`: those of the file it replaces, else what `open` would give
    a new file (0o666 less the umask), never `mkstemp`'s owner-only 0o600."""
    try:
        return path.stat().st_mode & 0o7777
    except FileNotFoundError:
        return 0o666 & ~_umask()


@contextmanager
def atomic_open(
    path: str | os.PathLike,
    mode: str = "w",
    *,
    encoding: str = "utf-8",
    newline: str | None = None,
    temp_prefix: str | None = None,
    check: Callable[[Path], None] | None = None,
) -> Iterator[IO]:
    """`with atomic_open(path) as handle:` writes `path` atomically when the block ends without error.

    `mode` is `"w"` (text, `encoding`) or `"wb"`; `temp_prefix` names the temporary file (default
    `.<name>.`, hidden, ending in `.tmp`). `check(temporary_path)` reads the complete new file before it
    replaces `path`; an exception it raises leaves `path` as it was.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_open writes a whole file: mode 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=temp_prefix or f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        if hasattr(os, "fchmod"):  # POSIX
            os.fchmod(fd, _target_mode(path))
        text = "b" not in mode
        with os.fdopen(
            fd, mode, encoding=encoding if text else None, newline=newline if text else None
        ) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        if check is not None:
            check(Path(tmp))
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)


def atomic_write_bytes(path: str | os.PathLike, data: bytes, *, temp_prefix: str | None = None) -> Path:
    """Write `data` to `path` atomically; returns the path."""
    with atomic_open(path, "wb", temp_prefix=temp_prefix) as handle:
        handle.write(data)
    return Path(path)


def atomic_write_text(
    path: str | os.PathLike,
    text: str,
    *,
    encoding: str = "utf-8",
    check: Callable[[Path], None] | None = None,
) -> Path:
    """Write `text` to `path` atomically (after `check` of the new file, see `atomic_open`); returns the path."""
    with atomic_open(path, "w", encoding=encoding, check=check) as handle:
        handle.write(text)
    return Path(path)


def temporary_directory_beside(path: str | os.PathLike, *, prefix: str | None = None) -> Path:
    """A new hidden directory beside `path` (`<prefix>*.tmp`, default prefix `.<name>.`) to fill and then
    `publish_directory`; its permissions are what `mkdir` would give, not `mkdtemp`'s owner-only 0o700."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=prefix or f".{path.name}.", suffix=".tmp", dir=path.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    return tmp


def publish_directory(tmp: Path, path: str | os.PathLike, *, replace: bool = True) -> Path:
    """Move the filled directory `tmp` to `path` atomically: every file and `tmp` fsynced, then renamed in.

    An old `path` is renamed aside before the new one is renamed in, then deleted (a kill between the two
    renames leaves `path` missing and the old copy as `.<name>.*.old` beside it). With `replace=False` an
    existing `path` (a concurrent writer that won) is kept and `tmp` removed. Returns `path`.
    """
    import shutil

    path = Path(path)
    for file in tmp.rglob("*"):
        if file.is_file():
            fsync_file(file)
    fsync_dir(tmp)
    if not replace:
        try:
            os.replace(tmp, path)  # onto a non-empty directory this fails: the winner stays
        except OSError:
            if not path.exists():
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return path
        fsync_dir(path.parent)
        return path
    old = None
    if path.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".old", dir=path.parent))
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


@contextmanager
def atomic_directory(
    path: str | os.PathLike, *, replace: bool = True, temp_prefix: str | None = None
) -> Iterator[Path]:
    """`with atomic_directory(path) as tmp:` fill `tmp`; when the block ends without error it replaces the
    directory `path` (or takes its place), so a reader sees the old directory or the new one, never a mix.

    `tmp` is a hidden directory beside `path` (`temporary_directory_beside`): on an error, or a kill, only it
    is left (removed on error). The move is `publish_directory(tmp, path, replace=replace)`.
    """
    import shutil

    tmp = temporary_directory_beside(path, prefix=temp_prefix)
    try:
        yield tmp
        publish_directory(tmp, path, replace=replace)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
