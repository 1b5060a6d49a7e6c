"""Steer records and JSONL files.

A steer is what a person produces when they stop a model mid-answer, correct one part of what it wrote and
let it resume: `prompt`, the assistant `prefix` kept as written, the model's original continuation
(`rejected`) and the correction (`chosen`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Union

from localdpo.storage.fileio import atomic_open, atomic_write_bytes
from localdpo.storage.writeguard import OutputRefusedError, WriteMode, check_output, claimed_output

Messages = list[dict[str, str]]
Prompt = Union[str, Messages]  # noqa: UP007 (a runtime alias: `|` needs Python 3.10 objects)

STEER_FIELDS = (
    "prompt",
    "prefix",
    "rejected",
    "chosen",
    "chosen_complete",
    "rejected_complete",
    "replaces",
    "rejected_by",
    "round",
    "id",
    "meta",
)


class SteerValidationError(ValueError):
    """A steer field holds a bad value; `field` names it."""

    def __init__(self, field_name: str, message: str):
        super().__init__(f"field '{field_name}': {message}")
        self.field = field_name


class SteerFileError(ValueError):
    """A row of a steer file is bad; the message names the file, the line and the field."""

    def __init__(self, path: str | os.PathLike, line: int, field_name: str | None, message: str):
        where = f"{path}:{line}"
        what = f"field '{field_name}': {message}" if field_name else message
        super().__init__(f"{where}: {what}")
        self.path = str(path)
        self.line = line
        self.field = field_name


@dataclass(frozen=True)
class Steer:
    """One correction of a model's answer at a point inside it.

    The training pair is `prompt + prefix + chosen` (preferred) against `prompt + prefix + rejected`.
    """

    prompt: Prompt
    """The user turn: plain text, or chat messages `{"role", "content"}` rendered with the chat template."""
    prefix: str
    """Assistant text written before the mistake, kept as it was (may be empty)."""
    rejected: str
    """What the model wrote from that point on (may run on past the corrected part)."""
    chosen: str
    """The correction from that point on; may be partial (need not reach the end of the answer)."""
    chosen_complete: bool = False
    """The correction ends the answer: the end-of-turn token is appended to `chosen`."""
    rejected_complete: bool = False
    """The rejected text ends the answer too (whole-answer preference rows); steers leave this False."""
    replaces: int | None = None
    """Characters at the start of `rejected` that the correction replaces: the mistake itself, as its maker
    knew it (a task checker in `make-steers`); what follows is the model's run-on. None (or 0, an inserted
    item): not known, the span rule finds the edit's extent from the tokens alone."""
    rejected_by: str | None = None
    """The model that wrote `rejected`, as `<name>@<fingerprint digest>` (`localdpo.reference.fingerprint`): steers of
    one round are the mistakes of one model, so a person's rounds can be told apart. None: not recorded."""
    round: int | None = None
    """Steering round the steer belongs to (1 = steers of the starting model; r = steers of the model trained
    on rounds 1..r-1). None: not part of a sequence of rounds."""
    id: str | None = None
    """Stable identifier; caches and results point back to it."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Free-form metadata (task, the model's full output, ...)."""

    def __post_init__(self) -> None:
        validate_steer(self)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_str(name: str, value: Any) -> None:
    if not isinstance(value, str):
        raise SteerValidationError(name, f"expected a string, got {type(value).__name__}")


def _check_messages(messages: list) -> None:
    if not messages:
        raise SteerValidationError("prompt", "message list is empty")
    for i, message in enumerate(messages):
        if not isinstance(message, dict):
            raise SteerValidationError(
                "prompt", f"message {i} is {type(message).__name__}, expected an object"
            )
        for key in ("role", "content"):
            if not isinstance(message.get(key), str):
                raise SteerValidationError("prompt", f"message {i} needs a string '{key}'")


