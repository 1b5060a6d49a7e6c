"""PNG plots of a comparison: task accuracy over steps per method, accuracy against drift."""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from localdpo.compare.report import RunRecord, SummaryRow
from localdpo.fileio import atomic_open


def _save(fig, path: str | Path) -> None:
    """Write `fig` as a PNG, atomically."""
    with atomic_open(path, "wb") as handle:
        fig.savefig(handle, format="png", dpi=120)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def accuracy_over_steps(records: Sequence[RunRecord], path: Path, *, metric: str = "task_accuracy") -> Path:
    """Write `draw_accuracy_over_steps` as a PNG at `path`; returns the path."""
    return _write(draw_accuracy_over_steps(records, metric=metric), path)


def accuracy_vs_drift(rows: Sequence[SummaryRow], path: Path) -> Path:
    """Write `draw_accuracy_vs_drift` as a PNG at `path`; returns the path."""
    return _write(draw_accuracy_vs_drift(rows), path)


def _write(fig, path: Path) -> Path:
    _save(fig, path)
    _pyplot().close(fig)
    return path


def draw_accuracy_over_steps(records: Sequence[RunRecord], *, metric: str = "task_accuracy"):
    """Figure: mean over seeds of `metric` (%) at each evaluated step, one line per method (labelled with it),
    band = min..max over seeds."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    by_method: dict[str, dict[int, list[float]]] = defaultdict(lambda: defaultdict(list))
    for record in records:
        for point in record.history:
            if metric in point and point[metric] is not None:
                by_method[record.method][int(point["step"])].append(float(point[metric]))
    for method, points in by_method.items():
        steps = sorted(points)
        values = [np.asarray(points[s]) * 100 for s in steps]
        mean = [v.mean() for v in values]
        ax.plot(steps, mean, marker="o", label=method)
        ax.fill_between(steps, [v.min() for v in values], [v.max() for v in values], alpha=0.15)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"{metric.replace('_', ' ')} (%)")
    ax.set_title("Held-out task accuracy during training (band: min-max over seeds)")
    ax.grid(alpha=0.3)
    if by_method:
        ax.legend()
    fig.tight_layout()
    return fig


def draw_accuracy_vs_drift(rows: Sequence[SummaryRow]):
    """Figure: final task accuracy (%) against drift KL, one point per method (labelled with it), with 95%
    intervals on both axes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    by = {(r.method, r.metric): r.value for r in rows}
    for method in dict.fromkeys(r.method for r in rows):
        acc, drift = by.get((method, "task_accuracy")), by.get((method, "drift_kl"))
        if acc is None or drift is None:
            continue
        ax.errorbar(
            drift.mean,
            acc.mean * 100,
            xerr=[[drift.mean - drift.low], [drift.high - drift.mean]],
            yerr=[[(acc.mean - acc.low) * 100], [(acc.high - acc.mean) * 100]],
            fmt="o",
            capsize=3,
            label=method,
        )
    ax.set_xlabel("drift: mean per-token KL(reference || policy) on unrelated prompts")
    ax.set_ylabel("held-out task accuracy (%)")
    ax.set_title("What each method fixes against what it damages")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig
