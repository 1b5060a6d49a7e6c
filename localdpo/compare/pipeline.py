"""Run a comparison end to end: steers, one reference cache, every variant and seed, results and plots.

Every run starts from the same weights, sees the same steers in the same seeded order for the same number
of steps, and is evaluated on the same held-out prompts, held-out steers and drift prompts, so each
metric is a vector over shared items and methods are compared item by item (`localdpo.compare.stats`).

Without a task (`task: null`), the steers are a person's own (`localdpo.compare.splits`): no prompt is
answered and checked, and the metrics are those the held-out steers measure themselves.
"""

from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from localdpo.compare import resume
from localdpo.compare.config import CompareConfig, save_compare_config
from localdpo.compare.plots import accuracy_over_rounds, accuracy_over_steps, accuracy_vs_drift, dose_plots
from localdpo.compare.report import (
    METRICS_BY_KEY,
    PRIMARY_METRIC,
    RunRecord,
    intervals_note,
    summarize,
    write_csv,
    write_markdown,
)
from localdpo.compare.runs import Shared, TaskSteers, finished_run, history_points, log
from localdpo.compare.splits import OwnSteers, own_steers, prompt_key
from localdpo.config import ConfigError
from localdpo.fileio import atomic_write_text
from localdpo.steers import Steer, load_steers, save_steers


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
    from localdpo.steermaking import make_steers
    from localdpo.tasks import get_task

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
    labels = variants or list(config.variants)
    unknown = [label for label in labels if label not in config.variants]
    if unknown:
        raise ValueError(f"unknown variant {unknown[0]!r}; variants: {', '.join(config.variants)}")
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

    probe = config.run_config(labels[0], config.seeds[0])
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
    for task in config.tasks:
        task_records, task_outputs = _run_task(config, task, labels, shared, started)
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


def _select(config: CompareConfig, task: str | None, labels, shared: Shared, steers: TaskSteers, cache):
    """Train every grid point of every variant once (first seed), score it on the validation split; the points
    trained by an earlier invocation are read from their records, so the same points are chosen. With
    `select.shared_from` only that variant's grid runs, and every variant gets its chosen point."""
    from localdpo.compare.selection import GridPoint, choose

    points: list[GridPoint] = []
    chosen: dict[str, GridPoint] = {}
    tag = config.task_name(task)
    eval_reference = None
    seed = config.seeds[0]
    source = config.select.shared_from
    for label in [source] if source else labels:
        candidates = []
        for point in config.select.points(label):
            run_config = config.run_config(label, seed, task=task, point=point, selection=True)
            doing = f"[{tag}] selecting {label} {' '.join(point)}: {run_config.train.max_steps} steps"
            run, eval_reference = finished_run(
                config, run_config, shared, steers, "validation", cache, eval_reference, doing
            )
            metrics = run.history[-1] if run.history else {}
            grid_point = GridPoint(
                label,
                point,
                {k: float(v) for k, v in metrics.items() if k.startswith("eval/")},
                primary=primary_metric_of(config, task),
            )
            grid_point.run_dir = str(run.run_dir)
            candidates.append(grid_point)
        chosen[label] = choose(candidates)
        log(f"[{tag}] {label}: chose {' '.join(chosen[label].point) or '(as written)'}")
        points += candidates
    if source:
        chosen |= {label: chosen[source] for label in labels}  # the one chosen point, for every variant
    return points, chosen


def primary_metric_of(config: CompareConfig, task: str | None) -> str:
    """The comparison's primary metric (`localdpo.compare.report.PRIMARY_METRICS`): task accuracy with a task;
    without one uptake, or held-out preference accuracy when the runs skip the steer metrics."""
    if task is not None:
        return PRIMARY_METRIC
    steer_metrics = config.run_config(config.baseline, config.seeds[0], task=None).eval.steer_metrics
    return "uptake" if steer_metrics else "preference_accuracy"


SELECTION_WORDS = {
    "task_accuracy": "validation task accuracy",
    "uptake": "uptake at the validation steers",
    "preference_accuracy": "validation preference accuracy",
    "chosen_nll": "chosen-span NLL",
    "drift_kl": "drift",
}


def _selection_order(primary: str) -> str:
    """`higher validation task accuracy, then higher ...`: the order `score_keys(primary)` decides in."""
    from localdpo.compare.selection import score_keys

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


