"""Results of a comparison: per-run item metrics in, `results.csv` and `results.md` out, with the notes that say in
words what the comparison's plan did."""

from __future__ import annotations

import csv
import json
import platform
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from localdpo.compare.metrics import (
    METRICS,
    METRICS_BY_KEY,
    PRIMARY_METRIC,
    Metric,
    primary_metric,
    score_keys,
)
from localdpo.compare.selection import GridPoint, edge_note
from localdpo.compare.stats import (
    Interval,
    SeedTest,
    holm_adjusted,
    interval,
    paired_difference,
    paired_seed_test,
)
from localdpo.storage.fileio import atomic_open, atomic_write_text

if TYPE_CHECKING:  # the notes describe a plan; the plan does not read the report
    from localdpo.compare.config import CompareConfig
    from localdpo.compare.plan import TaskPlan
    from localdpo.compare.runs import TaskSteers


STARTING_MODEL = "base"
"""Method label of the untrained starting model: a reference row, not a variant of the Holm family."""
FAMILY_ALPHA = 0.05
"""Family-wise error rate of the Holm correction."""


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
    task: str | None = None
    """Task of the steers and prompts (None: the comparison's only task)."""
    overrides: list[str] = field(default_factory=list)
    """Hyperparameters chosen by selection for this run (`key=value`), if any."""
    round: int | None = None
    """Steering round of the run (`localdpo.compare.rounds`); None outside a comparison in rounds."""


@dataclass(frozen=True)
class SummaryRow:
    method: str
    metric: str
    value: Interval
    n_seeds: int
    n_items: int
    difference: Interval | None
    """Paired difference against the baseline method, two-level bootstrap interval (None for the baseline)."""
    seed_test: SeedTest | None = None
    """Seed-level paired t test of the same difference (S - 1 df); None for the baseline or with one seed."""
    holm_p: float | None = None
    """Holm-adjusted p-value of `seed_test` within the family (variants against the baseline on the primary
    metric, `primary_metric`); None outside the family."""

    @property
    def separated(self) -> bool:
        """Both intervals of the difference exclude 0 (an undefined seed-level interval does not)."""
        return (
            self.difference is not None
            and self.seed_test is not None
            and self.difference.excludes(0.0)
            and self.seed_test.interval.excludes(0.0)
        )


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
    """Mean and 95% interval per method and metric; the paired difference against `baseline` with both its
    intervals (two-level bootstrap, seed-level t); Holm-adjusted p-values over the variants on the primary
    metric (`primary_metric` of the records' metrics)."""
    methods = list(dict.fromkeys(r.method for r in records))
    rows: list[SummaryRow] = []
    for method in methods:
        for metric in METRICS:
            values = stack_items(records, method, metric.key)
            if values is None:
                continue
            base = stack_items(records, baseline, metric.key) if method != baseline else None
            difference, seed_test = None, None
            if base is not None and (base.shape == values.shape or 1 in (base.shape[0], values.shape[0])):
                difference = paired_difference(values, base, n_boot=n_boot)
                seed_test = paired_seed_test(values, base)
            rows.append(
                SummaryRow(
                    method,
                    metric.key,
                    interval(values, n_boot=n_boot),
                    values.shape[0],
                    values.shape[1],
                    difference,
                    seed_test,
                )
            )
    family = holm_family(rows)
    if family:
        adjusted = holm_adjusted([untested_p(row) for row in family])  # (m,)
        holm_p = {(row.method, row.metric): float(p) for row, p in zip(family, adjusted)}
        rows = [replace(row, holm_p=holm_p.get((row.method, row.metric))) for row in rows]
    return rows


def holm_family(rows: Sequence[SummaryRow]) -> list[SummaryRow]:
    """The rows whose seed-level p-values Holm corrects together: every variant (not `STARTING_MODEL`) compared
    with the baseline on the primary metric (`primary_metric` of the rows' metrics) over two seeds or more.
    A variant whose seed-level test is undefined there (its seeds agree exactly on a non-zero difference) stays
    in the family with p = 1 (`untested_p`): it was compared, so it counts in m; leaving it out would make
    every other variant's correction smaller than the comparisons made."""
    primary = primary_metric(row.metric for row in rows)
    return [
        row
        for row in rows
        if row.metric == primary
        and row.method != STARTING_MODEL
        and row.difference is not None
        and row.n_seeds >= 2
    ]


