"""Run a comparison end to end: steers, one reference cache, every variant and seed, results and plots.

Every run starts from the same weights, sees the same steers in the same seeded order for the same number
of steps, and is evaluated on the same held-out prompts, held-out steers and drift prompts, so each
metric is a vector over shared items and methods are compared item by item (`localdpo.compare.stats`).

Without a task (`task: null`), the steers are a person's own (`localdpo.compare.splits`): no prompt is
answered and checked, and the metrics are those the held-out steers measure themselves.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from localdpo.compare import resume
from localdpo.compare.config import CompareConfig, Point, save_compare_config
from localdpo.compare.plan import TaskPlan, comparison_plan
from localdpo.compare.plots import accuracy_over_rounds, accuracy_over_steps, accuracy_vs_drift, dose_plots
from localdpo.compare.report import (
    RunRecord,
    comparison_title,
    pooled_notes,
    primary_metric_of,
    results_notes,
    summarize,
    write_csv,
    write_markdown,
)
from localdpo.compare.runs import Shared, TaskSteers, finished_run, history_points, log
from localdpo.compare.splits import OwnSteers, own_steers, prompt_key
from localdpo.config import ConfigError
from localdpo.steers.steer import Steer, load_steers, save_steers
from localdpo.storage.fileio import atomic_write_text


@dataclass
class ComparisonResult:
    out_dir: Path
    records: list[RunRecord]
    results_md: Path
    results_csv: Path
    plots: list[Path]
    seconds: float


def _prompt_ids(steers: list[Steer]) -> dict[str, str]:
    """What names the steers' prompts (each prompt itself, `prompt_key`, and the task prompt id it records) ->
    how an error shows it."""
    ids = {}
    for steer in steers:
        text = steer.prompt if isinstance(steer.prompt, str) else steer.prompt[-1]["content"]
        ids[f"prompt:{prompt_key(steer.prompt)}"] = repr(text[:60] + ("..." if len(text) > 60 else ""))
        if isinstance(steer.meta.get("prompt_id"), str):
            ids[steer.meta["prompt_id"]] = repr(steer.meta["prompt_id"])
    return ids


def _check_disjoint(train: list[Steer], heldout: list[Steer], validation: list[Steer]) -> None:
    """Nothing when no prompt is in two splits; `ConfigError` (the steers given are wrong) counting those that
    are."""
    for (a_name, a), (b_name, b) in (
        (("held-out", heldout), ("training", train)),
        (("validation", validation), ("training", train)),
        (("validation", validation), ("held-out", heldout)),
    ):
        ids, others = _prompt_ids(a), _prompt_ids(b)
        leaked = sorted(ids[key] for key in ids.keys() & others.keys() if not key.startswith("prompt:"))
        leaked = leaked or sorted(ids[key] for key in ids.keys() & others.keys())
        if leaked:
            raise ConfigError(
                f"{len(leaked)} {a_name} prompts also appear in the {b_name} steers, e.g. {', '.join(leaked[:3])}"
            )


def split_own_steers(config: CompareConfig) -> OwnSteers:
    """A person's steers (no task) split as `localdpo.compare.splits.own_steers` splits them, for `config`,
    checked so that no prompt reaches two splits (a held-out file may share prompts with the train file)."""
    source = config.steers
    own = own_steers(
        source.train_file,
        heldout_file=source.heldout_file,
        validation_file=source.validation_file,
        validation=config.select is not None,
    )
    _check_disjoint(own.splits["train"], own.splits["heldout"], own.splits.get("validation", []))
    return own


def comparison_steers(
    config: CompareConfig, task_name: str | None, model, tokenizer
) -> tuple[list[Steer], list[Steer], list[Steer], dict]:
    """Train, held-out and (when selecting) validation steers of one task, loaded or made from the starting
    model's own mistakes, or without a task (None) a person's own, split (`split_own_steers`); checked so that
    no prompt reaches two splits."""
    from localdpo.generation import GenerationConfig
    from localdpo.tasks import get_task
    from localdpo.tasks.steermaking import make_steers

    if task_name is None:
        own = split_own_steers(config)
        return own.splits["train"], own.splits["heldout"], own.splits.get("validation", []), {}
    source, summaries = config.steers, {}
    task = get_task(task_name)

    def loaded(path: str) -> list[Steer]:
        # one file per task: `{task}` in its name
        return load_steers(path.replace("{task}", config.task_name(task_name)))

    def made(split: str, n: int) -> list[Steer]:
        generation = GenerationConfig(
            max_new_tokens=source.max_new_tokens or task.max_new_tokens, batch_size=config.eval_batch_size
        )
        steers, summary = make_steers(
            model, tokenizer, task, n=n, seed=source.seed, split=split, generation=generation
        )
        summaries[split] = summary.__dict__ | {"wrong": summary.wrong}
        log(summary.row())
        return steers

    train = loaded(source.train_file) if source.train_file else made("train", source.train_prompts)
    heldout = loaded(source.heldout_file) if source.heldout_file else made("heldout", source.heldout_prompts)
    validation: list[Steer] = []
    if config.select is not None:
        validation = (
            loaded(source.validation_file)
            if source.validation_file
            else made("validation", config.select.validation_prompts)
        )
    _check_disjoint(train, heldout, validation)
    if not train:
        raise ValueError(
            f"no training steers for {task_name}: the starting model made no usable mistake on the train prompts"
        )
    return train, heldout, validation, summaries


def run_comparison(
    config: CompareConfig, *, variants: list[str] | None = None, restart: bool = False
) -> ComparisonResult:
    """For each task: make (or load) the steers, choose each variant's hyperparameters on the validation
    split (when `select:` is set), train every variant for every seed, evaluate on the held-out split, write
    results and plots; with several tasks, also a table pooled over the tasks.

    An output directory that holds this comparison stopped part-way resumes it (`localdpo.compare.resume`):
    finished runs are kept, a run cut off is trained again; another comparison there raises `ResumeError`.
    `restart` first removes what an earlier comparison wrote there."""
    from localdpo.trainer.device import resolve_device
    from localdpo.trainer.drift import DriftSet
    from localdpo.trainer.modeling import load_base_model

    started = time.perf_counter()
    out = config.output_dir
    plans = comparison_plan(config, variants)
    saved = out / resume.CONFIG_NAME
    if restart:
        removed = resume.clear_comparison(config)
        if removed:
            log(f"--restart: removed from {out}: {', '.join(str(p.relative_to(out)) for p in removed)}")
    elif saved.is_file():
        resume.check_config(saved, config)
    if None in config.tasks:
        split_own_steers(config)  # too few steers, or a prompt in two splits: said before the model loads
    out.mkdir(parents=True, exist_ok=True)
    save_compare_config(config, saved)

    probe = plans[0].probe
    torch.manual_seed(0)
    model, tokenizer = load_base_model(probe)
    model.eval()
    log(
        f"starting model: {config.model} ({sum(p.numel() for p in model.parameters()) / 1e6:.1f}M parameters)"
    )
    device = resolve_device(probe.train.device)
    model.to(device)
    drift = None
    if probe.eval.drift:
        drift = DriftSet.for_eval(model, tokenizer, probe.eval, device=device)
    shared = Shared(model, tokenizer, device, drift, resume.shared_inputs(model, tokenizer, device))

    records: list[RunRecord] = []
    outputs: list[tuple[Path, Path, list[Path]]] = []
    for plan in plans:
        task_records, task_outputs = _run_task(config, plan, shared, started)
        records += task_records
        outputs.append(task_outputs)
    results_md, results_csv, plots = outputs[0]
    if len(config.tasks) > 1:
        results_md, results_csv = out / "results.md", out / "results.csv"
        seconds = time.perf_counter() - started + sum(shared.kept_seconds)
        _write_pooled(config, records, results_md, results_csv, seconds, device)
        plots = [p for _, _, task_plots in outputs for p in task_plots]
    seconds = time.perf_counter() - started
    kept = f" ({len(shared.kept_seconds)} runs kept from earlier)" if shared.kept_seconds else ""
    log(f"done in {seconds / 60:.1f} min{kept}: {results_md}, {results_csv}")
    return ComparisonResult(out, records, results_md, results_csv, plots, seconds)


def _task_steers(config: CompareConfig, task: str | None, shared: Shared) -> TaskSteers:
    """The task's steers, loaded or made (`comparison_steers`), or those the starting model made into the task
    directory earlier from the same inputs (`resume.made_steers`); saved there, and read back from there so
    that a run trained now and a run trained after a resume read the very same steers. Without a task, the
    person's steers split (`split_own_steers`), saved and read back the same way."""
    out = config.task_dir(task)
    if task is None:
        own = split_own_steers(config)
        files = {split: out / f"steers_{split}.jsonl" for split in own.splits}
        for split, steers in own.splits.items():
            save_steers(steers, files[split])
        return TaskSteers({split: load_steers(path) for split, path in files.items()}, files, {}, own)
    key = resume.steers_key(config, task, shared.inputs)
    made_files, summaries = resume.made_steers(out, key) or ({}, {})
    source = config
    if made_files:
        loaded = {f"{split}_file": str(path) for split, path in made_files.items()}
        source = replace(config, steers=replace(config.steers, **loaded))
        log(f"[{task}] kept the steers made earlier: {', '.join(str(p) for p in made_files.values())}")
    train, heldout, validation, made = comparison_steers(source, task, shared.model, shared.tokenizer)
    if config.rounds is not None and "train" in made:  # round 1's steers: the starting model's mistakes
        by = f"{config.model}@{shared.inputs['starting model'][:12]}"
        train = [replace(steer, round=1, rejected_by=by) for steer in train]
    splits = {"train": train, "heldout": heldout} | ({"validation": validation} if config.select else {})
    files = {split: out / f"steers_{split}.jsonl" for split in splits}
    for split, steers in splits.items():
        if split not in made_files:  # steers reused from these very files are not written again
            save_steers(steers, files[split])
    if made:  # written after the steer files, so its presence says they are whole
        resume.write_steer_manifest(out, key, {split: files[split] for split in made}, made)
        summaries = made
    read = {split: load_steers(path) for split, path in files.items()}
    return TaskSteers(read, files, summaries)


