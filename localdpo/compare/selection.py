"""Hyperparameter selection on the validation split: score every grid point, choose one per variant.

Score of a grid point (one run, first seed, evaluated once at its end on validation data only), compared in
order: higher validation task accuracy; then higher validation preference accuracy; then lower chosen-span
NLL on the validation steers; then lower drift KL; a full tie keeps the earlier grid point (the grid's order).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

SCORE_KEYS: tuple[tuple[str, bool], ...] = (
    ("eval/task_accuracy", True),
    ("eval/preference_accuracy", True),
    ("eval/chosen_nll", False),
    ("eval/drift_kl", False),
)
"""(metric, higher is better), in the order they decide."""


@dataclass
class GridPoint:
    """One selection run: a variant at one point of its grid and its validation metrics."""

    label: str
    point: list[str]
    """`key=value` overrides of this point."""
    metrics: dict[str, float] = field(default_factory=dict)
    run_dir: str | None = None

    def score(self) -> tuple[float, ...]:
        """Larger is better, key by key; a metric the run lacks ranks below every measured value."""
        out = []
        for key, higher in SCORE_KEYS:
            value = self.metrics.get(key)
            if value is None or math.isnan(value):
                out.append(-math.inf)
            else:
                out.append(value if higher else -value)
        return tuple(out)


def choose(points: Sequence[GridPoint]) -> GridPoint:
    """The best point (see the module docstring); the first of equals."""
    if not points:
        raise ValueError("no grid points to choose from")
    best = points[0]
    for point in points[1:]:
        if point.score() > best.score():
            best = point
    return best


def _fmt(value: float | None, percent: bool) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{100 * value:.1f}" if percent else f"{value:.4f}"


def selection_table(points: Sequence[GridPoint], chosen: dict[str, GridPoint]) -> str:
    """Markdown: every grid point's validation scores, the chosen point of each variant in bold."""
    lines = [
        "| variant | grid point | val. task accuracy (%) | val. pref. acc. (%) | val. chosen-span NLL | drift KL | chosen |",
        "|---|---|---|---|---|---|---|",
    ]
    for point in points:
        picked = chosen.get(point.label) is point
        cells = [
            _fmt(point.metrics.get("eval/task_accuracy"), True),
            _fmt(point.metrics.get("eval/preference_accuracy"), True),
            _fmt(point.metrics.get("eval/chosen_nll"), False),
            _fmt(point.metrics.get("eval/drift_kl"), False),
        ]
        where = " ".join(point.point) or "(as written)"
        lines.append(f"| {point.label} | {where} | " + " | ".join(cells) + f" | {'**yes**' if picked else ''} |")
    return "\n".join(lines) + "\n"