def untested_p(row: SummaryRow) -> float:
    """The seed-level p-value of a family row; 1 where the test is undefined (a hypothesis never rejected)."""
    return row.seed_test.p_value if row.seed_test is not None else 1.0


def write_csv(
    rows: Sequence[SummaryRow],
    path: Path,
    *,
    baseline: str,
    task: str = "",
    selection: Sequence | None = None,
) -> None:
    """The summary rows (`phase` final) and, when given, every selection run's validation metrics (`phase`
    selection: one row per grid point and metric, `method` = variant and its grid point).

    Difference columns: `diff_ci_*` the two-level bootstrap interval, `diff_t_*` the seed-level t interval and
    `diff_t_p` its two-sided p-value (blank with one seed), `separated` whether both intervals exclude 0,
    `holm_p` the Holm-adjusted p-value (only on the family's rows: variants on the primary metric)."""
    header = csv_header(baseline)
    lines = summary_lines(rows, baseline=baseline, task=task)
    for point in selection or []:
        method = f"{point.label} [{' '.join(point.point)}]"
        for key, value in point.metrics.items():
            metric = f"validation_{key.removeprefix('eval/')}"
            lines.append({"method": method, "metric": metric, "mean": value, "n_seeds": 1})
            lines[-1].update(task=task, phase="selection")
    with atomic_open(path, newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, restval="")
        writer.writeheader()
        writer.writerows(lines)


def csv_header(baseline: str) -> list[str]:
    """The columns of `results.csv` (`write_csv`)."""
    return [
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
        "diff_t_low",
        "diff_t_high",
        "diff_t_p",
        "separated",
        "holm_p",
        "task",
        "phase",
    ]


def summary_lines(rows: Sequence[SummaryRow], *, baseline: str, task: str = "") -> list[dict]:
    """The `results.csv` rows (`phase` final) of the summary rows, as `csv_header` names their columns."""
    lines = []
    for row in rows:
        v = row.value
        line = {
            "method": row.method,
            "metric": row.metric,
            "mean": v.mean,
            "ci_low": v.low,
            "ci_high": v.high,
        }
        line.update(n_seeds=row.n_seeds, n_items=row.n_items, task=task, phase="final")
        if row.difference is not None:
            d = row.difference
            line.update({f"diff_vs_{baseline}": d.mean, "diff_ci_low": d.low, "diff_ci_high": d.high})
            line["separated"] = row.separated
        if row.seed_test is not None:
            t = row.seed_test
            line.update(diff_t_low=t.interval.low, diff_t_high=t.interval.high, diff_t_p=t.p_value)
        if row.holm_p is not None:
            line["holm_p"] = row.holm_p
        lines.append(line)
    return lines


def _digits(metric: Metric) -> dict:
    return {"digits": 1, "scale": 100} if metric.percent else {"digits": 4}


def _cell(interval_: Interval, metric: Metric) -> str:
    return interval_.format(**_digits(metric))


def _verdict(row: SummaryRow, metric: Metric) -> str:
    """`better` / `worse` only where both intervals of the difference exclude 0, else `not separated`."""
    if not row.separated:
        return "not separated"
    better = (row.difference.mean > 0) == metric.higher_is_better
    return "better" if better else "worse"


def _difference_cell(row: SummaryRow, metric: Metric) -> str:
    """`mean [bootstrap] t [seed-level t] verdict`; the t interval is undefined with one seed, or with seeds
    that agree exactly on a non-zero difference."""
    if row.seed_test is None:
        t = "t undefined (1 seed)" if row.n_seeds < 2 else "t undefined (seeds agree exactly)"
    else:
        t = "t " + row.seed_test.interval.format_bounds(**_digits(metric))
    return f"{_cell(row.difference, metric)} {t} {_verdict(row, metric)}"