def _select(config: CompareConfig, plan: TaskPlan, shared: Shared, steers: TaskSteers, cache):
    """Train every selection run of the plan (every grid point of every variant, first seed), score it on the
    validation split, and choose; the points trained by an earlier invocation are read from their records, so
    the same points are chosen. With `select.shared_from` only that variant's grid runs, and every variant gets
    its chosen point. Returns every scored point, each variant's chosen one, and that one's typed `Point`."""
    from localdpo.compare.selection import GridPoint, choose

    points: list[GridPoint] = []
    best: dict[str, GridPoint] = {}
    chosen: dict[str, Point] = {}
    eval_reference = None
    primary = primary_metric_of(plan)
    for label in dict.fromkeys(run.label for run in plan.selection):
        runs = [run for run in plan.selection if run.label == label]
        candidates = []
        for planned in runs:
            overrides = planned.point.overrides
            doing = (
                f"[{plan.name}] selecting {label} {' '.join(overrides)}: {planned.config.train.max_steps} steps"
            )
            run, eval_reference = finished_run(
                config, planned.config, shared, steers, "validation", cache, eval_reference, doing
            )
            metrics = run.history[-1] if run.history else {}
            grid_point = GridPoint(
                label,
                overrides,
                {k: float(v) for k, v in metrics.items() if k.startswith("eval/")},
                primary=primary,
            )
            grid_point.run_dir = str(run.run_dir)
            candidates.append(grid_point)
        best[label] = choose(candidates)
        chosen[label] = runs[candidates.index(best[label])].point
        log(f"[{plan.name}] {label}: chose {' '.join(best[label].point) or '(as written)'}")
        points += candidates
    source = config.select.shared_from
    if source:
        best |= {label: best[source] for label in plan.labels}  # the one chosen point, for every variant
        chosen |= {label: chosen[source] for label in plan.labels}
    return points, best, chosen


