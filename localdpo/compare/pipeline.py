"""Run a comparison end to end: steers, one reference cache, every variant and seed, results and plots.

Every run starts from the same weights, sees the same steers in the same seeded order for the same number
of steps, and is evaluated on the same held-out prompts, held-out steers and drift prompts, so each
metric is a vector over shared items and methods are compared item by item (`localdpo.compare.stats`).
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from localdpo.compare.config import CompareConfig, save_compare_config
from localdpo.compare.plots import accuracy_over_steps, accuracy_vs_drift
from localdpo.compare.report import RunRecord, atomic_write_text, summarize, write_csv, write_markdown
from localdpo.steers import Steer, load_steers, save_steers

HISTORY_KEYS = {"eval/task_accuracy": "task_accuracy", "eval/task_format_kept": "format_kept"}


@dataclass
class ComparisonResult:
    out_dir: Path
    records: list[RunRecord]
    results_md: Path
    results_csv: Path
    plots: list[Path]
    seconds: float


def _log(message: str) -> None:
    print(f"[compare] {message}", flush=True)


def _prompt_ids(steers: list[Steer]) -> set[str]:
    return {s.meta.get("prompt_id") for s in steers if isinstance(s.meta, dict) and s.meta.get("prompt_id")}


def prepare_steers(config: CompareConfig, model, tokenizer) -> tuple[list[Steer], list[Steer], dict]:
    """Train and held-out steers (loaded or made from the starting model's own mistakes), split-checked."""
    from localdpo.steermaking import make_steers
    from localdpo.tasks import get_task

    source, summaries = config.steers, {}
    task = get_task(config.task)

    def made(split: str, n: int) -> list[Steer]:
        from localdpo.steermaking import GenerationConfig

        generation = GenerationConfig(
            max_new_tokens=source.max_new_tokens or task.max_new_tokens, batch_size=config.eval_batch_size
        )
        steers, summary = make_steers(
            model, tokenizer, task, n=n, seed=source.seed, split=split, generation=generation
        )
        summaries[split] = summary.__dict__ | {"wrong": summary.wrong}
        _log(summary.row())
        return steers

    train = load_steers(source.train_file) if source.train_file else made("train", source.train_prompts)
    heldout = (
        load_steers(source.heldout_file) if source.heldout_file else made("heldout", source.heldout_prompts)
    )
    leaked = _prompt_ids(train) & _prompt_ids(heldout)
    if leaked:
        raise ValueError(
            f"{len(leaked)} held-out prompts also appear in the training steers, e.g. {sorted(leaked)[:3]}"
        )
    if not train:
        raise ValueError("no training steers: the starting model made no usable mistake on the train prompts")
    return train, heldout, summaries


def _history(result_history: list[dict]) -> list[dict]:
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


def run_comparison(config: CompareConfig, *, variants: list[str] | None = None) -> ComparisonResult:
    """Make (or load) the steers, train every variant for every seed, evaluate, write results and plots."""
    from localdpo.trainer import Trainer
    from localdpo.trainer.device import autocast_dtype, resolve_device
    from localdpo.trainer.drift import DriftSet, load_drift_prompts
    from localdpo.trainer.modeling import load_base_model
    from localdpo.trainer.reference import reference_cache_for

    started = time.perf_counter()
    out = config.output_dir
    out.mkdir(parents=True, exist_ok=True)
    save_compare_config(config, out / "compare_config.yaml")
    labels = variants or list(config.variants)

    probe = config.run_config(labels[0], config.seeds[0])
    torch.manual_seed(0)
    model, tokenizer = load_base_model(probe)
    model.eval()
    _log(
        f"starting model: {config.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)"
    )

    train_steers, heldout_steers, steer_summaries = prepare_steers(config, model, tokenizer)
    save_steers(train_steers, out / "steers_train.jsonl")
    save_steers(heldout_steers, out / "steers_heldout.jsonl")
    _log(f"{len(train_steers)} train steers, {len(heldout_steers)} held-out steers")

    device = resolve_device(probe.train.device)
    model.to(device)
    cache = reference_cache_for(
        probe, model, tokenizer, device=device, autocast_dtype=autocast_dtype(probe.train.precision, device)
    )
    drift = None
    if probe.eval.drift:
        prompts = load_drift_prompts(probe.eval.drift_prompts)[: probe.eval.drift_num_prompts]
        drift = DriftSet.build(
            model, tokenizer, prompts, max_new_tokens=probe.eval.drift_max_new_tokens, device=device
        )

    records: list[RunRecord] = []
    base_items, base_point = None, None
    eval_reference = None  # the held-out steers' reference log-probs, computed by the first run, then shared
    for seed in config.seeds:
        for label in labels:
            # the starting model is evaluated once (first run's step 0) and shared by every curve
            extra = ["eval.at_start=false"] if base_items is not None else []
            run_config = config.run_config(label, seed, extra=extra)
            _log(
                f"training {label} seed {seed}: {run_config.train.max_steps} steps of {run_config.train.batch_size} steers"
            )
            trainer = Trainer(
                run_config,
                model=model,
                tokenizer=tokenizer,
                train_steers=train_steers,
                eval_steers=heldout_steers,
                reference_cache=cache,
                drift_set=drift,
                eval_reference=eval_reference,
            )
            result = trainer.run()
            eval_reference = trainer.eval_reference
            history = _history(result.history)
            if base_items is None and trainer.initial_items:
                base_items, base_point = trainer.initial_items, history[0]
            elif base_point is not None and (not history or history[0]["step"] != 0):
                history = [base_point, *history]
            records.append(
                RunRecord(label, seed, trainer.final_items, history=history, run_dir=str(result.run_dir))
            )
            del trainer
    if base_items is not None:
        records.insert(0, RunRecord("base", 0, base_items))

    rows = summarize(records, baseline=config.baseline)
    results_md, results_csv = out / "results.md", out / "results.csv"
    write_csv(rows, results_csv, baseline=config.baseline)
    seconds = time.perf_counter() - started
    write_markdown(
        rows,
        results_md,
        baseline=config.baseline,
        title=f"localdpo comparison `{config.name}`: {config.task} steers, {config.model}",
        notes=_notes(
            config, records, steer_summaries, len(train_steers), len(heldout_steers), seconds, device
        ),
    )
    _write_records(records, out / "records.jsonl")
    plots = [
        accuracy_over_steps(records, out / "accuracy_over_steps.png"),
        accuracy_vs_drift(rows, out / "accuracy_vs_drift.png"),
    ]
    _log(
        f"done in {seconds / 60:.1f} min: {results_md}, {results_csv}, plots {', '.join(str(p) for p in plots)}"
    )
    return ComparisonResult(out, records, results_md, results_csv, plots, seconds)


def _notes(config, records, steer_summaries, n_train, n_heldout, seconds, device) -> list[str]:
    run = config.run_config(config.baseline, config.seeds[0])
    n_prompts = next((len(r.items["task_accuracy"]) for r in records if "task_accuracy" in r.items), 0)
    notes = [
        f"Seeds {config.seeds}; every variant trained {run.train.max_steps} steps x {run.train.batch_size} steers "
        f"(x{run.train.grad_accum} accumulation) at lr {run.optim.lr}, beta {run.loss.beta}, from the same weights.",
        f"Steers: {n_train} for training, {n_heldout} held out, made from the starting model's own greedy mistakes "
        f"(train and held-out prompts are disjoint by a fixed hash of each prompt).",
        f"Task accuracy and format kept: greedy answers to {n_prompts} held-out prompts; preference accuracy and "
        "chosen-span NLL: the held-out steers (divergent span); drift: mean per-token KL(reference || policy) on "
        "unrelated chat prompts (per-prompt means).",
        "Intervals: 95% two-level bootstrap (seeds, then items); 'not separated' means the paired interval of the "
        f"difference against `{config.baseline}` contains 0: the data cannot tell those two apart.",
        "`base` is the starting model: one row, no training noise. Its held-out preference accuracy is 0 because "
        "every margin is exactly 0 there (policy = reference): ties count as not preferred.",
        f"Machine: {platform.processor() or platform.machine()}, device {device}, torch {torch.__version__}; "
        f"wall time {seconds / 60:.1f} min.",
    ]
    if steer_summaries:
        notes.append(
            "Steer yield: "
            + json.dumps(
                {
                    k: {x: v[x] for x in ("tried", "correct", "uncheckable", "steers")}
                    for k, v in steer_summaries.items()
                }
            )
        )
    return notes


def _write_records(records: list[RunRecord], path: Path) -> None:
    """Per-run items and histories as JSONL, written atomically (temporary file, then rename)."""
    rows = (
        {
            "method": r.method,
            "seed": r.seed,
            "run_dir": r.run_dir,
            "history": r.history,
            "items": {k: [float(x) for x in v] for k, v in r.items.items()},
        }
        for r in records
    )
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