def holm_summary(rows: Sequence[SummaryRow], *, baseline: str) -> str:
    """One sentence: which variants' differences against `baseline` on the primary metric survive Holm's
    correction at family-wise `FAMILY_ALPHA` (seed-level paired t p-values), with m and each adjusted p."""
    label = METRICS_BY_KEY[primary_metric(row.metric for row in rows)].label
    family = [row for row in holm_family(rows) if row.holm_p is not None]
    if not family:
        return (
            f"Holm correction on {label}: not applied (no variant has a seed-level test against `{baseline}`; "
            "it needs two seeds or more)."
        )
    df = ", ".join(sorted({str(row.n_seeds - 1) for row in family}))
    listed = "; ".join(
        f"`{row.method}` p {row.seed_test.p_value:.3g}, adjusted {row.holm_p:.3g}"
        if row.seed_test is not None
        else f"`{row.method}` t undefined (seeds agree exactly), counted as p 1"
        for row in sorted(family, key=lambda r: (r.holm_p, r.method))
    )
    survivors = [f"`{row.method}`" for row in family if row.holm_p <= FAMILY_ALPHA]
    if not survivors:
        verdict = "none survives"
    else:
        verdict = ", ".join(survivors) + (" survives" if len(survivors) == 1 else " survive")
    variants = "variant" if len(family) == 1 else "variants"
    return (
        f"Holm correction over the m = {len(family)} {variants} compared with `{baseline}` on {label} "
        f"(seed-level paired t test, {df} df): at family-wise {FAMILY_ALPHA:g}, {verdict} ({listed})."
    )


def intervals_note(baseline: str, primary: str = PRIMARY_METRIC) -> str:
    """The results note on what the intervals and verdicts mean (`primary`: the Holm family's metric)."""
    return (
        "Intervals: 95%. Each value: two-level bootstrap (seeds, then items). Each paired difference against "
        f"`{baseline}`: the bootstrap interval and a seed-level Student t interval (the per-seed mean differences, "
        "S-1 df; undefined with one seed), since a bootstrap over a few seeds sees few distinct seed draws (10 for "
        "3 seeds). 'better' / 'worse' only where both exclude 0; 'not separated' otherwise: the data cannot tell "
        "those two apart. The Holm line corrects the seed-level p-values on "
        f"{METRICS_BY_KEY[primary].label} for the number of variants compared with `{baseline}`."
    )


def markdown_tables(rows: Sequence[SummaryRow], *, baseline: str) -> str:
    """The results table (mean [95% interval]) and the paired differences against the baseline (both intervals,
    verdicts), then the Holm correction of the primary metric's family."""
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
        f"Paired difference against `{baseline}` (same seeds, same held-out items): mean [95% two-level bootstrap "
        "interval] t [95% seed-level t interval over the per-seed mean differences, S-1 df], verdict: better or "
        "worse only where both intervals exclude 0.",
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
                cells.append(_difference_cell(row, m))
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    if primary_metric(m.key for m in metrics) in {m.key for m in metrics}:
        lines += ["", holm_summary(rows, baseline=baseline)]
    return "\n".join(lines) + "\n"


def write_markdown(
    rows: Sequence[SummaryRow],
    path: Path,
    *,
    baseline: str,
    title: str,
    notes: Sequence[str],
    extra: str = "",
) -> None:
    """`results.md`: the tables, the notes, then `extra` (e.g. the selection table)."""
    text = (
        f"# {title}\n\n"
        + markdown_tables(rows, baseline=baseline)
        + "\n"
        + "\n".join(f"- {n}" for n in notes)
        + "\n"
        + extra
    )
    atomic_write_text(path, text)


# The results notes: what a comparison's plan (`localdpo.compare.plan`) did, in words under its tables.


def primary_metric_of(plan: TaskPlan) -> str:
    """The comparison's primary metric (`PRIMARY_METRICS`): task accuracy with a task; without one uptake, or
    held-out preference accuracy when the runs skip the steer metrics."""
    if plan.task is not None:
        return PRIMARY_METRIC
    return "uptake" if plan.baseline.eval.steer_metrics else "preference_accuracy"


SELECTION_WORDS = {
    "task_accuracy": "validation task accuracy",
    "uptake": "uptake at the validation steers",
    "preference_accuracy": "validation preference accuracy",
    "chosen_nll": "chosen-span NLL",
    "drift_kl": "drift",
}


def selection_order(primary: str) -> str:
    """`higher validation task accuracy, then higher ...`: the order `score_keys(primary)` decides in."""
    return ", then ".join(
        f"{'higher' if higher else 'lower'} {SELECTION_WORDS[key.removeprefix('eval/')]}"
        for key, higher in score_keys(primary)
    )


def comparison_title(config: CompareConfig, task: str | None) -> str:
    """The title of a task's results: the task's name, or without one the person's steer file(s)."""
    if task is not None:
        return f"localdpo comparison `{config.name}`: {config.task_name(task)} steers, {config.model}"
    files = [Path(config.steers.train_file).name]
    if config.steers.heldout_file:
        files.append(f"held out: `{Path(config.steers.heldout_file).name}`")
    steers = f"`{files[0]}`" + (f" ({files[1]})" if len(files) > 1 else "")
    return f"localdpo comparison `{config.name}`: steers of {steers}, no task checker, {config.model}"