def _train_final_runs(config: CompareConfig, plan: TaskPlan, shared: Shared, steers: TaskSteers, cache):
    """Train (or keep) the plan's round-1 runs in order; returns their records (the starting model's `base` row
    first, from the one run that evaluated it), the runs by (variant, seed) for the rounds to continue, and the
    held-out steers' reference for the runs after them."""
    task, tag = plan.task, plan.name
    records: list[RunRecord] = []
    first: dict[tuple[str, int], resume.FinishedRun] = {}  # in rounds: the runs round 2 continues
    base_items, base_point = None, None
    eval_reference = None  # the held-out steers' reference log-probs, computed by the first run, then shared
    for planned in plan.final:
        # the starting model is evaluated once (first run's step 0) and shared by every curve
        planned = planned.without_start_evaluation() if base_items is not None else planned
        label, seed, overrides = planned.label, planned.seed, planned.point.overrides
        doing = (
            f"[{tag}] training {label} seed {seed}: {planned.config.train.max_steps} steps of "
            f"{planned.config.train.batch_size} steers" + (f" ({' '.join(overrides)})" if overrides else "")
        )
        run, eval_reference = finished_run(
            config,
            planned.config,
            shared,
            steers,
            "heldout",
            cache,
            eval_reference,
            doing,
            keep_weights=config.rounds is not None,
        )
        first[(label, seed)] = run
        history = history_points(run.history)
        if base_items is None and run.initial_items:
            base_items, base_point = run.initial_items, history[0]
        elif base_point is not None and (not history or history[0]["step"] != 0):
            history = [base_point, *history]
        records.append(
            RunRecord(
                label,
                seed,
                run.items,
                history=history,
                run_dir=str(run.run_dir),
                task=tag if task is not None else None,
                overrides=overrides,
            )
        )
    if base_items is not None:
        records.insert(0, RunRecord("base", 0, base_items, task=tag if task is not None else None))
    return records, first, eval_reference


