"""Tables of a comparison in rounds (`localdpo.compare.rounds`): each metric against round, and each round's own
tables, with the same intervals and verdicts as a one-round comparison (`localdpo.compare.report`)."""

from __future__ import annotations

import csv
from collections.abc import Sequence
from pathlib import Path

from localdpo.compare.report import (
    METRICS_BY_KEY,
    STARTING_MODEL,
    SummaryRow,
    _cell,
    _difference_cell,
    csv_header,
    markdown_tables,
    summary_lines,
)
from localdpo.storage.fileio import atomic_open

ROUND_METRICS = ("task_accuracy", "recurrence", "uptake", "continuation_accuracy", "drift_kl", "yield")
"""What the overview follows from round to round (each where measured)."""


def rounds_overview(by_round: dict[int, Sequence[SummaryRow]], *, baseline: str) -> str:
    """Markdown: per metric of `ROUND_METRICS`, a table of its mean [95% interval] per variant (rows) and round
    (columns; `start`: the starting model, where it was measured), then the paired difference against
    `baseline` per round with both intervals and the verdict."""
    rounds = sorted(by_round)
    by = {(r, row.method, row.metric): row for r in rounds for row in by_round[r]}
    methods = list(dict.fromkeys(row.method for r in rounds for row in by_round[r]))
    variants = [m for m in methods if m != STARTING_MODEL]
    lines = []
    for key in ROUND_METRICS:
        if not any((r, m, key) in by for r in rounds for m in variants):
            continue
        metric = METRICS_BY_KEY[key]
        unit = " (%)" if metric.percent else ""
        start = by.get((rounds[0], STARTING_MODEL, key))
        head = ["method", *(["start"] if start else []), *(f"round {r}" for r in rounds)]
        lines += [f"### {metric.label[0].upper() + metric.label[1:]}{unit} by round", ""]
        if key == "yield":
            lines += [
                "Over each round's fresh train prompts: the share on which the model entering the round (trained "
                "on the rounds before it) still made a mistake that gave a steer; round 1's is the starting "
                "model's, the same for every variant.",
                "",
            ]
        lines += ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
        for method in variants:
            cells = [_cell(start.value, metric)] if start else []
            cells += [
                _cell(by[(r, method, key)].value, metric) if (r, method, key) in by else "n/a" for r in rounds
            ]
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines += ["", f"Paired difference against `{baseline}` (same seeds, same items), by round:", ""]
        lines += [
            "| method | " + " | ".join(f"round {r}" for r in rounds) + " |",
            "|" + "---|" * (len(rounds) + 1),
        ]
        for method in variants:
            if method == baseline:
                continue
            cells = []
            for r in rounds:
                row = by.get((r, method, key))
                cells.append(_difference_cell(row, metric) if row is not None and row.difference else "n/a")
            lines.append(f"| {method} | " + " | ".join(cells) + " |")
        lines.append("")
    return "\n".join(lines)


def rounds_markdown(by_round: dict[int, Sequence[SummaryRow]], *, baseline: str) -> str:
    """The overview by round (`rounds_overview`), then every round's own tables (`markdown_tables`, Holm
    within the round), the last round first."""
    parts = ["\n## By round\n", rounds_overview(by_round, baseline=baseline)]
    last = max(by_round)
    for r in sorted(by_round, reverse=True):
        where = " (the table at the top)" if r == last else ""
        parts += [f"\n## Round {r}{where}\n", markdown_tables(by_round[r], baseline=baseline)]
    return "\n".join(parts)


def write_rounds_csv(
    by_round: dict[int, Sequence[SummaryRow]], path: Path, *, baseline: str, task: str = ""
) -> None:
    """`rounds.csv`: `results.csv`'s columns (`csv_header`) for every round's rows, and a `round` column."""
    lines = [
        line | {"round": r}
        for r in sorted(by_round)
        for line in summary_lines(by_round[r], baseline=baseline, task=task)
    ]
    with atomic_open(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=[*csv_header(baseline), "round"], restval="")
        writer.writeheader()
        writer.writerows(lines)