def training_hyperparameters(config: CompareConfig, plan: TaskPlan, labels: Sequence[str]) -> str:
    """The learning rate and beta the final runs of `labels` trained with: one pair, or each variant's own."""
    values = {}
    for label in labels:
        run = plan.final_run(label, config.seeds[0]).config
        values[label] = f"lr {run.optim.lr:g}, beta {run.loss.beta:g}"
    chosen = plan.chosen
    if len(set(values.values())) == 1 and not chosen:
        return f"the same {next(iter(values.values()))}."
    source = config.select.shared_from if chosen and config.select is not None else None
    if source:
        return (
            f"`{source}`'s grid point, chosen on the validation split (below) and shared by every variant (with "
            "its own overrides): " + "; ".join(f"{k} {v}" for k, v in values.items()) + "."
        )
    where = "chosen on the validation split (below)" if chosen else "set per variant"
    return f"its own hyperparameters, {where}: " + "; ".join(f"{k} {v}" for k, v in values.items()) + "."


def machine_note(device, seconds: float) -> str:
    """Where and how long the comparison ran."""
    import torch

    return (
        f"Machine: {platform.processor() or platform.machine()}, device {device}, torch {torch.__version__}; "
        f"wall time {seconds / 60:.1f} min."
    )


def results_notes(
    config: CompareConfig,
    plan: TaskPlan,
    records: Sequence[RunRecord],
    steers: TaskSteers,
    *,
    seconds: float,
    device,
    kept: int,
    in_rounds: bool,
) -> list[str]:
    """The notes under a task's results tables: the training budget and hyperparameters, the steers and what
    each metric reads, the intervals, the machine; then the selection, the rounds, and how many runs were
    `kept` from an earlier invocation, where they apply."""
    task, run = plan.task, plan.baseline
    n_train, n_heldout = len(steers.splits["train"]), len(steers.splits["heldout"])
    primary = primary_metric_of(plan)
    notes = [
        f"Seeds {config.seeds}; every variant trained {run.train.max_steps} steps x {run.train.batch_size} steers "
        f"(x{run.train.grad_accum} accumulation) from the same weights, at "
        + training_hyperparameters(config, plan, [r.method for r in records if r.method != STARTING_MODEL]),
    ]
    if task is not None:
        n_prompts = next((len(r.items["task_accuracy"]) for r in records if "task_accuracy" in r.items), 0)
        notes += [
            f"Steers: {n_train} for training, {n_heldout} held out, made from the starting model's own greedy "
            "mistakes (train and held-out prompts are disjoint by a fixed hash of each prompt).",
            f"Task accuracy and format kept: greedy answers to {n_prompts} held-out prompts; preference accuracy "
            "and chosen-span NLL: the held-out steers (divergent span); drift: mean per-token KL(reference || "
            "policy) on unrelated chat prompts (per-prompt means).",
            "Recurrence and uptake: greedy from prompt + prefix at each held-out steer, the model writes the "
            "rejected span again, resp. the chosen span, token for token (over the steers with a non-empty such "
            "span); continuation acc.: greedy from prompt + prefix + chosen to the end of the answer, judged right "
            "by the task's checker (over the task steers).",
        ]
    else:
        notes += [
            steers.own.note(),
            "No task checker: measured only by what the steers measure themselves. Held-out preference accuracy "
            "and chosen-span NLL: the held-out steers (divergent span); recurrence and uptake: greedy from prompt "
            "+ prefix at each held-out steer, the model writes the rejected span again, resp. the chosen span, "
            "token for token (over the steers with a non-empty such span); drift: mean per-token KL(reference || "
            "policy) on unrelated chat prompts (per-prompt means).",
            f"Primary metric: {METRICS_BY_KEY[primary].label} (the Holm family; selection reads it first). "
            + (
                "Uptake is the behaviour a steer asks for (at the point of the mistake, the model now writes the "
                "correction), read from greedy generation the same way for every method; preference accuracy "
                "reads the policy's log-ratio against the reference, which the DPO-family losses push up directly "
                "and SFT does not, so it would lean towards them."
                if primary == "uptake"
                else "The runs skip the steer metrics (eval.steer_metrics=false), so uptake is not measured."
            ),
        ]
    notes += [
        intervals_note(config.baseline, primary),
        "`base` is the starting model: one row, no training noise. Its held-out preference accuracy is 0 because "
        "every margin is exactly 0 there (policy = reference): ties count as not preferred.",
        machine_note(device, seconds),
    ]
    if run.eval.max_steers is not None and run.eval.max_steers < n_heldout:
        notes.append(
            f"The held-out steer metrics read the first {run.eval.max_steers} of the {n_heldout} held-out steers "
            f"(run.eval.max_steers={run.eval.max_steers})."
        )
    if plan.chosen:
        source = config.select.shared_from
        selected = [source] if source else list(plan.chosen)  # a shared point: one variant's grid ran
        notes.append(
            edge_note(
                {label: GridPoint(label, plan.chosen[label].overrides) for label in selected},
                {label: [point.overrides for point in config.select.points(label)] for label in selected},
            )
        )
    if steers.summaries:
        notes.append(
            "Steer yield: "
            + json.dumps(
                {
                    k: {x: v[x] for x in ("tried", "correct", "uncheckable", "steers")}
                    for k, v in steers.summaries.items()
                }
            )
        )
    if config.select is not None:
        source = config.select.shared_from
        validation_steers = steers.splits.get("validation", [])
        where = (
            f"{config.select.validation_prompts} validation prompts ({len(validation_steers)} validation steers)"
            if task is not None
            else f"the {len(validation_steers)} validation steers"
        )
        notes.append(
            (
                f"Hyperparameters chosen for `{source}` and used by every variant, "
                if source
                else "Hyperparameters chosen per variant "
            )
            + f"on {where}, one run each with seed {config.seeds[0]}: "
            + selection_order(primary)
            + ". The held-out split was not read during selection."
        )
    if in_rounds:
        notes += rounds_notes(config, plan)
    if kept:
        n_runs = len(plan.selection) + len(config.seeds) * len(plan.labels) * (config.rounds.count if in_rounds else 1)
        notes.append(
            f"Resumed: {kept} of the {n_runs} runs were kept from an earlier invocation that was stopped (read "
            "from their records); the wall time adds their own times to this invocation's."
        )
    return notes