def _run_task(config: CompareConfig, plan: TaskPlan, shared: Shared, started: float):
    """One task's plan executed: its steers and reference cache, the selection runs (then the final runs at the
    chosen points), the final runs, the later rounds; its tables, records and plots. Returns its records (of the
    last round) and `(results.md, results.csv, plots)`."""
    from localdpo.compare.selection import selection_table
    from localdpo.reference.training import reference_cache_for
    from localdpo.trainer.device import autocast_dtype

    task, tag, out = plan.task, plan.name, plan.directory
    out.mkdir(parents=True, exist_ok=True)
    kept_before = len(shared.kept_seconds)
    steers = _task_steers(config, task, shared)
    train_steers, heldout_steers = steers.splits["train"], steers.splits["heldout"]
    validation_steers = steers.splits.get("validation", [])
    if steers.own is not None:
        log(f"[{tag}] {steers.own.note()}")
    else:
        log(
            f"[{tag}] {len(train_steers)} train steers, {len(heldout_steers)} held-out steers"
            + (f", {len(validation_steers)} validation steers" if config.select is not None else "")
        )
    probe = plan.probe
    cache = reference_cache_for(
        probe,
        shared.model,
        shared.tokenizer,
        device=shared.device,
        autocast_dtype=autocast_dtype(probe.train.precision, shared.device),
    )

    grid_points, best = [], {}
    if config.select is not None:
        grid_points, best, chosen = _select(config, plan, shared, steers, cache)
        plan = plan.choose(config, chosen)

    records, first, eval_reference = _train_final_runs(config, plan, shared, steers, cache)
    by_round: dict[int, list] = {}
    if config.rounds is not None:
        from localdpo.compare.rounds import round_records, run_rounds

        chains = run_rounds(config, plan, shared, steers, cache, first, eval_reference)
        round_of = round_records(chains, records, tag)
        by_round = {r: summarize(round_of[r], baseline=config.baseline) for r in round_of}
        records = round_of[max(round_of)]  # the headline and the pooled table: the last round
    kept = len(shared.kept_seconds) - kept_before

    rows = summarize(records, baseline=config.baseline) if not by_round else by_round[max(by_round)]
    results_md, results_csv = out / "results.md", out / "results.csv"
    write_csv(
        rows,
        results_csv,
        baseline=config.baseline,
        task=tag if task is not None else "",
        selection=grid_points,
    )
    seconds = time.perf_counter() - started + sum(shared.kept_seconds)  # kept runs: their own wall times
    notes = results_notes(
        config, plan, records, steers, seconds=seconds, device=shared.device, kept=kept, in_rounds=bool(by_round)
    )
    selection_md = ""
    if config.select is not None:
        selection_md = "\n## Selection (validation split)\n\n" + selection_table(grid_points, best)
    if by_round:
        from localdpo.compare.rounds_report import rounds_markdown, write_rounds_csv

        selection_md = rounds_markdown(by_round, baseline=config.baseline) + selection_md
        write_rounds_csv(by_round, out / "rounds.csv", baseline=config.baseline, task=tag)
    title = comparison_title(config, task)
    if by_round:
        title += f", round {max(by_round)} of {max(by_round)} (every round below)"
    write_markdown(rows, results_md, baseline=config.baseline, title=title, notes=notes, extra=selection_md)
    every = [record for r in sorted(by_round) for record in round_of[r]] if by_round else records
    _write_records(every, grid_points, out / "records.jsonl")
    # without a task: preference accuracy over steps (measured at every evaluation), the primary against drift
    over_steps = "task_accuracy" if task is not None else "preference_accuracy"
    plots = [
        accuracy_over_steps(
            round_of[1] if by_round else records, out / "accuracy_over_steps.png", metric=over_steps
        ),
        accuracy_vs_drift(rows, out / "accuracy_vs_drift.png", metric=primary_metric_of(plan)),
        *dose_plots(rows, out),  # metric against α, when the variants are named `sft+0.3ldpo_b0.1`, ...
    ]
    if by_round:
        plots.append(accuracy_over_rounds(by_round, out / "accuracy_over_rounds.png"))
    return records, (results_md, results_csv, plots)