def validate_steer(steer: Steer) -> None:
    """Raise `SteerValidationError` naming the first bad field of `steer`."""
    if isinstance(steer.prompt, list):
        _check_messages(steer.prompt)
    elif isinstance(steer.prompt, str):
        if not steer.prompt:
            raise SteerValidationError("prompt", "is empty")
    else:
        raise SteerValidationError(
            "prompt", f"expected a string or a list of messages, got {type(steer.prompt).__name__}"
        )
    for name in ("prefix", "rejected", "chosen"):
        _check_str(name, getattr(steer, name))
    for name in ("chosen_complete", "rejected_complete"):
        if not isinstance(getattr(steer, name), bool):
            raise SteerValidationError(name, f"expected a bool, got {type(getattr(steer, name)).__name__}")
    if steer.replaces is not None and (
        isinstance(steer.replaces, bool)
        or not isinstance(steer.replaces, int)
        or not 0 <= steer.replaces <= len(steer.rejected)
    ):
        raise SteerValidationError(
            "replaces", f"expected null or a character count in [0, {len(steer.rejected)}], got {steer.replaces!r}"
        )
    if steer.rejected_by is not None and (not isinstance(steer.rejected_by, str) or not steer.rejected_by):
        raise SteerValidationError("rejected_by", f"expected null or a non-empty string, got {steer.rejected_by!r}")
    if steer.round is not None and (
        isinstance(steer.round, bool) or not isinstance(steer.round, int) or steer.round < 1
    ):
        raise SteerValidationError("round", f"expected null or a round number >= 1, got {steer.round!r}")
    if steer.id is not None and not isinstance(steer.id, str):
        raise SteerValidationError("id", f"expected a string, got {type(steer.id).__name__}")
    if not isinstance(steer.meta, dict):
        raise SteerValidationError("meta", f"expected an object, got {type(steer.meta).__name__}")
    if not steer.chosen and not steer.chosen_complete:
        raise SteerValidationError(
            "chosen", "is empty (a correction needs text, or chosen_complete=true to end the answer)"
        )
    if steer.chosen == steer.rejected and steer.chosen_complete == steer.rejected_complete:
        raise SteerValidationError("chosen", "is identical to rejected: nothing was corrected")


def common_prefix_length(a: str, b: str) -> int:
    """Length of the longest common prefix of two strings."""
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i


def _assistant_text(value: Any, name: str) -> str:
    """A TRL completion is a string or a list holding one assistant message."""
    if isinstance(value, str):
        return value
    if isinstance(value, list) and len(value) == 1 and isinstance(value[0], dict):
        if value[0].get("role") != "assistant" or not isinstance(value[0].get("content"), str):
            raise SteerValidationError(name, "expected one assistant message with string content")
        return value[0]["content"]
    raise SteerValidationError(
        name, f"expected a string or one assistant message, got {type(value).__name__}"
    )


def steer_from_row(row: dict[str, Any], *, default_id: str | None = None) -> Steer:
    """Build a steer from a JSON object: a steer row, or a TRL-style `prompt`/`chosen`/`rejected` row.

    A TRL row (no `prefix` key) holds two whole answers: their longest common prefix becomes `prefix`,
    and both sides are complete (each ends with the end-of-turn token).
    """
    if not isinstance(row, dict):
        raise SteerValidationError("<row>", f"expected a JSON object, got {type(row).__name__}")
    unknown = sorted(set(row) - set(STEER_FIELDS))
    if unknown:
        raise SteerValidationError(unknown[0], f"unknown field (known: {', '.join(STEER_FIELDS)})")
    for name in ("prompt", "chosen", "rejected"):
        if name not in row:
            raise SteerValidationError(name, "is missing")
    meta = row.get("meta", {})
    if "prefix" in row:
        values = dict(row)
    else:
        chosen = _assistant_text(row["chosen"], "chosen")
        rejected = _assistant_text(row["rejected"], "rejected")
        cut = common_prefix_length(chosen, rejected)
        values = dict(row, prefix=chosen[:cut], chosen=chosen[cut:], rejected=rejected[cut:])
        values.setdefault("chosen_complete", True)
        values.setdefault("rejected_complete", True)
        meta = dict(meta) if isinstance(meta, dict) else meta
        if isinstance(meta, dict):
            meta.setdefault("source_format", "trl_preference")
    values["meta"] = meta
    if values.get("id") is None and default_id is not None:
        values["id"] = default_id
    return Steer(**{k: values[k] for k in STEER_FIELDS if k in values})


