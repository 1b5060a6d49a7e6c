"""PNG plots of a comparison: task accuracy over steps per method, accuracy against drift, and a metric
against the weight α of a term added to a baseline (`dose_response`, for variants named `sft+0.3ldpo_b0.1`),
and in rounds a held-out metric against the round (`accuracy_over_rounds`).

Every plot draws a method in the colour and marker `method_style` gives it, so a method looks the same in
each figure (and in the notebooks' W&B curves, `localdpo.compare.results.plot_curves`).
"""

from __future__ import annotations

import re
import zlib
from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from localdpo.compare.report import METRICS_BY_KEY, RunRecord, SummaryRow
from localdpo.storage.fileio import atomic_open


def metric_label(metric: str) -> str:
    """A metric key as axes name it: its table label, else the key with spaces."""
    return METRICS_BY_KEY[metric].label if metric in METRICS_BY_KEY else metric.replace("_", " ")


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


def accuracy_vs_drift(rows: Sequence[SummaryRow], path: Path, *, metric: str = "task_accuracy") -> Path:
    """Write `draw_accuracy_vs_drift` as a PNG at `path`; returns the path."""
    return _write(draw_accuracy_vs_drift(rows, metric=metric), path)


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
    label = metric_label(metric)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(f"{label} (%)")
    held_out = label if label.startswith("held-out") else f"held-out {label}"
    ax.set_title(f"{held_out.capitalize()} during training (band: min-max over seeds)")
    ax.grid(alpha=0.3)
    if by_method:
        ax.legend()
    fig.tight_layout()
    return fig


def draw_accuracy_vs_drift(rows: Sequence[SummaryRow], *, metric: str = "task_accuracy"):
    """Figure: final `metric` (%; task accuracy by default, the primary metric of a comparison without a task)
    against drift KL, one point per method (labelled with it), with 95% intervals on both axes."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    by = {(r.method, r.metric): r.value for r in rows}
    for method in dict.fromkeys(r.method for r in rows):
        acc, drift = by.get((method, metric)), by.get((method, "drift_kl"))
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
    label = METRICS_BY_KEY[metric].label
    ax.set_ylabel(("held-out " if metric == "task_accuracy" else "") + f"{label} (%)")
    ax.set_title("What each method fixes against what it damages")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    return fig


_DOSE_LABEL = re.compile(
    r"^(?P<base>[A-Za-z_][\w-]*)\+(?P<alpha>\d+(?:\.\d+)?)(?P<term>[a-z][a-z0-9]*)(?:_b(?P<beta>\d+(?:\.\d+)?))?$"
)
_DOSE_STYLES: tuple[tuple[str, str], ...] = (
    ("#ff7f0e", "^"),
    ("#d62728", "v"),
    ("#2ca02c", "D"),
    ("#9467bd", "P"),
    ("#8c564b", "X"),
    ("#e377c2", "*"),
)
"""(colour, marker) of the dose-response lines, in order: distinct within a figure."""
DOSE_METRICS = ("task_accuracy", "recurrence", "drift_kl")
"""Metrics the comparison pipeline draws against α when its variants follow the dose naming."""


@dataclass(frozen=True)
class DoseLabel:
    """A variant `base + α · term` (at β `beta`), parsed from its label by `dose_label`."""

    base: str
    """The baseline variant the term is added to (its α = 0 point), e.g. `sft`."""
    alpha: float
    term: str
    """Short name of the added term, e.g. `ldpo` (localized sigmoid DPO) or `ul` (unlikelihood)."""
    beta: float | None = None

    @property
    def curve(self) -> str:
        """The line this variant belongs to: the term, and its β when it has one (`ldpo β=0.1`)."""
        return self.term if self.beta is None else f"{self.term} β={self.beta:g}"


def dose_label(label: str) -> DoseLabel | None:
    """`DoseLabel` of a variant named `<base>+<α><term>[_b<β>]`, else None.

    `sft+0.3ldpo_b0.1` -> (sft, 0.3, ldpo, 0.1); `sft+1ul` -> (sft, 1.0, ul, None); `ldpo+sft` -> None (no α).
    """
    match = _DOSE_LABEL.match(label)
    if match is None:
        return None
    beta = match["beta"]
    return DoseLabel(
        match["base"], float(match["alpha"]), match["term"], None if beta is None else float(beta)
    )


def draw_dose_response(rows: Sequence[SummaryRow], *, metric: str = "task_accuracy"):
    """Figure: `metric` (mean and 95% interval over seeds and items) against α, one line per added term (and
    β) through the baseline's value at α = 0 (the baseline variant is one run set shared by every line); a
    symlog x axis, linear below the smallest α, so α = 0 is on it. Percent metrics are drawn in %. Lines are
    nudged a few percent apart along x so their bars do not hide each other."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    by = {(r.method, r.metric): r.value for r in rows}
    doses = {r.method: dose_label(r.method) for r in rows if dose_label(r.method) is not None}
    scale = 100.0 if METRICS_BY_KEY.get(metric) is not None and METRICS_BY_KEY[metric].percent else 1.0
    curves: dict[str, list[tuple[float, str]]] = defaultdict(list)
    for method, dose in doses.items():
        if (method, metric) in by:
            curves[dose.curve].append((dose.alpha, method))
    bases = list(dict.fromkeys(d.base for d in doses.values()))
    base = bases[0] if len(bases) == 1 else None
    start = by.get((base, metric)) if base is not None else None

    def bar(points: list[tuple[float, object]], dx: float, **style):
        xs = np.asarray([alpha * (1 + dx) for alpha, _ in points])
        means = np.asarray([v.mean for _, v in points]) * scale
        low = means - np.asarray([v.low for _, v in points]) * scale
        high = np.asarray([v.high for _, v in points]) * scale - means
        ax.errorbar(xs, means, yerr=[low, high], capsize=3, **style)

    for index, (curve, members) in enumerate(sorted(curves.items())):
        points = [(alpha, by[(method, metric)]) for alpha, method in sorted(members)]
        if start is not None:
            points = [(0.0, start), *points]
        color, marker = _DOSE_STYLES[index % len(_DOSE_STYLES)]  # distinct within the figure
        bar(points, 0.06 * (index - (len(curves) - 1) / 2), color=color, marker=marker, label=curve)
    if start is not None:
        color, marker = method_style(base)
        bar([(0.0, start)], 0.0, color=color, marker=marker, linestyle="none", label=f"{base} (α = 0)")
    alphas = sorted({d.alpha for d in doses.values() if d.alpha > 0})
    ax.set_xscale("symlog", linthresh=alphas[0] if alphas else 1.0)
    ax.set_xticks([0.0, *alphas], [f"{a:g}" for a in [0.0, *alphas]])
    label = metric_label(metric)
    ax.set_xlabel(f"α: weight of the added term ({base or 'baseline'} + α · term)")
    ax.set_ylabel(f"held-out {label}" + (" (%)" if scale == 100.0 else ""))
    ax.set_title(f"Dose-response: {label} against α (95% intervals)")
    ax.grid(alpha=0.3)
    if curves or start is not None:
        ax.legend()
    fig.tight_layout()
    return fig