def pooled_records(records: list[RunRecord]) -> list[RunRecord]:
    """One record per (method, seed) whose items are every task's items side by side (same order of tasks),
    for paired differences pooled over tasks; a method or metric missing from a task is left out."""
    tasks = list(dict.fromkeys(r.task for r in records))
    by = {(r.task, r.method, r.seed): r for r in records}
    pooled = []
    for method, seed in dict.fromkeys((r.method, r.seed) for r in records):
        parts = [by.get((task, method, seed)) for task in tasks]
        if any(p is None for p in parts):
            continue
        keys = set.intersection(*(set(p.items) for p in parts))
        items = {
            k: np.concatenate([np.asarray(p.items[k], dtype=np.float64) for p in parts]) for k in sorted(keys)
        }
        pooled.append(RunRecord(method, seed, items, task="+".join(tasks)))
    return pooled


def _write_pooled(
    config: CompareConfig, records, results_md: Path, results_csv: Path, seconds, device
) -> None:
    names = [config.task_name(task) for task in config.tasks]
    pooled = pooled_records(records)
    rows = summarize(pooled, baseline=config.baseline)
    write_csv(rows, results_csv, baseline=config.baseline, task="+".join(names))
    per_task = "\nPer task: " + ", ".join(f"[{task}]({task}/results.md)" for task in names) + "\n"
    write_markdown(
        rows,
        results_md,
        baseline=config.baseline,
        title=f"localdpo comparison `{config.name}`: pooled over {', '.join(names)}, {config.model}",
        notes=pooled_notes(config, names, seconds=seconds, device=device),
        extra=per_task,
    )


def _write_records(records: list[RunRecord], grid_points, path: Path) -> None:
    """Per-run items and histories (`phase` final) and every selection run's validation metrics (`phase`
    selection) as JSONL, written atomically (temporary file, then rename)."""
    rows = [
        {
            "phase": "final",
            "task": r.task,
            "method": r.method,
            "seed": r.seed,
            **({"round": r.round} if r.round is not None else {}),
            "overrides": r.overrides,
            "run_dir": r.run_dir,
            "history": r.history,
            "items": {k: [float(x) for x in v] for k, v in r.items.items()},
        }
        for r in records
    ]
    rows += [
        {
            "phase": "selection",
            "method": p.label,
            "overrides": p.point,
            "run_dir": p.run_dir,
            "metrics": p.metrics,
        }
        for p in grid_points
    ]
    atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))