@dataclass
class LoadReport:
    """What `load_steers` read: rows kept and rows skipped with the reason for each."""

    path: str
    loaded: int = 0
    skipped: list[tuple[int, str]] = field(default_factory=list)
    """(line number, error message) for every skipped row."""

    def summary(self) -> str:
        text = f"{self.path}: loaded {self.loaded} steers, skipped {len(self.skipped)} bad rows"
        for line, message in self.skipped[:20]:
            text += f"\n  line {line}: {message}"
        if len(self.skipped) > 20:
            text += f"\n  ... and {len(self.skipped) - 20} more"
        return text


RowSource = Iterable[tuple[int, Any]]
"""(line number, parsed row) pairs; a row may be a `SteerFileError` already found while reading it."""


def jsonl_rows(path: str | os.PathLike) -> Iterator[tuple[int, Any]]:
    """`(line number, parsed JSON)` for every non-blank line of a JSONL file.

    A line that is not valid UTF-8 or not valid JSON gives a `SteerFileError` in place of its row (naming the
    file, the line and, for bad bytes, the byte's offset in the file), so a caller can skip it and go on.
    """
    path = Path(path)
    offset = 0  # byte offset of the current line's start in the file
    with path.open("rb") as handle:
        for line_number, raw in enumerate(handle, start=1):
            line_start, offset = offset, offset + len(raw)
            try:
                line = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield (
                    line_number,
                    SteerFileError(
                        path,
                        line_number,
                        None,
                        f"invalid UTF-8: byte 0x{raw[error.start]:02x} at byte offset {line_start + error.start} "
                        f"of the file (column {error.start + 1} of the line); save the file as UTF-8",
                    ),
                )
                continue
            if not line.strip():
                continue
            try:
                yield line_number, json.loads(line)
            except json.JSONDecodeError as error:
                yield (
                    line_number,
                    SteerFileError(
                        path, line_number, None, f"invalid JSON ({error.msg} at column {error.colno})"
                    ),
                )


def default_steer_id(source: str | os.PathLike, line: int) -> str:
    """`"<source stem>:<line>"`: the id of a row that has none of its own."""
    return f"{Path(source).stem}:{line}"


def steers_from_rows(
    rows: RowSource,
    source: str | os.PathLike,
    *,
    to_steer: Callable[..., Steer] = steer_from_row,
    skip_invalid: bool = False,
) -> tuple[list[Steer], LoadReport]:
    """Steers made from `rows` by `to_steer(row, default_id=...)`, with `load_steers`' checks and report.

    Rows without an `id` get `"<source stem>:<line>"`; ids must be unique. A bad row raises `SteerFileError`
    naming the source, the line and the field, or with `skip_invalid=True` is listed in the report instead.
    """
    steers: list[Steer] = []
    report = LoadReport(path=str(source))
    seen_ids: dict[str, int] = {}
    for line_number, row in rows:
        try:
            if isinstance(row, SteerFileError):
                raise row
            try:
                steer = to_steer(row, default_id=default_steer_id(source, line_number))
            except SteerValidationError as error:
                raise SteerFileError(source, line_number, error.field, str(error).split(": ", 1)[1]) from None
            except TypeError as error:
                raise SteerFileError(source, line_number, None, str(error)) from None
            if steer.id in seen_ids:
                raise SteerFileError(
                    source,
                    line_number,
                    "id",
                    f"duplicate id {steer.id!r} (first on line {seen_ids[steer.id]})",
                )
        except SteerFileError as error:
            if not skip_invalid:
                raise
            report.skipped.append((line_number, str(error)))
            continue
        seen_ids[steer.id] = line_number
        steers.append(steer)
    report.loaded = len(steers)
    return steers, report


