"""Ablations as small comparisons over the same steers: what `notebooks/ablations.ipynb` calls."""

from __future__ import annotations

import copy
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from localdpo.compare.config import CompareConfig
from localdpo.compare.pipeline import ComparisonResult, comparison_steers, run_comparison
from localdpo.compare.report import markdown_tables, summarize
from localdpo.steers.steer import load_steers, save_steers


@dataclass
class AblationResult:
    name: str
    result: ComparisonResult
    table: str
    """Markdown: results (mean [95% interval]) and paired differences against the first variant."""


def shared_steers(config: CompareConfig, directory: Path) -> tuple[Path, Path]:
    """Train and held-out steer files for every ablation: the config's files, or made once into `directory`."""
    if config.steers.train_file and config.steers.heldout_file:
        return Path(config.steers.train_file), Path(config.steers.heldout_file)
    train_file, heldout_file = directory / "steers_train.jsonl", directory / "steers_heldout.jsonl"
    if not (train_file.is_file() and heldout_file.is_file()):
        from localdpo.trainer.modeling import load_base_model

        model, tokenizer = load_base_model(config.run_config(config.baseline, config.seeds[0]))
        train, heldout, _, _ = comparison_steers(config, config.tasks[0], model.eval(), tokenizer)
        save_steers(heldout, heldout_file)
        save_steers(train, train_file)
    return train_file, heldout_file


def variants(method: str, overrides: dict[str, list[str]]) -> dict[str, list[str]]:
    """`{label: ["method=<method>", *overrides]}`."""
    return {label: [f"method={method}", *items] for label, items in overrides.items()}


def run(
    base: CompareConfig, name: str, labelled: dict[str, list[str]], train_file: Path, heldout_file: Path
) -> AblationResult:
    """Train `labelled` variants (baseline: the first) on the shared steers under `<out_dir>/<name>`."""
    config = copy.deepcopy(base)
    config.variants = dict(labelled)
    config.baseline = next(iter(labelled))
    config.out_dir = str(base.output_dir / name)
    config.name = f"{base.name}-{name}"
    config.steers.train_file, config.steers.heldout_file = str(train_file), str(heldout_file)
    result = run_comparison(config)
    table = markdown_tables(summarize(result.records, baseline=config.baseline), baseline=config.baseline)
    return AblationResult(name, result, table)


def steer_count_sweep(
    base: CompareConfig,
    train_file: Path,
    heldout_file: Path,
    *,
    fractions: tuple[float, ...] = (0.25, 0.5, 1.0),
    methods: tuple[str, ...] = ("sft", "ldpo"),
    seed: int = 0,
) -> Iterator[AblationResult]:
    """The same training budget on nested, seeded subsets of the train steers (a larger set holds each smaller)."""
    steers = load_steers(train_file)
    order = list(range(len(steers)))
    random.Random(seed).shuffle(order)
    for fraction in fractions:
        count = max(1, round(len(steers) * fraction))
        subset_file = base.output_dir / "steer_count" / f"steers_train_{count}.jsonl"
        save_steers([steers[i] for i in sorted(order[:count])], subset_file)
        labelled = {f"{m} ({count} steers)": [f"method={m}"] for m in methods}
        yield run(base, f"steers_{count}", labelled, subset_file, heldout_file)
