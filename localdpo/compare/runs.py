"""One run of a comparison: trained now, or kept from an earlier invocation's record (`localdpo.compare.resume`).

What the pipeline and the rounds share: the starting model and what every run reads of it (`Shared`), one
task's steers and their files (`TaskSteers`), and `finished_run`, which keeps or trains one run.
"""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import torch

from localdpo.compare import resume
from localdpo.compare.config import CompareConfig
from localdpo.compare.splits import OwnSteers
from localdpo.steers.steer import Steer

HISTORY_KEYS = {"eval/task_accuracy": "task_accuracy", "eval/task_format_kept": "format_kept"}
WEIGHTS_DIR = "weights"
"""Where a run that a later round continues saves its final weights (a LoRA adapter merged in), in its run
directory: `save_final_model`'s Hugging Face layout."""


def log(message: str) -> None:
    print(f"[compare] {message}", flush=True)


def history_points(result_history: list[dict]) -> list[dict]:
    """A run's evaluations as the tables read them: `step` and the metrics of `HISTORY_KEYS`, preference
    accuracy and drift."""
    points = []
    for entry in result_history:
        point = {"step": int(entry["step"])}
        for key, name in HISTORY_KEYS.items():
            if key in entry:
                point[name] = float(entry[key])
        if "eval/preference_accuracy" in entry:
            point["preference_accuracy"] = float(entry["eval/preference_accuracy"])
        if "eval/drift_kl" in entry:
            point["drift_kl"] = float(entry["eval/drift_kl"])
        points.append(point)
    return points


@dataclass
class Shared:
    """What every task's runs share: the starting model, its tokenizer, device and drift set, the fingerprint
    entries of every run, and the wall times of the runs kept from an earlier invocation."""

    model: object
    tokenizer: object
    device: torch.device
    drift: object
    inputs: dict
    """Starting model, tokenizer, device, localdpo version (`resume.shared_inputs`)."""
    kept_seconds: list[float] = field(default_factory=list)


@dataclass
class TaskSteers:
    """One task's steers as its runs read them (from the files in the task directory) and those files."""

    splits: dict[str, list[Steer]]
    """Split (`train`, `heldout`, and `validation` when selecting) -> its steers."""
    files: dict[str, Path]
    """Split -> its file in the task directory."""
    summaries: dict
    """Split -> yield summary of the steers the starting model made (empty for steers loaded from files)."""
    own: OwnSteers | None = None
    """Without a task: how the person's steers were split (None with a task)."""


@contextmanager
def quiet_weights():
    """transformers' progress bars off while weights are written or read (one line per run otherwise)."""
    from transformers.utils import logging as hf_logging

    was = hf_logging.is_progress_bar_enabled()
    hf_logging.disable_progress_bar()
    try:
        yield
    finally:
        if was:
            hf_logging.enable_progress_bar()


def save_weights(trainer) -> Path:
    """The trained model's weights as a plain model (a LoRA adapter merged in) under `<run_dir>/weights`,
    atomically: what the next round starts from."""
    from localdpo.reference.fingerprint import is_peft_model
    from localdpo.trainer.checkpoint import save_final_model

    model = trainer.model.merge_and_unload() if is_peft_model(trainer.model) else trainer.model
    with quiet_weights():
        return save_final_model(model, trainer.tokenizer, trainer.run_dir, WEIGHTS_DIR)


def finished_run(
    config: CompareConfig,
    run_config,
    shared: Shared,
    steers: TaskSteers,
    evaluated: str,
    cache,
    eval_reference,
    doing: str,
    *,
    train: tuple[list[Steer], Path] | None = None,
    start=None,
    inputs: dict | None = None,
    keep_weights: bool = False,
):
    """`(run, eval_reference)`: the run kept from an earlier invocation when its record has this run's
    fingerprint, else (after clearing what a cut-off attempt left, and logging `doing`) trained now on the train
    steers, evaluated on the `evaluated` split, and recorded; `eval_reference` is the reference of the evaluated
    steers for the next run (the trained run's, or the one given).

    A run of a later round passes its own `train` steers and their file, a callable giving the model it
    `start`s from (called only when it trains), and the fingerprint `inputs` that name that model; its held-out
    steers are still measured against the starting model, and `cache` may then be a callable giving the
    reference cache (called only when it trains). `keep_weights`: save the final weights (`save_weights`)
    before the record, so a record always has its weights beside it."""
    from localdpo.tasks import task_code_digest

    run_dir = run_config.resolved_run_dir
    name = str(run_dir.relative_to(config.output_dir))
    code = task_code_digest(run_config.eval.task)  # a task of yours: its code decides the verdicts
    train_steers, train_file = train or (steers.splits["train"], steers.files["train"])
    fingerprint = resume.run_fingerprint(
        run_config,
        [train_file, steers.files[evaluated]],
        shared.inputs | ({"task code": code} if code else {}) | (inputs or {}),
    )
    kept = resume.kept_run(run_dir, fingerprint, name)
    if kept is not None:
        log(f"kept {name} (finished earlier)")
        shared.kept_seconds.append(kept.seconds)
        return kept, eval_reference
    if resume.clear_partial(run_dir):
        log(f"{name} was cut off before it finished: removed it, training it again")
    log(doing)
    began = time.perf_counter()
    from localdpo.trainer import Trainer

    trainer = Trainer(
        run_config,
        model=start() if start is not None else shared.model,
        tokenizer=shared.tokenizer,
        train_steers=train_steers,
        eval_steers=steers.splits[evaluated],
        reference_cache=cache() if callable(cache) else cache,
        drift_set=shared.drift,
        eval_reference=eval_reference,
        eval_reference_model=shared.model if start is not None else None,
    )
    result = trainer.run()
    if keep_weights:
        save_weights(trainer)
    finished = resume.write_record(
        run_dir,
        fingerprint,
        history=result.history,
        items=trainer.final_items,
        initial_items=trainer.initial_items,
        seconds=time.perf_counter() - began,
    )
    return finished, trainer.eval_reference
