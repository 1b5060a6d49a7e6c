"""A stopped comparison resumes: every finished run keeps its record, a run cut off mid-way is done again.

A headline comparison is hundreds of training runs, hours on a CPU, so it must outlive a session that ends,
Ctrl-C and kill -9. Each run (a selection grid point or a final variant x seed) writes `record.json` into its
run directory, atomically and as its very last act: what the pipeline reads of the run (its evaluations, the
per-item values of its final evaluation, and those of the starting model when it evaluated it at step 0),
its own wall time, and its fingerprint, a flat mapping of everything that decides its numbers:

- the run's resolved config (`RunConfig`, dotted keys) less `NOT_RESULT_KEYS`, which say where and how it is
  written and shown (run_dir, cache_dir, W&B, checkpoints, the progress bar);
- the SHA-256 of each steer file it reads (`steers_train.jsonl` and `steers_heldout.jsonl`, or
  `steers_validation.jsonl` for a selection run);
- the starting model's weights and tokenizer (`localdpo.reference.fingerprint`), the device type, the localdpo version and span rule version
  and the record format.

Running the same `localdpo compare` on the same output directory again therefore keeps every run whose record
has the same fingerprint (the pipeline reads the record and does not train it), stops with one line naming
the first key that differs when a record has another fingerprint (results of two setups are never mixed:
use a new `--out`, or `--restart`), and removes the directory of a run that has no record (its partial
metrics and W&B run) before training that run again from its start. Selection is recomputed from the kept
selection records, so the final runs are the same ones; training on a CPU is deterministic and seeded per
run (`Trainer.setup`), so a resumed comparison's tables are byte-identical to an uninterrupted one's.

Before any run, the saved `compare_config.yaml` is compared with the new config (`check_config`), and steers
that the starting model made into the directory are reused only when their manifest (`steers.json`, written
after the steer files) names the same inputs and every file still has its recorded digest.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import yaml

import localdpo
from localdpo.compare.config import CompareConfig
from localdpo.config import ConfigError, read_yaml, to_dict
from localdpo.reference.fingerprint import content_hash, model_fingerprint, tokenizer_fingerprint
from localdpo.steers.tokenization import SPAN_RULE_VERSION
from localdpo.storage.fileio import atomic_write_text
from localdpo.trainer.config import RunConfig

CONFIG_NAME = "compare_config.yaml"
"""The resolved comparison config, saved in the output directory before any run."""
RECORD_NAME = "record.json"
"""A finished run's record, in its run directory."""
STEER_MANIFEST = "steers.json"
"""Written after the steers the starting model made: their inputs' key, digests and yield summaries."""
RECORD_FORMAT = 1
"""Bumped when a record's fields change meaning (older records then differ and are not kept)."""
NOT_RESULT_KEYS = ("run_dir", "cache_dir", "wandb", "checkpoint", "train.progress")
"""`RunConfig` keys (and their sub-keys) that change where and how a run is written or shown, never its
numbers: left out of fingerprints and of the comparison-config check."""
PRODUCTS = (
    "runs",
    "select",
    "steers_train.jsonl",
    "steers_heldout.jsonl",
    "steers_validation.jsonl",
    STEER_MANIFEST,
    "records.jsonl",
    "results.md",
    "results.csv",
    "accuracy_over_steps.png",
    "accuracy_vs_drift.png",
    "rounds",
    "rounds.csv",
    "accuracy_over_rounds.png",
)
"""What a comparison writes into each task directory (and the pooled tables into the output directory):
what `--restart` removes."""
HINT = "use a new --out, or --restart to start the comparison over"


class ResumeError(ConfigError):
    """The output directory holds a comparison, or a finished run, that this comparison cannot continue."""


@dataclass
class FinishedRun:
    """What the pipeline reads of a finished run: its record, whether kept from earlier or written just now."""

    run_dir: Path
    history: list[dict[str, float]]
    """Every evaluation of the run as the trainer logged it (`step` and `eval/...` keys), in order."""
    items: dict[str, np.ndarray]
    """Metric -> (N,) float64 per-item values of the final evaluation."""
    initial_items: dict[str, np.ndarray]
    """Metric -> (N,) float64 per-item values of the starting model, when this run evaluated it at step 0."""
    seconds: float
    """Wall time the run took when it was trained."""
    kept: bool
    """Read from an earlier invocation's record (not trained by this one)."""
    fingerprint: dict[str, Any]
    """What decided the run's numbers (`run_fingerprint`), as recorded."""