def rounds_notes(config: CompareConfig, plan: TaskPlan) -> list[str]:
    """The results notes of a comparison in rounds: what a later round does, its reference and why, where the
    hyperparameters come from."""
    rounds = config.rounds
    run = plan.baseline_later_round
    reference = (
        "the model the round starts from (rounds.reference=previous, as in iterative RPO, Pang et al. 2024: "
        "the steers' rejected sides are that model's own output, so each log-ratio starts at 0 on them)"
        if rounds.reference.value == "previous"
        else "the starting model in every round (rounds.reference=start: one fixed KL anchor)"
    )
    chosen_where = (
        "chosen once on round 1's validation split (below) and kept for every round"
        if plan.chosen
        else "as written in the config, the same in every round (no selection)"
    )
    return [
        f"Rounds: {rounds.count}. Round 1 is the comparison as above; in each later round every variant x seed "
        f"continues from its own previous round's weights: its model answers "
        f"{rounds.train_prompts or config.steers.train_prompts} fresh train prompts (the same for every variant "
        "and seed; never a prompt of an earlier round, of validation or of the held-out split), its greedy "
        f"mistakes become the round's steers, and it trains {run.train.max_steps} steps on them (a fresh "
        f"optimizer and schedule). Reference of the preference losses in a later round: {reference}. Drift, "
        "held-out preference accuracy and the held-out steers are measured against the starting model in every "
        "round, on the same held-out prompts and steers.",
        f"Hyperparameters: {chosen_where}; the held-out prompts were never read for a choice.",
        "Yield: the share of a round's fresh prompts on which the model entering the round still made a mistake "
        "that gave a steer (round 1: the starting model's); a chain with none goes on unchanged.",
    ]


def pooled_notes(config: CompareConfig, names: Sequence[str], *, seconds: float, device) -> list[str]:
    """The notes under the table pooled over the tasks `names`."""
    notes = [
        f"Pooled over the tasks {list(names)}: each run's held-out items of every task side by side, so the "
        f"paired difference against `{config.baseline}` weighs each task by its number of items; per-task "
        "tables are in each task's folder.",
        intervals_note(config.baseline),
        machine_note(device, seconds),
    ]
    if config.rounds is not None:
        notes.insert(
            1,
            f"Steering in rounds: the runs of the last round ({config.rounds.count}); every round is in "
            "each task's folder.",
        )
    return notes
