"""Steer files from the preference formats researchers already hold.

Sources (`read_rows`): a JSONL file (read here, so bad bytes and bad JSON get their line), or anything Hugging
Face `datasets` loads: a local JSON, Parquet or CSV file, or a hub dataset id (`datasets` is imported only for
these). Row formats (`RowFormat`), recognised per row under `auto`:

- steer rows (`prefix` present): as `load_steers` reads them;
- TRL preference rows: `prompt`/`chosen`/`rejected` (explicit prompt), or only `chosen`/`rejected` (implicit
  prompt: the shared start of both, as TRL's `extract_prompt` finds it), each plain text or conversational;
- Step-DPO rows: `prompt`, `initial_reason_steps` (the steps before the first wrong one: the prefix),
  `chosen`, `rejected` (the corrected and the wrong step).

A column mapping (`parse_mapping("prompt=question,chosen=good")`) names the source column of each steer field
first. Columns that are not steer fields are kept in `meta`. Every row is checked as `load_steers` checks it
(`localdpo.steers.steer.steers_from_rows`); a bad row is reported with its line (JSONL) or row number (other sources).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from functools import partial
from pathlib import Path
from typing import Any

from localdpo.steers.steer import (
    STEER_FIELDS,
    LoadReport,
    Steer,
    SteerValidationError,
    jsonl_rows,
    steer_from_row,
    steers_from_rows,
    write_steers,
)
from localdpo.storage.writeguard import WriteMode

STEP_DPO_PREFIX = "initial_reason_steps"
# What `datasets.load_dataset` calls the builder for each local file suffix.
DATASETS_BUILDERS = {".json": "json", ".parquet": "parquet", ".csv": "csv"}


class ConvertError(ValueError):
    """A source that cannot be read, or a column mapping that does not parse."""


class RowFormat(str, Enum):
    """How a source row becomes a steer."""

    AUTO = "auto"
    """Per row: `initial_reason_steps` -> Step-DPO, `prefix` -> steer, otherwise TRL."""
    STEER = "steer"
    TRL = "trl"
    STEP_DPO = "step-dpo"


def parse_mapping(text: str | None) -> dict[str, str]:
    """`{source column: steer field}` from `"field=column,field=column"` (e.g. `prompt=question,chosen=good`)."""
    if not text:
        return {}
    mapping: dict[str, str] = {}
    targets = (*STEER_FIELDS, STEP_DPO_PREFIX)
    for item in text.split(","):
        target, sep, column = (part.strip() for part in item.partition("="))
        if not sep or not target or not column:
            raise ConvertError(f"--map {item!r}: expected FIELD=COLUMN, e.g. prompt=question")
        if target not in targets:
            raise ConvertError(f"--map {item!r}: unknown field {target!r} (fields: {', '.join(targets)})")
        if target in mapping.values():
            raise ConvertError(f"--map: field {target!r} is mapped twice")
        mapping[column] = target
    return mapping


def read_rows(
    source: str | os.PathLike, *, split: str = "train", subset: str | None = None
) -> Iterator[tuple[int, Any]]:
    """`(line or row number, row)` of a JSONL file, a local JSON / Parquet / CSV file, or a hub dataset."""
    path = Path(source)
    if path.is_file() and path.suffix == ".jsonl":
        yield from jsonl_rows(path)
        return
    if path.is_file():
        builder = DATASETS_BUILDERS.get(path.suffix)
        if builder is None:
            raise ConvertError(
                f"{path}: unknown file type {path.suffix!r}; expected .jsonl, {', '.join(DATASETS_BUILDERS)}"
            )
        dataset = _load_dataset(str(source), builder, data_files=str(path), split="train")
    elif path.suffix in (".jsonl", *DATASETS_BUILDERS) or str(source).startswith((".", "/", "~")):
        raise FileNotFoundError(f"source file not found: {source}")
    else:
        _check_hub_reachable(str(source))
        dataset = _load_dataset(str(source), str(source), name=subset, split=split)
    yield from enumerate(dataset, start=1)


def _check_hub_reachable(dataset_id: str) -> None:
    """`ConvertError` at once when the hub cannot be reached (instead of ~30 s of retries), unless offline mode
    is on: then `datasets` reads its own cache."""
    from localdpo.models.loading import hub_offline, hub_unreachable

    if hub_offline():
        return
    unreachable = hub_unreachable()
    if unreachable:
        raise ConvertError(
            f"{dataset_id}: not a local file, and {unreachable} (for a dataset in your cache: HF_HUB_OFFLINE=1)"
        )


def _load_dataset(label: str, *args, **kwargs):
    """`datasets.load_dataset(*args, **kwargs)`; a source it cannot load becomes `ConvertError` naming it."""
    try:
        import datasets
    except ImportError:
        raise ConvertError(
            f"{label}: reading it needs the `datasets` package (pip install datasets)"
        ) from None
    try:
        return datasets.load_dataset(*args, **kwargs)
    except Exception as error:
        # no such dataset or split, an unparsable file, a failed download: the message names the source
        first_line = (str(error).strip().splitlines() or [type(error).__name__])[0]
        raise ConvertError(f"{label}: `datasets` cannot load it ({first_line})") from error


def _implicit_prompt(chosen: Any, rejected: Any) -> tuple[Any, Any, Any]:
    """`(prompt, chosen, rejected)` of a TRL row without `prompt`: the shared start is the prompt (TRL's rule).

    Conversational rows share their leading messages; plain rows their leading characters, given back to
    the answers when the shared part ends in a space (so the answers keep their first word whole).
    """
    if isinstance(chosen, list) and isinstance(rejected, list):
        cut = 0
        while cut < min(len(chosen), len(rejected)) and chosen[cut] == rejected[cut]:
            cut += 1
        return chosen[:cut], chosen[cut:], rejected[cut:]
    if isinstance(chosen, str) and isinstance(rejected, str):
        cut = 0
        while cut < min(len(chosen), len(rejected)) and chosen[cut] == rejected[cut]:
            cut += 1
        if cut and chosen[cut - 1] == " ":
            cut -= 1
        return chosen[:cut], chosen[cut:], rejected[cut:]
    raise SteerValidationError("chosen", "an implicit-prompt row needs two strings or two message lists")


def _json_value(value: Any) -> Any:
    return json.loads(json.dumps(value, default=str))


def row_to_steer(
    row: Any, *, default_id: str | None = None, row_format: RowFormat = RowFormat.AUTO, mapping=None
) -> Steer:
    """The steer of one source row (see the module docstring); `SteerValidationError` names the bad field."""
    if not isinstance(row, dict):
        raise SteerValidationError("<row>", f"expected an object, got {type(row).__name__}")
    mapping = mapping or {}
    for column, target in mapping.items():
        if column not in row:
            raise SteerValidationError(target, f"source column {column!r} (mapped to {target}) is missing")
    renamed: dict[str, Any] = {}
    extra: dict[str, Any] = {}  # columns kept in meta
    for column, value in row.items():
        if column in mapping:
            renamed[mapping[column]] = value
        elif column in mapping.values():
            extra[column] = value  # its name is a field that another column is mapped to
        else:
            renamed[column] = value
    if row_format is RowFormat.AUTO:
        if STEP_DPO_PREFIX in renamed:
            row_format = RowFormat.STEP_DPO
        elif "prefix" in renamed:
            row_format = RowFormat.STEER
        else:
            row_format = RowFormat.TRL
    if row_format is RowFormat.STEP_DPO:
        if STEP_DPO_PREFIX not in renamed:
            raise SteerValidationError(
                STEP_DPO_PREFIX, "is missing (a Step-DPO row's steps before the wrong one)"
            )
        renamed["prefix"] = renamed.pop(STEP_DPO_PREFIX)
    elif row_format is RowFormat.TRL:
        if "prefix" in renamed:
            raise SteerValidationError("prefix", "a TRL row has no prefix (use --format steer or auto)")
        if "prompt" not in renamed and "chosen" in renamed and "rejected" in renamed:
            renamed["prompt"], renamed["chosen"], renamed["rejected"] = _implicit_prompt(
                renamed["chosen"], renamed["rejected"]
            )
    elif row_format is not RowFormat.STEER:
        raise ValueError(f"unhandled row format {row_format!r}")
    values = {key: value for key, value in renamed.items() if key in STEER_FIELDS}
    extra.update({key: value for key, value in renamed.items() if key not in STEER_FIELDS})
    extra = {key: _json_value(value) for key, value in extra.items()}
    meta = values.get("meta", {})
    if not isinstance(meta, dict):
        raise SteerValidationError("meta", f"expected an object, got {type(meta).__name__}")
    values["meta"] = {**extra, **meta, "source_format": row_format.value}
    if isinstance(values.get("id"), int) and not isinstance(values["id"], bool):
        values["id"] = str(values["id"])
    return steer_from_row(values, default_id=default_id)


@dataclass
class ConvertResult:
    """What `convert_steers` read and wrote."""

    steers: list[Steer]
    report: LoadReport
    """Rows converted and bad rows, each with its line (or row number) and why."""
    written: Path | None
    """The steer file, or None when bad rows stopped the write (`skip_invalid=False`) or no row converted."""


def convert_steers(
    source: str | os.PathLike,
    out: str | os.PathLike,
    *,
    row_format: RowFormat | str = RowFormat.AUTO,
    mapping: dict[str, str] | None = None,
    split: str = "train",
    subset: str | None = None,
    skip_invalid: bool = False,
    mode: WriteMode | str = WriteMode.OVERWRITE,
) -> ConvertResult:
    """Convert every row of `source` to a steer and write them to `out` (JSONL, atomically).

    Every row is checked; with bad rows and `skip_invalid=False` nothing is written and the report lists
    each of them. With `skip_invalid=True` the good rows are written and the bad ones listed. `mode` says what
    to do with an existing `out` (`localdpo.steers.steer.write_steers`); `out` may never be `source`.
    """
    to_steer = partial(row_to_steer, row_format=RowFormat(row_format), mapping=mapping)
    rows = read_rows(source, split=split, subset=subset)
    steers, report = steers_from_rows(rows, source, to_steer=to_steer, skip_invalid=True)
    written = None
    if steers and (skip_invalid or not report.skipped):
        written = write_steers(steers, out, mode=mode, inputs=(source,))
    return ConvertResult(steers, report, written)
