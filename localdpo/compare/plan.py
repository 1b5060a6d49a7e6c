"""The runs of a comparison, resolved once: for each task, every run's variant, seed, grid point and `RunConfig`.

`comparison_plan(config, labels)` gives one `TaskPlan` per task; the pipeline executes it (selection runs, then
the final runs, then in rounds the later rounds) and the report describes it. With `select:`, the final runs
depend on the points chosen on the validation split: `TaskPlan.choose(chosen)` is the same plan with them.
The pipeline and the rounds read every run's `RunConfig` from the plan, built once from typed values
(`CompareConfig.run_config`, which `validate_compare` also calls to check each variant at load): nothing travels
as a `key=value` string after the comparison config is loaded.

E.g. variants `sft`, `ldpo`, seeds `[0, 1]`, no selection, no rounds: `final` holds four runs, in the order
they train: (sft, 0), (ldpo, 0), (sft, 1), (ldpo, 1).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

from localdpo.compare.config import CompareConfig, Point
from localdpo.trainer.config import RunConfig


@dataclass(frozen=True)
class PlannedRun:
    """One run of a comparison."""

    label: str
    """The variant (a row of the results table)."""
    task: str | None
    """The task whose steers it trains on (None: a person's own steers)."""
    seed: int
    point: Point
    """Its grid point (the empty point: the variant as written)."""
    config: RunConfig
    """Its resolved, validated config."""
    round: int = 1
    """1, or a later round of steering in rounds (`localdpo.compare.rounds`)."""
    selection: bool = False
    """A selection run: scored on the validation split, first seed only."""

    def without_start_evaluation(self) -> PlannedRun:
        """This run with `eval.at_start` off: another run of the comparison evaluated the starting model."""
        config = copy.deepcopy(self.config)
        config.eval.at_start = False
        return replace(self, config=config)


@dataclass(frozen=True)
class TaskPlan:
    """The runs of one task's comparison."""

    task: str | None
    name: str
    """How the task names its directory, files and runs (`CompareConfig.task_name`)."""
    directory: Path
    """Where its steers, runs and tables go (`CompareConfig.task_dir`)."""
    labels: tuple[str, ...]
    """The variants run (every variant, or those asked for)."""
    selection: tuple[PlannedRun, ...]
    """Every grid point of each selected variant (`select.shared_from`'s only, when set), first seed; in the
    order they train."""
    final: tuple[PlannedRun, ...]
    """Round 1's runs, every variant at its chosen point (as written before `choose`), seed by seed, variant by
    variant: the order they train."""
    later_rounds: dict[int, tuple[PlannedRun, ...]] = field(default_factory=dict)
    """Round (2 .. `rounds.count`) -> its runs, in the same order (empty without `rounds:`)."""
    chosen: dict[str, Point] = field(default_factory=dict)
    """Variant -> the grid point chosen on the validation split (empty before `choose`, or without `select:`)."""
    probe: RunConfig | None = None
    """The first variant's first seed as written: what the shared model, device, drift set and reference cache
    are read from."""
    baseline: RunConfig | None = None
    """The baseline variant's first seed as written (round 1): the training budget the notes report."""
    baseline_later_round: RunConfig | None = None
    """The same in a later round (None without `rounds:`)."""

    def final_run(self, label: str, seed: int) -> PlannedRun:
        """The round-1 run of `label` and `seed`."""
        return next(run for run in self.final if run.label == label and run.seed == seed)

    def later_run(self, round_: int, label: str, seed: int) -> PlannedRun:
        """The run of `label` and `seed` in the later round `round_`."""
        return next(run for run in self.later_rounds[round_] if run.label == label and run.seed == seed)

    def choose(self, config: CompareConfig, chosen: dict[str, Point]) -> TaskPlan:
        """This plan with the final runs (and later rounds) at the `chosen` points."""
        return replace(
            self,
            chosen=dict(chosen),
            final=_final_runs(config, self.task, self.labels, chosen),
            later_rounds=_later_rounds(config, self.task, self.labels, chosen),
        )


def _final_runs(
    config: CompareConfig, task: str | None, labels: Sequence[str], chosen: dict[str, Point]
) -> tuple[PlannedRun, ...]:
    runs = []
    for seed in config.seeds:
        for label in labels:
            point = chosen.get(label, Point())
            runs.append(PlannedRun(label, task, seed, point, config.run_config(label, seed, task=task, point=point)))
    return tuple(runs)


def _later_rounds(
    config: CompareConfig, task: str | None, labels: Sequence[str], chosen: dict[str, Point]
) -> dict[int, tuple[PlannedRun, ...]]:
    if config.rounds is None:
        return {}
    rounds = {}
    for round_ in range(2, config.rounds.count + 1):
        runs = []
        for seed in config.seeds:
            for label in labels:
                point = chosen.get(label, Point())
                run_config = config.run_config(label, seed, task=task, point=point, round_=round_)
                runs.append(PlannedRun(label, task, seed, point, run_config, round=round_))
        rounds[round_] = tuple(runs)
    return rounds


def _selection_runs(config: CompareConfig, task: str | None, labels: Sequence[str]) -> tuple[PlannedRun, ...]:
    if config.select is None:
        return ()
    seed = config.seeds[0]
    source = config.select.shared_from
    return tuple(
        PlannedRun(
            label,
            task,
            seed,
            point,
            config.run_config(label, seed, task=task, point=point, selection=True),
            selection=True,
        )
        for label in ([source] if source else labels)
        for point in config.select.points(label)
    )


def task_plan(config: CompareConfig, task: str | None, labels: Sequence[str]) -> TaskPlan:
    """The runs of `task` for the variants `labels`, the final ones at the points as written."""
    labels = tuple(labels)
    seed = config.seeds[0]
    return TaskPlan(
        task=task,
        name=config.task_name(task),
        directory=config.task_dir(task),
        labels=labels,
        selection=_selection_runs(config, task, labels),
        final=_final_runs(config, task, labels, {}),
        later_rounds=_later_rounds(config, task, labels, {}),
        probe=config.run_config(labels[0], seed, task=task),
        baseline=config.run_config(config.baseline, seed, task=task),
        baseline_later_round=(
            config.run_config(config.baseline, seed, task=task, round_=2) if config.rounds is not None else None
        ),
    )


def comparison_plan(config: CompareConfig, labels: Sequence[str] | None = None) -> list[TaskPlan]:
    """One `TaskPlan` per task of `config` (in `config.tasks` order), for the variants `labels` (default: all);
    `ValueError` naming an unknown variant."""
    labels = list(labels or config.variants)
    unknown = [label for label in labels if label not in config.variants]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; variants: {', '.join(config.variants)}")
    return [task_plan(config, task, labels) for task in config.tasks]