def load_steers(
    path: str | os.PathLike,
    *,
    skip_invalid: bool = False,
    return_report: bool = False,
) -> list[Steer] | tuple[list[Steer], LoadReport]:
    """Steers read from a JSONL file (UTF-8), one per non-blank line.

    Steers without an `id` get `"<file stem>:<line>"`. A bad row (bad bytes, bad JSON, a bad field, a
    duplicate id) raises `SteerFileError` naming the file, line and field; with `skip_invalid=True` bad rows
    are skipped instead, and the report (printed as a warning, returned with `return_report=True`) lists how
    many and which.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"steer file not found: {path}")
    steers, report = steers_from_rows(jsonl_rows(path), path, skip_invalid=skip_invalid)
    if report.skipped:
        import warnings

        warnings.warn(report.summary(), stacklevel=2)
    return (steers, report) if return_report else steers


def _steer_line(steer: Steer) -> str:
    return json.dumps(steer.to_dict(), ensure_ascii=False) + "\n"


def save_steers(steers: Iterable[Steer], path: str | os.PathLike) -> Path:
    """Write steers as JSONL atomically (temporary file, then rename); returns the path."""
    path = Path(path)
    with atomic_open(path) as handle:
        for steer in steers:
            handle.write(_steer_line(steer))
    return path


def _ids_to_append_to(path: Path, shown: str) -> set[str]:
    """The ids of the steer file `path`, which `--append` would extend; `OutputRefusedError` if it is bad."""
    try:
        return {steer.id for steer in load_steers(path)}
    except SteerFileError as error:
        raise OutputRefusedError(
            f"cannot append to {shown}: {error}; fix it or choose another path"
        ) from None


def check_steer_output(
    path: str | os.PathLike, mode: WriteMode | str, *, inputs: Iterable[str | os.PathLike] = ()
) -> Path:
    """`write_steers`' refusals now, before a command's slow work (an invalid file to append to included);
    returns the resolved path."""
    target = check_output(path, mode, inputs=inputs, steer_file=True)
    if WriteMode(mode) is WriteMode.APPEND and target.exists():
        _ids_to_append_to(target, str(path))
    return target


def _append_steers(steers: list[Steer], path: Path, shown: str) -> Path:
    """Add `steers` after the rows of the steer file `path`, whose bytes stay as they are; returns the path.

    Called inside `claimed_output`, which holds the file's write lock (the one the studio takes for each
    change) when appending. The file is read and checked, each new id (a default id at its new line for an
    id-less steer) must be new to the file and to the batch, and the old bytes plus the new rows are written
    as a whole new file, atomically. A crash leaves the old file or the new one: never half the batch, nor a
    torn last line (which an `O_APPEND` write cut short by a crash can leave, even fsynced, and which makes
    the whole file unreadable). The cost is a copy of the old file.
    """
    old = path.read_bytes() if path.exists() else b""
    ids = _ids_to_append_to(path, shown) if old else set()
    if old and not old.endswith(b"\n"):
        old += b"\n"
    first_line = old.count(b"\n") + 1
    new_ids: set[str] = set()
    for line, steer in enumerate(steers, start=first_line):
        steer_id = steer.id if steer.id is not None else default_steer_id(path, line)
        if steer_id in ids or steer_id in new_ids:
            where = "the file has" if steer_id in ids else "two of the new steers have"
            raise OutputRefusedError(
                f"cannot append to {shown}: {where} the id {steer_id!r}; nothing was written"
            )
        new_ids.add(steer_id)
    return atomic_write_bytes(path, old + "".join(map(_steer_line, steers)).encode("utf-8"))


def write_steers(
    steers: Iterable[Steer],
    path: str | os.PathLike,
    *,
    mode: WriteMode | str = WriteMode.OVERWRITE,
    inputs: Iterable[str | os.PathLike] = (),
) -> Path:
    """Write `steers` to the steer file `path` as `mode` says (create, overwrite or append), after the checks
    of `localdpo.storage.writeguard.claimed_output` (an input of the command, a file a studio holds, an existing file
    under `create`); returns the resolved path."""
    steers = list(steers)
    with claimed_output(path, mode, inputs=inputs, steer_file=True) as target:
        if WriteMode(mode) is WriteMode.APPEND:
            return _append_steers(steers, target, str(path))
        return save_steers(steers, target)