def _run_task(config: CompareConfig, task: str | None, labels, shared: Shared, started: float):
    from localdpo.compare.selection import selection_table
    from localdpo.reference.training import reference_cache_for
    from localdpo.trainer.device import autocast_dtype

    out = config.task_dir(task)
    out.mkdir(parents=True, exist_ok=True)
    kept_before = len(shared.kept_seconds)
    tag = config.task_name(task)
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
    probe = config.run_config(labels[0], config.seeds[0], task=task)
    cache = reference_cache_for(
        probe,
        shared.model,
        shared.tokenizer,
        device=shared.device,
        autocast_dtype=autocast_dtype(probe.train.precision, shared.device),
    )

    grid_points, chosen = [], {}
    if config.select is not None:
        grid_points, chosen = _select(config, task, labels, shared, steers, cache)

    records: list[RunRecord] = []
    first: dict[tuple[str, int], resume.FinishedRun] = {}  # in rounds: the runs round 2 continues
    base_items, base_point = None, None
    eval_reference = None  # the held-out steers' reference log-probs, computed by the first run, then shared
    for seed in config.seeds:
        for label in labels:
            # the starting model is evaluated once (first run's step 0) and shared by every curve
            extra = ["eval.at_start=false"] if base_items is not None else []
            point = chosen[label].point if label in chosen else []
            run_config = config.run_config(label, seed, task=task, point=point, extra=extra)
            doing = (
                f"[{tag}] training {label} seed {seed}: {run_config.train.max_steps} steps of "
                f"{run_config.train.batch_size} steers" + (f" ({' '.join(point)})" if point else "")
            )
            run, eval_reference = finished_run(
                config,
                run_config,
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
                    overrides=list(point),
                )
            )
    if base_items is not None:
        records.insert(0, RunRecord("base", 0, base_items, task=tag if task is not None else None))
    by_round: dict[int, list] = {}
    if config.rounds is not None:
        from localdpo.compare.rounds import round_records, run_rounds

        chains = run_rounds(config, task, labels, shared, steers, cache, chosen, first, eval_reference)
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
    notes = _notes(config, task, records, steers, seconds, shared.device, chosen)
    selection_md = ""
    if config.select is not None:
        source = config.select.shared_from
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
            + _selection_order(primary_metric_of(config, task))
            + ". The held-out split was not read during selection."
        )
        selection_md = "\n## Selection (validation split)\n\n" + selection_table(grid_points, chosen)
    if by_round:
        from localdpo.compare.rounds_report import rounds_markdown, write_rounds_csv

        notes += rounds_notes(config, task, chosen)
        selection_md = rounds_markdown(by_round, baseline=config.baseline) + selection_md
        write_rounds_csv(by_round, out / "rounds.csv", baseline=config.baseline, task=tag)
    if kept:
        n_runs = len(grid_points) + len(config.seeds) * len(labels) * (config.rounds.count if by_round else 1)
        notes.append(
            f"Resumed: {kept} of the {n_runs} runs were kept from an earlier invocation that was stopped (read "
            "from their records); the wall time adds their own times to this invocation's."
        )
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
        accuracy_vs_drift(rows, out / "accuracy_vs_drift.png", metric=primary_metric_of(config, task)),
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
    notes = [
        f"Pooled over the tasks {names}: each run's held-out items of every task side by side, so the "
        f"paired difference against `{config.baseline}` weighs each task by its number of items; per-task "
        "tables are in each task's folder.",
        intervals_note(config.baseline),
        f"Machine: {platform.processor() or platform.machine()}, device {device}, torch {torch.__version__}; "
        f"wall time {seconds / 60:.1f} min.",
    ]
    if config.rounds is not None:
        notes.insert(
            1,
            f"Steering in rounds: the runs of the last round ({config.rounds.count}); every round is in "
            "each task's folder.",
        )
    write_markdown(
        rows,
        results_md,
        baseline=config.baseline,
        title=f"localdpo comparison `{config.name}`: pooled over {', '.join(names)}, {config.model}",
        notes=notes,
        extra=per_task,
    )


def _training_hyperparameters(config, task: str, labels, chosen: dict) -> str:
    """The learning rate and beta the final runs of `labels` trained with: one pair, or each variant's own."""
    values = {}
    for label in labels:
        point = chosen[label].point if label in chosen else []
        run = config.run_config(label, config.seeds[0], task=task, point=point)
        values[label] = f"lr {run.optim.lr:g}, beta {run.loss.beta:g}"
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


def _notes(config, task, records, steers: TaskSteers, seconds, device, chosen) -> list[str]:
    from localdpo.compare.selection import edge_note

    run = config.run_config(config.baseline, config.seeds[0], task=task)
    n_train, n_heldout = len(steers.splits["train"]), len(steers.splits["heldout"])
    primary = primary_metric_of(config, task)
    notes = [
        f"Seeds {config.seeds}; every variant trained {run.train.max_steps} steps x {run.train.batch_size} steers "
        f"(x{run.train.grad_accum} accumulation) from the same weights, at "
        + _training_hyperparameters(config, task, [r.method for r in records if r.method != "base"], chosen),
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
        f"Machine: {platform.processor() or platform.machine()}, device {device}, torch {torch.__version__}; "
        f"wall time {seconds / 60:.1f} min.",
    ]
    if run.eval.max_steers is not None and run.eval.max_steers < n_heldout:
        notes.append(
            f"The held-out steer metrics read the first {run.eval.max_steers} of the {n_heldout} held-out steers "
            f"(run.eval.max_steers={run.eval.max_steers})."
        )
    if chosen:
        source = config.select.shared_from
        selected = {source: chosen[source]} if source else chosen  # a shared point: one variant's grid ran
        notes.append(edge_note(selected, {label: config.select.points(label) for label in selected}))
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
    return notes


def rounds_notes(config: CompareConfig, task: str, chosen: dict) -> list[str]:
    """The results notes of a comparison in rounds: what a later round does, its reference and why, where the
    hyperparameters come from."""
    rounds = config.rounds
    run = config.run_config(config.baseline, config.seeds[0], task=task, round_=2)
    reference = (
        "the model the round starts from (rounds.reference=previous, as in iterative RPO, Pang et al. 2024: "
        "the steers' rejected sides are that model's own output, so each log-ratio starts at 0 on them)"
        if rounds.reference.value == "previous"
        else "the starting model in every round (rounds.reference=start: one fixed KL anchor)"
    )
    chosen_where = (
        "chosen once on round 1's validation split (below) and kept for every round"
        if chosen
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
