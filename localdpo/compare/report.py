"""Results of a comparison: per-run item metrics in, `results.csv` and `results.md` out."""

from __future__ import annotations

import csv
import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from localdpo.compare.stats import Interval, interval, paired_difference


@dataclass(frozen=True)
class Metric:
    key: str
    label: str
    higher_is_better: bool
    percent: bool = False


METRICS: tuple[Metric, ...] = (
    Metric("task_accuracy", "task accuracy", True, percent=True),
    Metric("format_kept", "format kept", True, percent=True),
    Metric("preference_accuracy", "held-out pref. acc.", True, percent=True),
    Metric("chosen_nll", "chosen-span NLL", False),
    Metric("drift_kl", "drift KL", False),
)
METRICS_BY_KEY = {m.key: m for m in METRICS}


@dataclass
class RunRecord:
    """One trained (or untrained) model's per-item results."""

    method: str
    """Label of the method as run (e.g. `ldpo`, `ldpo+sft`, `base` for the starting model)."""
    seed: int
    items: dict[str, np.ndarray]
    """Metric key -> (N,) values over that metric's held-out items (same items, same order, for every run)."""
    history: list[dict] = field(default_factory=list)
    """Evaluations during training: dicts with `step` and metric keys."""
    run_dir: str | None = None


@dataclass(frozen=True)
class SummaryRow:
    method: str
    metric: str
    value: Interval
    n_seeds: int
    n_items: int
    difference: Interval | None
    """Paired difference against the baseline method (None for the baseline itself)."""


def stack_items(records: Sequence[RunRecord], method: str, metric: str) -> np.ndarray | None:
    """(S, N) values of one metric for one method, seeds in ascending order; None if no run has it."""
    runs = sorted((r for r in records if r.method == method and metric in r.items), key=lambda r: r.seed)
    if not runs:
        return None
    lengths = {len(r.items[metric]) for r in runs}
    if len(lengths) != 1:
        raise ValueError(f"{method}/{metric}: runs disagree on the number of items {sorted(lengths)}")
    return np.stack([np.asarray(r.items[metric], dtype=np.float64) for r in runs])


def summarize(records: Sequence[RunRecord], *, baseline: str = "sft", n_boot: int = 2000) -> list[SummaryRow]:
    """Mean and 95% interval per method and metric, and the paired difference against `baseline`."""
    methods = list(dict.fromkeys(r.method for r in records))
    rows: list[SummaryRow] = []
    for method in methods:
        for metric in METRICS:
            values = stack_items(records, method, metric.key)
            if values is None:
                continue
            base = stack_items(records, baseline, metric.key) if method != baseline else None
            difference = None
            if base is not None and (base.shape == values.shape or 1 in (base.shape[0], values.shape[0])):
                difference = paired_difference(values, base, n_boot=n_boot)
            rows.append(
                SummaryRow(
                    method,
                    metric.key,
                    interval(values, n_boot=n_boot),
                    values.shape[0],
                    values.shape[1],
                    difference,
                )
            )
    return rows


def atomic_write_text(path: Path, text: str) -> None:
    """Write `text` to `path` atomically: a temporary file in the same directory, fsync, rename."""
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_csv(rows: Sequence[SummaryRow], path: Path, *, baseline: str) -> None:
    header = [
        "method",
        "metric",
        "mean",
        "ci_low",
        "ci_high",
        "n_seeds",
        "n_items",
        f"diff_vs_{baseline}",
        "diff_ci_low",
        "diff_ci_high",
        "separated",
    ]
    lines = []
    for row in rows:
        d = row.difference
        lines.append(
            [row.method, row.metric, row.value.mean, row.value.low, row.value.high, row.n_seeds, row.n_items]
            + ([d.mean, d.low, d.high, d.excludes(0.0)] if d else ["", "", "", ""])
        )
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    with os.fdopen(fd, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(lines)
    os.replace(tmp, path)


def _cell(interval_: Interval, metric: Metric) -> str:
    return interval_.format(digits=1, scale=100) if metric.percent else interval_.format(digits=4)


def _verdict(difference: Interval, metric: Metric) -> str:
    if not difference.excludes(0.0):
        return "not separated"
    better = (difference.mean > 0) == metric.higher_is_better
    return "better" if better else "worse"


def markdown_tables(rows: Sequence[SummaryRow], *, baseline: str) -> str:
    """The results table (mean [95% interval]) and the paired differences against the baseline, with verdicts."""
    methods = list(dict.fromkeys(r.method for r in rows))
    metrics = [m for m in METRICS if any(r.metric == m.key for r in rows)]
    by = {(r.method, r.metric): r for r in rows}
    header = (
        "| method | seeds | " + " | ".join(m.label + (" (%)" if m.percent else "") for m in metrics) + " |"
    )
    lines = [header, "|" + "---|" * (len(metrics) + 2)]
    for method in methods:
        seeds = max(by[(method, m.key)].n_seeds for m in metrics if (method, m.key) in by)
        cells = [_cell(by[(method, m.key)].value, m) if (method, m.key) in by else "n/a" for m in metrics]
        lines.append(f"| {method} | {seeds} | " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Paired difference against `{baseline}` (same seeds, same held-out items): mean [95% interval], verdict.",
        "",
    ]
    lines += ["| method | " + " | ".join(m.label for m in metrics) + " |", "|" + "---|" * (len(metrics) + 1)]
    for method in methods:
        if method == baseline:
            continue
        cells = []
        for m in metrics:
            row = by.get((method, m.key))
            if row is None or row.difference is None:
                cells.append("n/a")
            else:
                cells.append(f"{_cell(row.difference, m)} {_verdict(row.difference, m)}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def write_markdown(
    rows: Sequence[SummaryRow], path: Path, *, baseline: str, title: str, notes: Sequence[str]
) -> None:
    text = (
        f"# {title}\n\n"
        + markdown_tables(rows, baseline=baseline)
        + "\n"
        + "\n".join(f"- {n}" for n in notes)
        + "\n"
    )
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)
