"""The model card (README.md) `localdpo export` writes beside an exported model: what it was trained on (the
run's method, loss and optimizer, the steer files with their sha256), how it did on held-out steers (the run's
first and last evaluation in `metrics.jsonl`), and how to run it."""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from localdpo.export.gguf import RoundTrip

RUN_CONFIG = "config.yaml"
METRICS = "metrics.jsonl"
CARD_METRICS = (
    "eval/preference_accuracy",
    "eval/rewards_margins",
    "eval/chosen_nll",
    "eval/recurrence",
    "eval/uptake",
    "eval/continuation_accuracy",
    "eval/task_accuracy",
    "eval/drift_kl",
)
"""Held-out metrics the model card shows, at the run's first and last evaluation (those it logged)."""
RENAMED_METRICS = {"eval/margin": "eval/rewards_margins"}
"""Keys runs logged before a rename -> today's key (a run trained earlier still gets its card)."""


def run_config(run_dir: str | os.PathLike):
    """The `RunConfig` a run saved as `run_dir/config.yaml`."""
    from localdpo.trainer.config import load_config

    return load_config(Path(run_dir) / RUN_CONFIG)


@dataclass(frozen=True)
class SteerFile:
    role: str
    """`train` or `held out`."""
    path: str
    sha256: str | None
    """None when the file is not found from here."""


@dataclass(frozen=True)
class RunSummary:
    """What the model card says about the run: its config, steer files and held-out metrics."""

    run_dir: Path
    config: object
    """The run's `RunConfig`."""
    steer_files: list[SteerFile]
    evaluations: list[dict[str, float]]
    """The run's first and last evaluation (`metrics.jsonl` rows with `eval/` keys), fewer if it logged fewer."""


def _steer_file(role: str, path: str | os.PathLike) -> SteerFile:
    from localdpo.storage.fileintegrity import sha256_file

    file = Path(path).expanduser()
    return SteerFile(role, str(path), sha256_file(file) if file.is_file() else None)


def run_summary(run_dir: str | os.PathLike, *, steers: str | os.PathLike | None = None) -> RunSummary:
    """The `RunSummary` of `run_dir`; `steers` names the train steer file when the run's config does not
    (steers passed in by `localdpo compare`)."""
    run_dir = Path(run_dir)
    config = run_config(run_dir)
    named = [("train", steers or config.data.train_steers), ("held out", config.data.eval_steers)]
    evaluations = []
    metrics = run_dir / METRICS
    if metrics.is_file():
        rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
        rows = [{RENAMED_METRICS.get(key, key): value for key, value in row.items()} for row in rows]
        evaluations = [r for r in rows if any(k.startswith("eval/") for k in r)]
        evaluations = evaluations[:1] + evaluations[1:][-1:]
    return RunSummary(
        run_dir=run_dir,
        config=config,
        steer_files=[_steer_file(role, path) for role, path in named if path],
        evaluations=evaluations,
    )


def training_lines(summary: RunSummary | None, source: str) -> list[str]:
    """The card's training section; `source` says what was exported (`` `runs/x/final` (model) ``)."""
    if summary is None:
        return [f"Not a localdpo run: {source} exported as it is."]
    config = summary.config
    lora = config.model.lora
    losses = ", ".join(f"{t.value}×{w:g}" for t, w in config.loss.combination)
    lines = [
        f"- run: `{summary.run_dir}`, exported from {source}",
        f"- starting model: `{config.model.name}`"
        + (f" (seed {config.model.tiny_seed})" if config.model.name == "tiny" else ""),
        f"- method: `{config.method.value}`, span `{config.span_mode.value}`, loss {losses}, β {config.loss.beta:g}",
        f"- optimizer: lr {config.optim.lr:g}, {config.train.max_steps} steps of "
        f"{config.train.batch_size}×{config.train.grad_accum} steers, seed {config.train.seed}",
    ]
    if lora.enabled:
        lines.append(f"- LoRA r {lora.r}, alpha {lora.alpha} on {', '.join(lora.target_modules)}: merged")
    for steer in summary.steer_files:
        digest = f"sha256 `{steer.sha256}`" if steer.sha256 else "not found from the export's directory"
        lines.append(f"- {steer.role} steers: `{steer.path}`, {digest}")
    if not any(s.role == "train" for s in summary.steer_files):
        lines.append("- train steers: passed in by the caller (`localdpo compare`); no file recorded")
    if not config.data.eval_steers:
        lines.append(
            f"- held-out steers: {config.data.eval_fraction:g} of the train steers (data seed {config.data_seed})"
        )
    return lines


def metrics_table(evaluations: list[dict[str, float]]) -> list[str]:
    """`CARD_METRICS` at each evaluation, as a Markdown table."""
    keys = [k for k in CARD_METRICS if any(k in e for e in evaluations)]
    if not keys:
        return ["No held-out evaluation was logged (`metrics.jsonl`)."]
    steps = [f"step {int(e['step'])}" for e in evaluations]
    lines = ["| metric | " + " | ".join(steps) + " |", "|---" * (len(steps) + 1) + "|"]
    for key in keys:
        values = [f"{e[key]:.4g}" if key in e else "" for e in evaluations]
        lines.append(f"| {key} | " + " | ".join(values) + " |")
    return lines


def round_trip_lines(round_trip: RoundTrip | None, tokenizer) -> list[str]:
    """What the read-back of a GGUF found (`localdpo.export.gguf.read_back`)."""
    if round_trip is None:
        return ["Not read back (`--no-verify`)."]
    answer = tokenizer.decode(round_trip.model_answer, skip_special_tokens=True)
    same = "the same" if round_trip.greedy_match else "different (rounding flipped a near tie)"
    return [
        f"Read back with transformers' GGUF loader, on the prompt {round_trip.prompt!r}: max |logit difference| "
        f"{round_trip.max_abs_logit_diff:.3g} (largest |logit| {round_trip.logit_scale:.3g}; accepted up to "
        f"{round_trip.tolerance:.3g} for {round_trip.outtype.value}); greedy answer {same}: {answer!r}.",
    ]


def model_card(
    *, title: str, exported_as: str, source: str, summary: RunSummary | None, use: list[str]
) -> str:
    """The README.md written beside an export: what it was trained on, how it did, and `use` (how to run it)."""
    lines = [f"# {title}", "", f"Exported by `localdpo export` as {exported_as}."]
    lines += ["", "## Training", "", *training_lines(summary, source)]
    if summary is not None:
        lines += ["", "## Held-out metrics", "", *metrics_table(summary.evaluations)]
    return "\n".join([*lines, "", "## Use", "", *use]) + "\n"
