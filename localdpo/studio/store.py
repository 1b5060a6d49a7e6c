"""The studio's steer file: appends, edits and deletes that never lose a row nor leave an unreadable file.

Every change is a read-modify-write of the whole file under two locks (a thread lock for this server's
requests, the file's write lock for other processes: `localdpo.storage.writeguard.write_lock`, an `flock` on
`.<name>.lock` beside the file); for its whole life the store also holds the studio's shared hold on the file
(`hold_for_studio`), so that commands refuse to write the file while a studio runs. The current lines are
read, changed, and written through `localdpo.storage.fileio.atomic_write_text`: a temporary file beside the target,
fsynced, checked with `load_steers`' rules read as the target (so id-less rows get the same default ids), and
renamed over the target. A server killed at any moment leaves the old file or the new one. Lines the studio does not change
are kept byte for byte (TRL rows, id-less rows, blank lines). A row is addressed by its id and its `version`
(a hash of its line), so an edit or delete made from a stale view (another tab changed the row) is refused,
not applied.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import threading
from dataclasses import dataclass
from pathlib import Path

from localdpo.steers.steer import Steer, SteerFileError, jsonl_rows, load_steers, steers_from_rows
from localdpo.storage.fileio import atomic_write_text
from localdpo.storage.writeguard import hold_for_studio, write_lock
from localdpo.studio.errors import StudioError


@dataclass(frozen=True)
class StoredSteer:
    """One steer of the file with where it is and the version of its line."""

    line: int
    """1-based line number."""
    version: str
    """Short sha256 of the line's text: changes whenever the row does."""
    steer: Steer


def _version(line: str) -> str:
    return hashlib.sha256(line.encode("utf-8")).hexdigest()[:16]


def _row_line(steer: Steer) -> str:
    return json.dumps(steer.to_dict(), ensure_ascii=False)


class SteerStore:
    """Reads and changes one JSONL steer file; the file is valid for `load_steers` after every change."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path).expanduser().resolve()
        self._thread_lock = threading.Lock()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._hold = hold_for_studio(self.path)  # released by `close` or when the process ends
        try:
            with self._locked():
                for stale in self.path.parent.glob(f".{self.path.name}.*.tmp"):
                    stale.unlink(missing_ok=True)  # left by a server killed mid-write
                if self.path.exists():
                    load_steers(self.path)  # refuse to start on a file that is already invalid
        except BaseException:
            self.close()
            raise

    @contextlib.contextmanager
    def _locked(self):
        with self._thread_lock, write_lock(self.path):
            yield

    def close(self) -> None:
        """Let go of the studio's hold on the file: commands may write it again."""
        if self._hold is not None:
            self._hold.close()
            self._hold = None

    def _read_lines(self) -> list[str]:
        if not self.path.exists():
            return []
        # Universal newlines, as `load_steers` reads the file, so line numbers agree.
        with self.path.open("r", encoding="utf-8") as handle:
            return [line.rstrip("\n") for line in handle]

    def _stored(self, lines: list[str]) -> list[StoredSteer]:
        steers = load_steers(self.path) if lines else []
        numbered = [(number, line) for number, line in enumerate(lines, start=1) if line.strip()]
        return [
            StoredSteer(number, _version(line), steer)
            for (number, line), steer in zip(numbered, steers, strict=True)
        ]

    def _write_lines(self, lines: list[str]) -> None:
        """Replace the file by `lines` atomically, after checking the new file with `load_steers`."""

        def check(new_file: Path) -> None:  # read as the target itself: the same default ids and messages
            try:
                steers_from_rows(jsonl_rows(new_file), self.path)
            except SteerFileError as error:
                raise StudioError(
                    409, f"{self.path}: the change would make the file invalid ({error})"
                ) from None

        atomic_write_text(self.path, "".join(line + "\n" for line in lines), check=check)

    def list(self) -> list[StoredSteer]:
        """Every steer of the file, in file order."""
        with self._locked():
            return self._stored(self._read_lines())

    def snapshot(self) -> tuple[bytes, int]:
        """The file's bytes and its number of steers, read together (a training run's copy)."""
        with self._locked():
            data = self.path.read_bytes() if self.path.exists() else b""
            return data, len(self._stored(self._read_lines()))

    def append(self, steer: Steer) -> int:
        """Add `steer` as the last row; returns the number of steers in the file."""
        with self._locked():
            lines = self._read_lines()
            lines.append(_row_line(steer))
            self._write_lines(lines)
            return sum(1 for line in lines if line.strip())

    def _find(self, lines: list[str], steer_id: str, version: str) -> StoredSteer:
        for stored in self._stored(lines):
            if stored.steer.id == steer_id:
                if stored.version != version:
                    raise StudioError(
                        409, f"steer {steer_id!r} changed since it was shown (another tab?): reload the list"
                    )
                return stored
        raise StudioError(404, f"no steer {steer_id!r} in {self.path.name}")

    def replace(self, steer_id: str, version: str, steer: Steer) -> StoredSteer:
        """Rewrite the row `steer_id` (still at `version`) as `steer`; returns the new row."""
        with self._locked():
            lines = self._read_lines()
            stored = self._find(lines, steer_id, version)
            lines[stored.line - 1] = _row_line(steer)
            self._write_lines(lines)
            return StoredSteer(stored.line, _version(lines[stored.line - 1]), steer)

    def delete(self, steer_id: str, version: str) -> None:
        """Remove the row `steer_id` (still at `version`).

        The line is left blank when a later row has no id of its own, so that its default id
        (`<stem>:<line>`) does not change.
        """
        with self._locked():
            lines = self._read_lines()
            stored = self._find(lines, steer_id, version)
            later_without_id = any(
                "id" not in json.loads(line) or json.loads(line)["id"] is None
                for line in lines[stored.line :]
                if line.strip()
            )
            if later_without_id:
                lines[stored.line - 1] = ""
            else:
                del lines[stored.line - 1]
            self._write_lines(lines)
