"""Configuration of a comparison: one starting model, one or more tasks, several methods and seeds.

A preset is a YAML file in `localdpo/compare/presets/` (`cpu`, `gpu`, `tiny`); `--config FILE` reads any
other, through the same config layer as a training config (`localdpo.config`: typed `key=value` overrides,
unknown keys listed). `run:` is a `RunConfig` mapping shared by every run (`localdpo.trainer.config`); each variant adds
its own `key=value` overrides, so the methods differ only in what those overrides say. `select:` gives each
variant a grid of hyperparameters chosen on the validation prompts before the final runs.

Without a task (`task: null`, the default when `steers.train_file` is given and `task:` is not), the comparison
is on a person's own steers alone: one file split by a hash of each prompt (`localdpo.compare.splits`), or
with its held-out file, measured only by what the steers measure themselves (no checker).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

import yaml

from localdpo.config import ConfigError, build, read_yaml, save_config, set_value
from localdpo.trainer.config import RunConfig, TaskSplit, apply_override, from_dict, validate

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class SteerSource:
    train_file: str | None = None
    """Train steers from this JSONL file instead of making them (with several tasks, `{task}` in the name
    stands for each task's name). Without a task: a person's own steers, split into train, validation and
    held-out by a hash of each prompt (`localdpo.compare.splits`) for the splits not given as files."""
    heldout_file: str | None = None
    """Held-out steers from this JSONL file instead of making them (or, without a task, cutting them from
    `train_file`)."""
    train_prompts: int = 400
    """Train-split task prompts the starting model answers to make train steers (one steer per wrong answer)."""
    heldout_prompts: int = 200
    """Held-out-split task prompts: task accuracy is measured on them, held-out steers are made from them."""
    seed: int = 0
    """Seed of the prompt samples (the train/held-out split itself is a fixed hash of each prompt)."""
    max_new_tokens: int | None = None
    """Generation length for steers and task evaluation; None = the task's default."""
    validation_file: str | None = None
    """Validation steers (selection only) from this JSONL file instead of making them."""


@dataclass
class SelectConfig:
    """Hyperparameter selection: every grid point of a variant trains once (first seed) and is scored on the
    validation prompts; the final runs use each variant's best point. The held-out split is never read."""

    grid: dict[str, list] = field(default_factory=dict)
    """`RunConfig` key -> values tried for every variant, e.g. `{optim.lr: [1.0e-6, 5.0e-6, 3.0e-5]}`."""
    variants: dict[str, dict[str, list]] = field(default_factory=dict)
    """Variant label -> its own extra grid keys (`loss.beta`, `loss.dpop_lambda`, `loss.sft_weight`, ...);
    a key given here replaces the shared grid's values for that variant."""
    validation_prompts: int = 60
    """Validation-split prompts whose greedy task accuracy scores a grid point (validation steers are made
    from the starting model's mistakes on them for the tie-breaks)."""
    shared_from: str | None = None
    """A variant label whose chosen point every variant uses: only that variant's grid runs (e.g. `sft`: every
    variant at span SFT's own selected learning rate, as in a dose-response against SFT); None = each
    variant is selected on its own grid."""

    def points(self, label: str) -> list[Point]:
        """Every grid point of `label` (the cartesian product, in key order), its values as the YAML gave them."""
        grid = {**self.grid, **self.variants.get(label, {})}
        points: list[tuple[tuple[str, Any], ...]] = [()]
        for key, values in grid.items():
            points = [(*point, (key, value)) for point in points for value in values]
        return [Point(point) for point in points]


@dataclass(frozen=True)
class Point:
    """One point of a variant's selection grid: a value for each grid key (`optim.lr`), in the grid's key order;
    the empty point is the variant as written."""

    values: tuple[tuple[str, Any], ...] = ()
    """`(RunConfig key, value)` pairs, set on the run's config as typed values (`localdpo.config.set_value`)."""

    @property
    def overrides(self) -> list[str]:
        """The point as tables, records and run names show it: `key=value` with the value in YAML flow style
        (`optim.lr=1.0e-05`)."""
        return [f"{key}={_shown(value)}" for key, value in self.values]

    @property
    def name(self) -> str:
        """The point in a run directory's name: its `overrides` without `=`, joined by `-`."""
        return "-".join(item.replace("=", "") for item in self.overrides)


def _shown(value: Any) -> str:
    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


class RoundReference(str, Enum):
    """The reference a later round's preference losses (and its steers' reference log-probs) are taken against."""

    START = "start"
    """The starting model in every round: one fixed KL anchor (the KL-regularised objective of iterative
    preference learning against the initial policy, Xiong et al. 2024)."""
    PREVIOUS = "previous"
    """The model the round starts from, whose mistakes the round's steers are (iterative RPO, Pang et al. 2024:
    iteration t trains from and against M_{t-1})."""


@dataclass
class RoundsConfig:
    """Steering in rounds (`localdpo.compare.rounds`): round 1 is the comparison as without `rounds:`; in each
    later round every variant x seed continues from its own previous round's weights, on new steers made from
    that model's own greedy mistakes on fresh train prompts, and is evaluated on the same held-out prompts and
    held-out steers. Hyperparameters are those chosen once on round 1's validation split."""

    count: int = 3
    """Rounds in all, round 1 included (at least 2; `rounds: null` is the one-round comparison)."""
    train_prompts: int | None = None
    """Fresh train-split prompts each later round's models answer (the same prompts for every variant and
    seed, never those of an earlier round); None = `steers.train_prompts`."""
    max_steps: int | None = None
    """Optimizer steps of each later round (a fresh optimizer and schedule from the previous round's weights);
    None = `run.train.max_steps`."""
    reference: RoundReference = RoundReference.PREVIOUS
    """`previous` (default): a later round's reference is the model the round starts from, as in iterative
    RPO (Pang et al. 2024), where iteration t trains M_t from M_{t-1} with M_{t-1} as the reference: the
    steers' rejected sides are that model's own output, so every log-ratio starts at 0 on them and β keeps
    its meaning round after round. `start`: the starting model stays the reference (one fixed KL anchor,
    the usual choice in iterative DPO analysed against the initial policy, Xiong et al. 2024); needs
    `run.loss.reference=cache`. Drift and the held-out preference metrics are measured against the starting
    model either way, so rounds compare."""


@dataclass
class CompareConfig:
    name: str = "cpu"
    """Name of the comparison: the W&B group and the default output directory `outputs/compare-<name>`."""
    task: str | list[str] | None = "addition"
    """Checkable task the steers come from (`localdpo tasks`, or `module:Class` / `file.py:Class` for a task
    of one's own: docs/tasks.md), or a list: one comparison per task (its own steers, reference cache,
    selection and tables) and a table pooled over the tasks. None: no task, the steers of
    `steers.train_file` alone, measured by what needs no checker (the default when `steers.train_file` is
    given and `task:` is not)."""
    model: str = "smollm2-135m-instruct"
    """Starting model of every run (`tiny`, the embedded model, a directory or a hub id)."""
    out_dir: str | None = None
    """Where results, plots, steers and runs go; None = `outputs/compare-<name>`."""
    steers: SteerSource = field(default_factory=SteerSource)
    """Where the steers come from."""
    seeds: list[int] = field(default_factory=lambda: [0, 1, 2])
    """Training seeds (init of LoRA, data order); every variant runs every seed."""
    baseline: str = "sft"
    """Variant the paired differences are taken against."""
    variants: dict[str, list[str]] = field(
        default_factory=lambda: {
            "sft": ["method=sft"],
            "ldpo": ["method=ldpo"],
            "ldpo+sft": ["method=ldpo", "loss.sft_weight=1.0"],
            "dpo": ["method=dpo"],
        }
    )
    """Label -> `RunConfig` overrides; the labels name the rows of the results table."""
    run: dict[str, Any] = field(default_factory=dict)
    """`RunConfig` mapping shared by all runs (steps, batch, lr, beta, eval settings, ...)."""
    eval_batch_size: int = 32
    """Prompts per greedy generation batch: steer making, and every run's task evaluation (unless
    `run.eval.task_batch_size` sets its own)."""
    select: SelectConfig | None = None
    """Hyperparameters chosen per variant on the validation split (None = the variants as written)."""
    rounds: RoundsConfig | None = None
    """Steering in rounds (None = one round: the steers of the starting model only)."""

    @property
    def output_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("outputs") / f"compare-{self.name}"

    @property
    def tasks(self) -> list[str | None]:
        """The tasks compared, one comparison each; `[None]` without a task."""
        return [self.task] if isinstance(self.task, str) or self.task is None else list(self.task)

    def task_name(self, task: str | None) -> str:
        """How a task names its directory, files and runs: a task's `name` (also for `module:Class`); without
        a task, the stem of the steer file."""
        if task is None:
            return Path(self.steers.train_file or "steers").stem
        from localdpo.tasks import get_task, is_task_spec

        return get_task(task).name if is_task_spec(task) else task

    def task_dir(self, task: str | None) -> Path:
        """Where one task's steers, runs and tables go: the output directory itself for a single task."""
        return self.output_dir if len(self.tasks) == 1 else self.output_dir / self.task_name(task)

    def run_config(
        self,
        label: str,
        seed: int,
        *,
        task: str | None = None,
        point: Point = Point(),
        selection: bool = False,
        round_: int = 1,
        evaluates_start: bool = True,
    ) -> RunConfig:
        """The `RunConfig` of one variant and seed (validated) at grid `point`; a `selection` run is scored once,
        at its end, on the validation prompts; a run of a later round (`round_` >= 2) trains `rounds.max_steps`
        steps in its own directory and does not evaluate its starting weights (the previous round's final
        evaluation did); nor does a run that is not `evaluates_start` (another run evaluated the starting model).
        The comparison's plan (`localdpo.compare.plan`) calls this once per run."""
        if label not in self.variants:
            raise ConfigError(f"unknown variant {label!r}; variants: {', '.join(self.variants)}")
        task = task if task is not None else self.tasks[0]
        config = from_dict(self.run or {})
        for item in self.variants[label]:
            apply_override(config, item)
        for key, value in point.values:
            set_value(config, key, value)
        if not evaluates_start:
            config.eval.at_start = False
        config.train.seed = seed
        config.model.name = self.model
        config.wandb.group = config.wandb.group or f"compare-{self.name}"
        config.eval.task = task
        config.eval.task_seed = self.steers.seed
        config.eval.task_batch_size = config.eval.task_batch_size or self.eval_batch_size
        prefix = f"{self.name}/{self.task_name(task)}" if len(self.tasks) > 1 else self.name
        if selection:
            name = f"{label}-{point.name}" if point.values else label
            config.run_dir = str(self.task_dir(task) / "select" / name)
            config.wandb.name = f"{prefix}/select/{name}"
            config.eval.task_split = TaskSplit.VALIDATION
            config.eval.task_n = self.select.validation_prompts if self.select else 0
            config.eval.at_start = False
            config.eval.every = 0
            config.eval.task_every = 0
            if task is not None:  # the score reads task accuracy first, never them (~20 s a run saved)
                config.eval.steer_metrics = False
        else:
            run = f"{label}-seed{seed}" + (f"-round{round_}" if round_ > 1 else "")
            config.run_dir = str(self.task_dir(task) / "runs" / run)
            config.wandb.name = f"{prefix}/{label}/seed{seed}" + (f"/round{round_}" if round_ > 1 else "")
            config.eval.task_split = TaskSplit.HELDOUT
            config.eval.task_n = self.steers.heldout_prompts
            if round_ > 1:
                config.train.max_steps = self.rounds.max_steps or config.train.max_steps
                config.eval.at_start = False
        return validate(config)


def validate_compare(config: CompareConfig) -> CompareConfig:
    """`config` after checking the rules across its fields (and building every run's config once, so a bad
    variant fails now, not after an hour); `ConfigError` naming the key otherwise."""
    from_dict(config.run or {}, RunConfig, "run.")  # unknown `run:` keys named from the comparison's root
    grids = [config.select.grid, *config.select.variants.values()] if config.select is not None else []
    if not all(all(values for values in grid.values()) for grid in grids):
        raise ConfigError("select grids must map a key to a non-empty list of values")
    if config.baseline not in config.variants:
        raise ConfigError(f"baseline {config.baseline!r} is not one of the variants {list(config.variants)}")
    if not config.seeds:
        raise ConfigError("'seeds' is empty")
    if not config.tasks:
        raise ConfigError("'task' is empty")
    from localdpo.tasks import UnknownTaskError, get_task

    if config.task is None and not config.steers.train_file:
        raise ConfigError(
            "task=null compares on a person's own steers: give them (steers.train_file, or --steers FILE)"
        )
    for task in config.tasks:
        if task is None:
            continue
        try:
            get_task(task)  # a task of one's own is imported and checked against the protocol here
        except UnknownTaskError as error:
            raise ConfigError(str(error)) from None
    names = [config.task_name(task) for task in config.tasks]
    if len(set(names)) < len(names):
        raise ConfigError(f"task={config.task}: two tasks share a name ({names})")
    for key in ("train_file", "heldout_file", "validation_file"):
        value = getattr(config.steers, key)
        if len(config.tasks) > 1 and value and "{task}" not in value:
            raise ConfigError(
                f"steers.{key}={value!r} holds one task's steers; with several tasks put "
                "'{task}' in the file name (one file per task)"
            )
    if config.select is not None:
        unknown = sorted(set(config.select.variants) - set(config.variants))
        if unknown:
            raise ConfigError(f"select.variants names {unknown[0]!r}, not one of {list(config.variants)}")
        source = config.select.shared_from
        if source is not None and source not in config.variants:
            raise ConfigError(
                f"select.shared_from={source!r} is not one of the variants {list(config.variants)}"
            )
        unused = sorted(set(config.select.variants) - {source}) if source is not None else []
        if unused:
            raise ConfigError(
                f"select.variants gives {unused[0]!r} its own grid, but select.shared_from={source!r} runs only "
                f"{source!r}'s grid: move the keys to select.grid or select.variants.{source}"
            )
    if config.rounds is not None:
        _validate_rounds(config)
    for label in config.variants:
        for point in config.select.points(label) if config.select else [Point()]:
            try:
                config.run_config(label, config.seeds[0], point=point, selection=config.select is not None)
            except ConfigError as error:
                raise ConfigError(f"variant {label!r} {' '.join(point.overrides)}: {error}") from None
    return config


def _validate_rounds(config: CompareConfig) -> None:
    rounds = config.rounds
    if rounds.count < 2:
        raise ConfigError(f"rounds.count={rounds.count}: must be >= 2 (rounds: null is the one-round comparison)")
    for key in ("train_prompts", "max_steps"):
        value = getattr(rounds, key)
        if value is not None and value < 1:
            raise ConfigError(f"rounds.{key}={value}: must be >= 1 (or null)")
    if None in config.tasks:
        raise ConfigError(
            "rounds need a task: each later round's steers are its models' own mistakes, found by the task's "
            "checker (a person's own rounds of steers train with `localdpo train data.train_files=[...]`)"
        )
    if rounds.reference is RoundReference.START:
        for label in config.variants:
            if config.run_config(label, config.seeds[0], round_=2).loss.reference.value == "live":
                raise ConfigError(
                    f"rounds.reference=start with variant {label!r}'s loss.reference=live: a live reference is the "
                    "weights a run starts from, the previous round's; use loss.reference=cache or "
                    "rounds.reference=previous"
                )


def preset_names() -> list[str]:
    """The shipped comparison presets (`localdpo/compare/presets/NAME.yaml`)."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        raise ConfigError(f"unknown preset {name!r}; presets: {', '.join(preset_names())}")
    return path


def load_compare_config(path: str | os.PathLike, overrides: list[str] | None = None) -> CompareConfig:
    """A `CompareConfig` from YAML, with `key=value` overrides (`seeds=[0,1]`, `run.train.max_steps=10`, ...)."""
    path = Path(path)
    data = read_yaml(path, "comparison config")
    overrides = list(overrides or [])
    steers = data.get("steers")
    own_file = (isinstance(steers, dict) and steers.get("train_file")) or any(
        o.startswith("steers.train_file=") for o in overrides
    )
    if "task" not in data and own_file and not any(o.startswith("task=") for o in overrides):
        data["task"] = None  # steers given and no task named: a person's own steers, no checker
    for key in ("train_file", "heldout_file", "validation_file") if isinstance(steers, dict) else ():
        # a steer file named in a config is looked for next to the config first (presets ship theirs)
        value = steers.get(key)
        if isinstance(value, str) and not Path(value).is_absolute() and (path.parent / value).is_file():
            steers[key] = str(path.parent / value)
    return build(CompareConfig, data, overrides, validate=validate_compare, source=path)


def save_compare_config(config: CompareConfig, path: Path) -> Path:
    """Write the resolved comparison config as YAML, atomically."""
    return save_config(config, path)
