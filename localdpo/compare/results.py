"""Read a comparison's outputs back (results table, per-item records, W&B offline runs) for notebooks."""

from __future__ import annotations

import csv
import json
from collections import defaultdict
from pathlib import Path

import numpy as np


def load_summary(out_dir: str | Path) -> list[dict]:
    """Rows of `results.csv` (method, metric, mean, interval, paired difference) with numbers parsed."""
    with open(Path(out_dir) / "results.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    for row in rows:
        for key, value in row.items():
            if key not in ("method", "metric", "separated", "task", "phase") and value != "":
                row[key] = float(value)
    return rows


def load_records(out_dir: str | Path) -> list[dict]:
    """Per-run records (`method`, `seed`, `items`, `history`, `run_dir`) from `records.jsonl`."""
    lines = (Path(out_dir) / "records.jsonl").read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def load_wandb_curves(out_dir: str | Path) -> dict[str, dict[str, list[tuple[int, float]]]]:
    """`{run name: {metric: [(step, value), ...]}}` read from every W&B offline run of the comparison."""
    from localdpo.trainer.logging import read_offline_run

    curves: dict[str, dict[str, list[tuple[int, float]]]] = {}
    for run_dir in sorted(Path(out_dir).glob("runs/*/wandb/offline-run-*")):
        run = read_offline_run(run_dir)
        series: dict[str, list[tuple[int, float]]] = defaultdict(list)
        for row in run["history"]:
            step = int(row.get("trainer/step", row.get("_step", 0)))
            for key, value in row.items():
                if not key.startswith("_") and isinstance(value, (int, float)):
                    series[key].append((step, float(value)))
        curves[run["name"] or run_dir.parent.parent.name] = dict(series)
    return curves


def plot_curves(curves: dict, keys: list[str]):
    """One panel per metric key, one line per run; returns the matplotlib figure."""
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(keys), figsize=(5 * len(keys), 3.5), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for name, series in curves.items():
            if key in series:
                steps, values = zip(*series[key])
                ax.plot(steps, values, label=name, alpha=0.8)
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig


def agreement_table(out_dir: str | Path, *, metric: str = "task_accuracy", reference: str = "base") -> str:
    """Markdown: per method, held-out items fixed (wrong in `reference`, right after training) and broken
    (right in `reference`, wrong after), averaged over seeds: what a method repairs against what it damages."""
    records = load_records(out_dir)
    ref = [r for r in records if r["method"] == reference and metric in r["items"]]
    if not ref:
        return f"no `{reference}` run with `{metric}` in {out_dir}"
    base = np.asarray(ref[0]["items"][metric]) > 0.5
    per_method: dict[str, list[tuple[int, int]]] = defaultdict(list)
    for record in records:
        if record["method"] == reference or metric not in record["items"]:
            continue
        after = np.asarray(record["items"][metric]) > 0.5
        per_method[record["method"]].append((int((after & ~base).sum()), int((base & ~after).sum())))
    lines = [
        f"| method | fixed (mean over seeds) | broken | items | {reference} right |",
        "|---|---|---|---|---|",
    ]
    for method, counts in per_method.items():
        fixed, broken = np.mean([c[0] for c in counts]), np.mean([c[1] for c in counts])
        lines.append(f"| {method} | {fixed:.1f} | {broken:.1f} | {len(base)} | {int(base.sum())} |")
    return "\n".join(lines) + "\n"