def dose_response(rows: Sequence[SummaryRow], path: Path, *, metric: str = "task_accuracy") -> Path:
    """Write `draw_dose_response` as a PNG at `path`; returns the path."""
    return _write(draw_dose_response(rows, metric=metric), path)


def dose_plots(rows: Sequence[SummaryRow], out_dir: Path) -> list[Path]:
    """`dose_<metric>.png` in `out_dir` for each of `DOSE_METRICS` the rows hold, when some variant's label
    follows the dose naming (`dose_label`); else nothing."""
    if not any(dose_label(r.method) for r in rows):
        return []
    present = {r.metric for r in rows}
    return [dose_response(rows, out_dir / f"dose_{m}.png", metric=m) for m in DOSE_METRICS if m in present]


def draw_accuracy_over_rounds(by_round: dict[int, Sequence[SummaryRow]], *, metric: str = "task_accuracy"):
    """Figure: held-out `metric` (mean and 95% interval over seeds and items) after each round, one line per
    variant, from the starting model at round 0 (when its row was measured). Percent metrics in %; variants
    nudged a little apart along x so their bars do not hide each other."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6.4, 4.0))
    rounds = sorted(by_round)
    by = {(r, row.method, row.metric): row.value for r in rounds for row in by_round[r]}
    scale = 100.0 if METRICS_BY_KEY.get(metric) is not None and METRICS_BY_KEY[metric].percent else 1.0
    start = by.get((rounds[0], "base", metric)) if rounds else None
    variants = [m for m in dict.fromkeys(row.method for r in rounds for row in by_round[r]) if m != "base"]
    for index, method in enumerate(variants):
        points = [(r, by[(r, method, metric)]) for r in rounds if (r, method, metric) in by]
        if start is not None:
            points = [(0, start), *points]
        if not points:
            continue
        dx = 0.04 * (index - (len(variants) - 1) / 2)
        xs = np.asarray([r + dx for r, _ in points])
        means = np.asarray([v.mean for _, v in points]) * scale
        low = means - np.asarray([v.low for _, v in points]) * scale
        high = np.asarray([v.high for _, v in points]) * scale - means
        color, marker = method_style(method)
        ax.errorbar(xs, means, yerr=[low, high], capsize=3, color=color, marker=marker, label=method)
    ticks = ([0] if start is not None else []) + rounds
    ax.set_xticks(ticks, ["start" if t == 0 else str(t) for t in ticks])
    label = metric_label(metric)
    ax.set_xlabel("steering round (each trained on steers of its own previous model's mistakes)")
    ax.set_ylabel(f"held-out {label}" + (" (%)" if scale == 100.0 else ""))
    ax.set_title(f"Held-out {label} after each round (95% intervals)")
    ax.grid(alpha=0.3)
    if variants:
        ax.legend()
    fig.tight_layout()
    return fig


def accuracy_over_rounds(
    by_round: dict[int, Sequence[SummaryRow]], path: Path, *, metric: str = "task_accuracy"
) -> Path:
    """Write `draw_accuracy_over_rounds` as a PNG at `path`; returns the path."""
    return _write(draw_accuracy_over_rounds(by_round, metric=metric), path)
