"""Steering in rounds: each variant's models steered on their own mistakes, trained on, and steered again.

A person who steers a model steers, trains, and steers the trained model again, so each round's rejected side
is what the *current* model writes. With `rounds:` (`localdpo.compare.config.RoundsConfig`), a comparison's
round 1 is the comparison itself; then, for r = 2 .. `rounds.count`, every variant x seed (a chain):

1. answers the round's fresh prompts (`round_prompts`): the next `rounds.train_prompts` train-split prompts of
   the task's seeded sequence, the same for every chain of the round, never a prompt of an earlier round and
   never a validation or held-out prompt (a prompt's split is a hash of its id, `localdpo.tasks.split_of`);
2. makes steers from its own round r-1 model's greedy mistakes on them (`make_steers`), each with `round=r`
   and `rejected_by=<chain>@<fingerprint>` of that model, into `rounds/round<r>/steers_<variant>-seed<s>.jsonl`;
3. trains from its round r-1 weights for `rounds.max_steps` steps (a fresh optimizer and schedule, the
   hyperparameters chosen once on round 1's validation split), the new steers' reference log-probs from the
   reference `rounds.reference` names (default `previous`: the round r-1 model, as in iterative RPO);
4. is evaluated on the same held-out prompts and held-out steers as round 1, drift and the held-out
   preference metrics against the starting model, so rounds compare.

The yield of round r is the fraction of its prompts on which the model entering it (trained on rounds < r)
still made a mistake that gave a steer; round 1's is the starting model's. A chain whose model makes no
mistake on a round's prompts has nothing to train on: its model goes on unchanged.

Resuming: a later round's run is kept by its record like any run (`localdpo.compare.resume`); its fingerprint
names the run it continues (that run's own fingerprint) and the reference. Its steers are reused when their
manifest names the same run and prompts. Every run a later round continues saves its weights
(`runs.WEIGHTS_DIR`, a LoRA adapter merged in) and removes them once the chain's next round has its record;
the last round's models are saved as any run's are (`run.checkpoint.save_final`).
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

import localdpo
from localdpo.compare import resume
from localdpo.compare.config import CompareConfig, RoundReference
from localdpo.compare.plan import TaskPlan
from localdpo.compare.report import STARTING_MODEL, RunRecord
from localdpo.compare.runs import (
    WEIGHTS_DIR,
    Shared,
    TaskSteers,
    finished_run,
    history_points,
    log,
    quiet_weights,
)
from localdpo.reference.fingerprint import content_hash, model_label
from localdpo.steers.steer import Steer, load_steers, save_steers
from localdpo.storage.fileio import atomic_write_text
from localdpo.tasks import TaskPrompt, get_task

ROUNDS_DIR = "rounds"
"""The steers of rounds 2 and later, one folder per round, in the task directory."""


@dataclass
class ChainRound:
    """One chain (variant x seed) after one round."""

    run: resume.FinishedRun
    """The run that trained it this round (the previous round's, when it had nothing to train on)."""
    yield_items: np.ndarray | None
    """(P,) 1.0 where a prompt of this round gave a steer to the model entering it; None when unknown (round 1
    on steers from a file)."""
    steers: int
    """Steers the round trained on."""


def round_prompts(
    task, *, seed: int, first: int, per_round: int, round_: int, used: frozenset[str] = frozenset()
) -> list[TaskPrompt]:
    """Round `round_`'s fresh prompts (round >= 2): the seeded train-split sequence of `task`
    (`task.prompts(n, seed, "train")`, whose first n never change with n) after its first `first` (round 1's),
    less the prompt ids in `used` (round 1's steers, when they come from a file), cut into consecutive blocks
    of `per_round`: round 2 the first block, round 3 the second, ...

    E.g. first 3, per_round 2, sequence a b c d e f g: round 2 gets d e, round 3 f g."""
    if round_ < 2:
        raise ValueError(f"round_ must be >= 2 (round 1's prompts are the comparison's own), got {round_}")
    sequence = task.prompts(first + per_round * (round_ - 1) + len(used), seed, "train")
    later = [prompt for prompt in sequence[first:] if prompt.id not in used]
    return later[per_round * (round_ - 2) : per_round * (round_ - 1)]


def yield_items(prompts: Sequence[TaskPrompt], steers: Sequence[Steer]) -> np.ndarray:
    """(P,) float64: 1 where the prompt gave a steer (its id is some steer's `meta["prompt_id"]`), else 0."""
    made = {steer.meta.get("prompt_id") for steer in steers}
    return np.asarray([float(prompt.id in made) for prompt in prompts], dtype=np.float64)


def load_weights(run_dir: Path, device: torch.device):
    """The weights a finished run saved for the next round (`runs.WEIGHTS_DIR`), in float32, eval mode."""
    from transformers import AutoModelForCausalLM

    path = Path(run_dir) / WEIGHTS_DIR
    if not (path / "config.json").is_file():
        raise resume.ResumeError(
            f"{path} is missing: the next round starts from that run's weights; {resume.HINT}"
        )
    with quiet_weights():
        model = AutoModelForCausalLM.from_pretrained(str(path), dtype=torch.float32)
    return model.to(device).eval()


def _remove_weights(run_dir: Path) -> None:
    path = Path(run_dir) / WEIGHTS_DIR
    if path.is_dir():
        shutil.rmtree(path)


class _Weights:
    """A chain's previous-round model, loaded from disk the first time something needs it."""

    def __init__(self, run_dir: Path, device: torch.device):
        self.run_dir, self.device, self.model = run_dir, device, None

    def __call__(self):
        if self.model is None:
            self.model = load_weights(self.run_dir, self.device)
        return self.model


def chain_steers(
    config: CompareConfig,
    task: str,
    round_: int,
    chain: str,
    previous: resume.FinishedRun,
    prompts: Sequence[TaskPrompt],
    shared: Shared,
    model: _Weights,
) -> tuple[list[Steer], Path]:
    """`(steers, file)`: the round's steers of one chain, made from its previous-round model's greedy mistakes
    on `prompts`, or those made into the file earlier from the same run and prompts (its manifest says so and
    the file has its recorded digest)."""
    from localdpo.generation import GenerationConfig
    from localdpo.tasks.steermaking import make_steers

    folder = config.task_dir(task) / ROUNDS_DIR / f"round{round_}"
    path = folder / f"steers_{chain}.jsonl"
    manifest = path.with_suffix(".json")
    key = content_hash(
        {
            "continues": content_hash(previous.fingerprint),
            "prompts": [prompt.id for prompt in prompts],
            "max_new_tokens": config.steers.max_new_tokens,
            "batch_size": config.eval_batch_size,
            "localdpo": localdpo.__version__,
        }
    )
    if manifest.is_file() and path.is_file():
        saved = json.loads(manifest.read_text(encoding="utf-8"))
        if saved.get("key") == key and saved.get("digest") == resume.file_digest(path):
            return load_steers(path), path
    task_object = get_task(task)
    generation = GenerationConfig(
        max_new_tokens=config.steers.max_new_tokens or task_object.max_new_tokens,
        batch_size=config.eval_batch_size,
    )
    steers, summary = make_steers(
        model(),
        shared.tokenizer,
        task_object,
        prompts=prompts,
        seed=config.steers.seed,
        generation=generation,
        progress=False,
    )
    log(f"[{config.task_name(task)}] round {round_} {chain}: {summary.row()}")
    by = model_label(f"{config.name}/{chain}-round{round_ - 1}", model())
    steers = [replace(steer, round=round_, rejected_by=by) for steer in steers]
    save_steers(steers, path)
    atomic_write_text(manifest, json.dumps({"key": key, "digest": resume.file_digest(path)}) + "\n")
    return load_steers(path), path


def run_rounds(
    config: CompareConfig,
    plan: TaskPlan,
    shared: Shared,
    steers: TaskSteers,
    cache,
    first: dict[tuple[str, int], resume.FinishedRun],
    eval_reference,
) -> dict[int, dict[tuple[str, int], ChainRound]]:
    """Rounds 1 .. `rounds.count` of one task: round 1 the comparison's own final runs (`first`, by (variant,
    seed)), each later round the plan's runs of that round (`TaskPlan.later_rounds`) trained here (see the
    module docstring); round -> (variant, seed) -> `ChainRound`."""
    from localdpo.reference.training import reference_cache_for
    from localdpo.trainer.device import autocast_dtype

    rounds, task, tag = config.rounds, plan.task, plan.name
    task_object = get_task(task)
    per_round = rounds.train_prompts or config.steers.train_prompts
    used = frozenset(steer.meta.get("prompt_id") for steer in steers.splits["train"])
    made = not config.steers.train_file  # round 1's steers made from the first train_prompts prompts
    start = task_object.prompts(config.steers.train_prompts, config.steers.seed, "train") if made else None
    first_yield = yield_items(start, steers.splits["train"]) if start is not None else None
    chains: dict[int, dict[tuple[str, int], ChainRound]] = {
        1: {key: ChainRound(run, first_yield, len(steers.splits["train"])) for key, run in first.items()}
    }
    for round_ in range(2, rounds.count + 1):
        prompts = round_prompts(
            task_object,
            seed=config.steers.seed,
            first=config.steers.train_prompts if made else 0,
            per_round=per_round,
            round_=round_,
            used=frozenset() if made else used,
        )
        chains[round_] = {}
        for planned in plan.later_rounds[round_]:
            label, seed = planned.label, planned.seed
            previous = chains[round_ - 1][(label, seed)].run
            chain = f"{label}-seed{seed}"
            model = _Weights(previous.run_dir, shared.device)
            train, train_file = chain_steers(config, task, round_, chain, previous, prompts, shared, model)
            items = yield_items(prompts, train)
            if not train:
                log(f"[{tag}] round {round_} {chain}: no mistake on {len(prompts)} prompts, the model goes on")
                chains[round_][(label, seed)] = ChainRound(previous, items, 0)
                continue
            run_config = planned.config
            if rounds.reference is RoundReference.PREVIOUS and run_config.method.needs_reference:

                def reference(model=model, run_config=run_config):
                    return reference_cache_for(
                        run_config,
                        model(),
                        shared.tokenizer,
                        device=shared.device,
                        autocast_dtype=autocast_dtype(run_config.train.precision, shared.device),
                    )

            else:
                reference = cache  # the starting model's (an SFT run reads none)
            doing = (
                f"[{tag}] round {round_}: training {label} seed {seed} from its round {round_ - 1} weights, "
                f"{run_config.train.max_steps} steps on {len(train)} steers of its own mistakes"
            )
            run, eval_reference = finished_run(
                config,
                run_config,
                shared,
                steers,
                "heldout",
                reference,
                eval_reference,
                doing,
                train=(train, train_file),
                start=model,
                inputs={
                    "round": round_,
                    "continues": content_hash(previous.fingerprint),
                    "rounds reference": rounds.reference.value,
                },
                keep_weights=round_ < rounds.count,
            )
            _remove_weights(previous.run_dir)  # the chain's next round starts from this run's weights
            chains[round_][(label, seed)] = ChainRound(run, items, len(train))
    return chains


def round_records(
    chains: dict[int, dict[tuple[str, int], ChainRound]], first: Sequence[RunRecord], task: str | None
) -> dict[int, list[RunRecord]]:
    """Round -> the records its tables read: round 1 the comparison's own `first` records (the starting model's
    `base` row included), each later round the starting model's row and every chain's run after it; every
    variant's with its `round` and, where known, its `yield` items."""
    base = [record for record in first if record.method == STARTING_MODEL]
    out: dict[int, list[RunRecord]] = {}
    for round_, by_chain in sorted(chains.items()):
        records = [replace(record, round=round_) for record in base]
        if round_ == 1:
            variants = [record for record in first if record.method != STARTING_MODEL]
        else:
            variants = [
                RunRecord(
                    label,
                    seed,
                    chain.run.items,
                    history=history_points(chain.run.history),
                    run_dir=str(chain.run.run_dir),
                    task=task,
                    overrides=next((r.overrides for r in first if r.method == label), []),
                )
                for (label, seed), chain in by_chain.items()
            ]
        for record in variants:
            chain = by_chain[(record.method, record.seed)]
            items = dict(record.items)
            if chain.yield_items is not None:
                items["yield"] = chain.yield_items
            records.append(replace(record, items=items, round=round_))
        out[round_] = records
    return out
