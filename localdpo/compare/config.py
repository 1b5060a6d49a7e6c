"""Configuration of a comparison: one set of steers, one starting model, several methods and seeds.

A preset is a YAML file in `localdpo/compare/presets/` (`cpu`, `gpu`, `tiny`); `--config FILE` reads any
other. `run:` is a `RunConfig` mapping shared by every run (`localdpo.trainer.config`); each variant adds
its own `key=value` overrides, so the methods differ only in what those overrides say.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from localdpo.trainer.config import ConfigError, RunConfig, apply_override, from_dict, validate

PRESET_DIR = Path(__file__).parent / "presets"


@dataclass
class SteerSource:
    train_file: str | None = None
    """Train steers from this JSONL file instead of making them."""
    heldout_file: str | None = None
    """Held-out steers from this JSONL file instead of making them."""
    train_prompts: int = 400
    """Train-split task prompts the starting model answers to make train steers (one steer per wrong answer)."""
    heldout_prompts: int = 200
    """Held-out-split task prompts: task accuracy is measured on them, held-out steers are made from them."""
    seed: int = 0
    """Seed of the prompt samples (the train/held-out split itself is a fixed hash of each prompt)."""
    max_new_tokens: int | None = None
    """Generation length for steers and task evaluation; None = the task's default."""


@dataclass
class CompareConfig:
    name: str = "cpu"
    """Name of the comparison: the W&B group and the default output directory `outputs/compare-<name>`."""
    task: str = "addition"
    """Checkable task the steers come from (`localdpo tasks`)."""
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

    @property
    def output_dir(self) -> Path:
        return Path(self.out_dir) if self.out_dir else Path("outputs") / f"compare-{self.name}"

    def run_config(self, label: str, seed: int, *, extra: list[str] | None = None) -> RunConfig:
        """The `RunConfig` of one variant and seed (validated)."""
        if label not in self.variants:
            raise ConfigError(f"unknown variant {label!r}; variants: {', '.join(self.variants)}")
        config = from_dict(self.run or {})
        for item in [*self.variants[label], *(extra or [])]:
            apply_override(config, item)
        config.train.seed = seed
        config.model.name = self.model
        config.run_dir = str(self.output_dir / "runs" / f"{label}-seed{seed}")
        config.wandb.group = config.wandb.group or f"compare-{self.name}"
        config.wandb.name = f"{self.name}/{label}/seed{seed}"
        config.eval.task = self.task
        config.eval.task_n = self.steers.heldout_prompts
        config.eval.task_seed = self.steers.seed
        config.eval.task_batch_size = config.eval.task_batch_size or self.eval_batch_size
        return validate(config)


def _coerce_compare(data: dict[str, Any], source: str) -> CompareConfig:
    names = {f.name for f in dataclasses.fields(CompareConfig)}
    unknown = sorted(set(data) - names)
    if unknown:
        raise ConfigError(f"{source}: unknown key '{unknown[0]}'; valid keys: {', '.join(sorted(names))}")
    values = dict(data)
    if "steers" in values:
        steer_names = {f.name for f in dataclasses.fields(SteerSource)}
        bad = sorted(set(values["steers"] or {}) - steer_names)
        if bad:
            raise ConfigError(
                f"{source}: unknown key 'steers.{bad[0]}'; valid: {', '.join(sorted(steer_names))}"
            )
        values["steers"] = SteerSource(**(values["steers"] or {}))
    if "variants" in values:
        variants = values["variants"]
        if not isinstance(variants, dict) or not all(isinstance(v, list) for v in variants.values()):
            raise ConfigError(f"{source}: 'variants' must map a label to a list of key=value overrides")
    config = CompareConfig(**values)
    if config.baseline not in config.variants:
        raise ConfigError(
            f"{source}: baseline {config.baseline!r} is not one of the variants {list(config.variants)}"
        )
    for label in config.variants:
        config.run_config(label, config.seeds[0] if config.seeds else 0)  # fail now, not after an hour
    if not config.seeds:
        raise ConfigError(f"{source}: 'seeds' is empty")
    return config


def preset_path(name: str) -> Path:
    path = PRESET_DIR / f"{name}.yaml"
    if not path.is_file():
        available = ", ".join(sorted(p.stem for p in PRESET_DIR.glob("*.yaml")))
        raise ConfigError(f"unknown preset {name!r}; presets: {available}")
    return path


def load_compare_config(path: str | os.PathLike, overrides: list[str] | None = None) -> CompareConfig:
    """A `CompareConfig` from YAML, with `key=value` overrides (`seeds=[0,1]`, `run.train.max_steps=10`, ...)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"comparison config not found: {path}")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as error:
        raise ConfigError(f"{path}: invalid YAML: {error}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping of keys, got {type(data).__name__}")
    for key in ("train_file", "heldout_file"):
        # a steer file named in a config is looked for next to the config first (presets ship theirs)
        value = (data.get("steers") or {}).get(key)
        if value and not Path(value).is_absolute() and (path.parent / value).is_file():
            data["steers"][key] = str(path.parent / value)
    for item in overrides or []:
        if "=" not in item:
            raise ConfigError(f"override {item!r}: expected key=value")
        key, value = item.split("=", 1)
        node = data
        *parents, leaf = key.strip().split(".")
        for part in parents:
            node = node.setdefault(part, {})
        try:
            node[leaf] = yaml.safe_load(value)
        except yaml.YAMLError:
            raise ConfigError(f"override {item!r}: the value is not valid YAML") from None
    return _coerce_compare(data, str(path))


def save_compare_config(config: CompareConfig, path: Path) -> None:
    data = dataclasses.asdict(config)
    path.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
