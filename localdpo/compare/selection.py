"""Hyperparameter selection on the validation split: score every grid point, choose one per variant.

Score of a grid point (one run, first seed, evaluated once at its end on validation data only), compared in
order: the comparison's primary metric (`localdpo.compare.report.PRIMARY_METRICS`: validation task accuracy
with a task, uptake at the validation steers without one); then higher validation preference accuracy; then
lower chosen-span NLL on the validation steers; then lower drift KL; a full tie keeps the earlier grid point
(the grid's order).

A chosen value that is the first or last of its key's grid values (grids are written in ascending order) is on
the grid's edge: the best value may lie beyond the grid, and the tables say so.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field

from localdpo.compare.metrics import METRICS_BY_KEY, PRIMARY_METRIC, score_keys


@dataclass
class GridPoint:
    """One selection run: a variant at one point of its grid and its validation metrics."""

    label: str
    point: list[str]
    """`key=value` overrides of this point."""
    metrics: dict[str, float] = field(default_factory=dict)
    run_dir: str | None = None
    primary: str = PRIMARY_METRIC
    """The comparison's primary metric, which decides first (`score_keys`)."""

    def score(self) -> tuple[float, ...]:
        """Larger is better, key by key; a metric the run lacks ranks below every measured value."""
        out = []
        for key, higher in score_keys(self.primary):
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


def edge_values(points: Sequence[Sequence[str]], chosen: Sequence[str]) -> list[str]:
    """The `key=value` overrides of `chosen` that are the first or last value of their key among `points` (one
    variant's grid points in grid order, as `SelectConfig.points` gives them), for keys with more than one value.

    E.g. points [[lr=1], [lr=2], [lr=3]]: chosen [lr=1] -> [lr=1]; chosen [lr=2] -> [].
    """
    values: dict[str, list[str]] = {}  # key -> its `key=value` items, in order of first appearance
    for point in points:
        for item in point:
            seen = values.setdefault(item.split("=", 1)[0], [])
            if item not in seen:
                seen.append(item)
    edges = []
    for item in chosen:
        seen = values.get(item.split("=", 1)[0], [])
        if len(seen) > 1 and item in (seen[0], seen[-1]):
            edges.append(item)
    return edges


def edge_note(chosen: dict[str, GridPoint], grids: dict[str, Sequence[Sequence[str]]]) -> str:
    """One sentence for a results note: the variants whose chosen value lies on its grid's edge (`edge_values`
    of `chosen[label].point` among `grids[label]`, each variant's grid points), or that none does."""
    marked = []
    for label, point in chosen.items():
        edges = edge_values(grids.get(label, []), point.point)
        if edges:
            marked.append(f"`{label}` ({' '.join(edges)})")
    if not marked:
        return "No variant's chosen value lies on the edge of its grid."
    return (
        "Chosen on the edge of the grid (the best value may lie beyond it, so that variant may not have trained "
        "at its best): " + ", ".join(marked) + "."
    )


def _fmt(value: float | None, percent: bool) -> str:
    if value is None or math.isnan(value):
        return "n/a"
    return f"{100 * value:.1f}" if percent else f"{value:.4f}"


def selection_table(points: Sequence[GridPoint], chosen: dict[str, GridPoint]) -> str:
    """Markdown: every grid point's validation scores (the `score_keys` in the order they decide), the chosen
    point of each variant in bold, marked where a chosen value lies on its grid's edge (`edge_values`)."""
    keys = score_keys(points[0].primary if points else PRIMARY_METRIC)
    metrics = [METRICS_BY_KEY[key.removeprefix("eval/")] for key, _ in keys]
    names = [
        ("" if m.key == "drift_kl" else "val. ")
        + m.label.removeprefix("held-out ")
        + (" (%)" if m.percent else "")
        for m in metrics
    ]
    lines = [
        "| variant | grid point | " + " | ".join(names) + " | chosen |",
        "|---|---|" + "---|" * len(names) + "---|",
    ]
    any_edge = False
    for point in points:
        picked = chosen.get(point.label) is point
        grid = [p.point for p in points if p.label == point.label]
        edges = edge_values(grid, point.point) if picked else []
        any_edge = any_edge or bool(edges)
        cells = [_fmt(point.metrics.get(f"eval/{m.key}"), m.percent) for m in metrics]
        where = " ".join(point.point) or "(as written)"
        mark = ("**yes**" + (f", on the grid's edge ({' '.join(edges)})" if edges else "")) if picked else ""
        lines.append(f"| {point.label} | {where} | " + " | ".join(cells) + f" | {mark} |")
    if any_edge:
        lines += [
            "",
            "On the grid's edge: the chosen value is the first or last of its grid; the best may lie beyond it.",
        ]
    return "\n".join(lines) + "\n"
