"""PNG plots of a comparison: task accuracy over steps per method, accuracy against drift.

Every plot draws a method in the colour and marker `method_style` gives it, so a method looks the same in
each figure (and in the notebooks' W&B curves, `localdpo.compare.results.plot_curves`).
"""

from __future__ import annotations

import zlib
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


# method (variant label) -> (colour, marker); tab10 colours. Labels not listed take a style from
# `_OTHER_STYLES` chosen by a hash of the label, so they too look the same in every plot.
METHOD_STYLES: dict[str, tuple[str, str]] = {
    "base": ("#7f7f7f", "s"),
    "sft": ("#1f77b4", "o"),
    "ldpo": ("#ff7f0e", "^"),
    "ldpo+sft": ("#2ca02c", "D"),
    "dpo": ("#d62728", "v"),
    "sft_full": ("#9467bd", "P"),
    "sft_completion": ("#17becf", "p"),
    "ldpo_apo_zero": ("#8c564b", "X"),
    "ldpo_dpop": ("#e377c2", "*"),
}
_OTHER_STYLES: tuple[tuple[str, str], ...] = (
    ("#bcbd22", "h"),
    ("#000000", "<"),
    ("#aec7e8", ">"),
    ("#ffbb78", "d"),
    ("#98df8a", "8"),
    ("#ff9896", "H"),
)


def method_style(method: str) -> tuple[str, str]:
    """`(colour, marker)` of a method in every plot of a comparison."""
    if method in METHOD_STYLES:
        return METHOD_STYLES[method]
    return _OTHER_STYLES[zlib.crc32(method.encode()) % len(_OTHER_STYLES)]


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
        color, marker = method_style(method)
        ax.plot(steps, mean, color=color, marker=marker, label=method)
        ax.fill_between(steps, [v.min() for v in values], [v.max() for v in values], color=color, alpha=0.15)
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
            fmt=method_style(method)[1],
            color=method_style(method)[0],
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