def flat(mapping: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested mappings as one mapping of dotted keys (`{"optim": {"lr": 1}}` -> `{"optim.lr": 1}`); lists and
    other values are leaves."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        if isinstance(value, dict) and value:
            out.update(flat(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _result_keys(values: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """`values` (dotted keys) without `NOT_RESULT_KEYS` under `prefix`, as JSON gives them back."""
    dropped = tuple(prefix + key for key in NOT_RESULT_KEYS)
    kept = {k: v for k, v in values.items() if not any(k == d or k.startswith(d + ".") for d in dropped)}
    return json.loads(json.dumps(kept))


_MISSING = object()


def _shown(value: Any) -> str:
    """A fingerprint or config value as an error message names it (a digest by its first 12 characters)."""
    if value is _MISSING:
        return "(unset)"
    if isinstance(value, str) and len(value) == 64 and all(c in "0123456789abcdef" for c in value):
        return value[:12]
    return json.dumps(value) if not isinstance(value, str) else value


def first_difference(
    old: dict[str, Any], new: dict[str, Any], defaults: dict[str, Any] | None = None
) -> str | None:
    """`key=OLD then, NEW now` for the first key (in `new`'s order, then `old`'s) whose values differ; None
    when the two flat mappings are equal. A key that `old` lacks and `new` holds at its value in `defaults` is
    no difference (a config field added to localdpo since, at the value that keeps the old behaviour)."""
    for key in dict.fromkeys([*new, *old]):
        before, after = old.get(key, _MISSING), new.get(key, _MISSING)
        if before is _MISSING and defaults is not None and key in defaults and after == defaults[key]:
            continue
        if before != after:
            return f"{key}={_shown(before)} then, {_shown(after)} now"
    return None


# ---------------------------------------------------------------------------------------------- the comparison


def comparison_keys(config: CompareConfig | dict[str, Any]) -> dict[str, Any]:
    """The comparison config's dotted keys that decide its results (not `out_dir`, not `NOT_RESULT_KEYS`)."""
    values = to_dict(config) if isinstance(config, CompareConfig) else config
    values = flat(yaml.safe_load(yaml.safe_dump(values)))  # the types a saved config reads back as
    values.pop("out_dir", None)
    return _result_keys(values, "run.")


def check_config(saved: Path, config: CompareConfig) -> None:
    """Nothing when the comparison saved at `saved` is `config` (keys that change no result aside);
    `ResumeError` naming the first key that differs otherwise."""
    saved_keys = comparison_keys(read_yaml(saved, "saved comparison config"))
    difference = first_difference(saved_keys, comparison_keys(config), comparison_keys(CompareConfig()))
    if difference is not None:
        raise ResumeError(
            f"{saved.parent} holds a comparison made with another config ({difference}): {HINT}"
        )


def clear_comparison(config: CompareConfig) -> list[Path]:
    """Remove what a comparison wrote into `config`'s output directory (`PRODUCTS` of every task directory of
    this config and of the one saved there, the saved config); the paths removed."""
    out = config.output_dir
    configs = [config]
    saved = out / CONFIG_NAME
    if saved.is_file():
        earlier = read_yaml(saved, "saved comparison config").get("task")
        if isinstance(earlier, (str, list)):
            configs.append(CompareConfig(task=earlier, out_dir=str(out)))
    directories = dict.fromkeys([out, *(c.task_dir(task) for c in configs for task in c.tasks)])
    removed = []
    for path in [*(d / name for d in directories for name in PRODUCTS), saved]:
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        elif path.exists() or path.is_symlink():
            path.unlink()
        else:
            continue
        removed.append(path)
    return removed


# ---------------------------------------------------------------------------------------------- runs


def file_digest(path: Path) -> str:
    """SHA-256 hex digest of a file's bytes."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def shared_inputs(model, tokenizer, device) -> dict[str, str | int]:
    """The fingerprint entries every run of a comparison shares: record format, localdpo version, span rule
    version, device type, starting model weights and tokenizer."""
    return {
        "record format": RECORD_FORMAT,
        "localdpo": localdpo.__version__,
        "span rule": SPAN_RULE_VERSION,
        "device": device.type,
        "starting model": model_fingerprint(model),
        "tokenizer": tokenizer_fingerprint(tokenizer),
    }


def run_fingerprint(run_config, steer_files: Iterable[Path], inputs: dict[str, Any]) -> dict[str, Any]:
    """Flat mapping of everything that decides one run's numbers (see the module docstring)."""
    config = _result_keys(flat(to_dict(run_config)))
    return {**inputs, **{path.name: file_digest(path) for path in steer_files}, **config}


def _items(values: dict[str, Any]) -> dict[str, np.ndarray]:
    return {k: np.asarray(v, dtype=np.float64).reshape(-1) for k, v in values.items()}


def _read_record(run_dir: Path) -> dict[str, Any]:
    path = run_dir / RECORD_NAME
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as error:
        raise ResumeError(
            f"{path}: unreadable record ({error}); remove {run_dir} to train that run again"
        ) from None


def _finished(record: dict[str, Any], run_dir: Path, *, kept: bool) -> FinishedRun:
    return FinishedRun(
        run_dir=run_dir,
        history=record["history"],
        items=_items(record["items"]),
        initial_items=_items(record["initial_items"]),
        seconds=float(record["seconds"]),
        kept=kept,
        fingerprint=record["fingerprint"],
    )


def write_record(
    run_dir: Path,
    fingerprint: dict[str, Any],
    *,
    history: list[dict],
    items: dict[str, Any],
    initial_items: dict[str, Any],
    seconds: float,
) -> FinishedRun:
    """Write a finished run's record atomically (the run's last act) and give back what it holds, read back
    from the file: a run trained now and a run kept later then hand the pipeline the same values."""
    record = {
        "fingerprint": fingerprint,
        "seconds": seconds,
        "history": [{k: float(v) for k, v in entry.items()} for entry in history],
        "items": {k: [float(x) for x in np.asarray(v).reshape(-1)] for k, v in items.items()},
        "initial_items": {k: [float(x) for x in np.asarray(v).reshape(-1)] for k, v in initial_items.items()},
    }
    atomic_write_text(run_dir / RECORD_NAME, json.dumps(record) + "\n")
    return _finished(_read_record(run_dir), run_dir, kept=False)


def kept_run(run_dir: Path, fingerprint: dict[str, Any], name: str) -> FinishedRun | None:
    """The run's record when it finished earlier with this `fingerprint`; None when it has no record;
    `ResumeError` naming the first difference when it finished with another."""
    if not (run_dir / RECORD_NAME).is_file():
        return None
    record = _read_record(run_dir)
    defaults = _result_keys(flat(to_dict(RunConfig())))
    difference = first_difference(
        record.get("fingerprint", {}), json.loads(json.dumps(fingerprint)), defaults
    )
    if difference is not None:
        raise ResumeError(f"{name} finished earlier under another setup ({difference}): {HINT}")
    return _finished(record, run_dir, kept=True)


def clear_partial(run_dir: Path) -> bool:
    """Remove the directory of a run cut off before its record (partial metrics, W&B run); whether there was one."""
    if (run_dir / RECORD_NAME).is_file() or not run_dir.exists():
        return False
    shutil.rmtree(run_dir)
    return True


# ---------------------------------------------------------------------------------------------- steers


def steers_key(config: CompareConfig, task: str, inputs: dict[str, Any]) -> str:
    """sha256 over what decides the steers the starting model makes for `task`: the steer settings, the
    generation batch, the validation prompts, the starting model and tokenizer, localdpo's version."""
    return content_hash(
        {
            "task": task,
            "steers": to_dict(config.steers),
            "eval_batch_size": config.eval_batch_size,
            "validation_prompts": config.select.validation_prompts if config.select is not None else None,
            **{k: inputs[k] for k in ("localdpo", "device", "starting model", "tokenizer")},
            # in rounds, the made train steers carry `round` and `rejected_by` (absent otherwise: same key)
            **({"round fields": True} if config.rounds is not None else {}),
        }
    )


def write_steer_manifest(task_dir: Path, key: str, made: dict[str, Path], summaries: dict) -> None:
    """After the made steer files are written: their inputs' `key`, digests and yield summaries."""
    manifest = {"key": key, "files": {split: file_digest(path) for split, path in made.items()}}
    atomic_write_text(task_dir / STEER_MANIFEST, json.dumps(manifest | {"summaries": summaries}) + "\n")


def made_steers(task_dir: Path, key: str) -> tuple[dict[str, Path], dict] | None:
    """`(split -> file, summaries)` of steers made earlier into `task_dir` from the same inputs `key`, every
    file whole (its digest as recorded); None when there are none to reuse."""
    path = task_dir / STEER_MANIFEST
    if not path.is_file():
        return None
    manifest = json.loads(path.read_text(encoding="utf-8"))
    files = {split: task_dir / f"steers_{split}.jsonl" for split in manifest.get("files", {})}
    if manifest.get("key") != key or not files:
        return None
    if any(not f.is_file() or file_digest(f) != manifest["files"][split] for split, f in files.items()):
        return None
    return files, manifest.get("summaries", {})
