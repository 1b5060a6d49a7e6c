"""Training from the studio page: the package's own trainer (`localdpo train`) in a separate process.

A training run gets a read-only snapshot of the steer file, copied into its run directory
(`<steers dir>/<steers stem>.studio-runs/<UTC time>-<method>/steers.jsonl`): the training process never opens
the steer file itself, so steering goes on while it trains. It fine-tunes a LoRA adapter (`run_dir/final`),
holds out a seeded `HOLD_OUT_FRACTION` of the steers (`localdpo.trainer.steerdata.split_steers`, the split the
trainer itself makes) and logs to `run_dir/metrics.jsonl`, which the page's progress is read from: the step,
the loss, and at the first and last evaluation held-out preference accuracy, recurrence and uptake
(`localdpo.trainer.evaluation`, `localdpo.trainer.steer_metrics`). One run at a time; Stop sends SIGTERM (SIGKILL
after `STOP_GRACE_S`), and so does the server's shutdown.

A finished run's adapter is merged into a copy of the studio's model (`session.load_tuned`): its steers then carry
`rejected_by` = `<model>+<run>@<fingerprint of the merged weights>` and the next round.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import threading
from dataclasses import asdict, dataclass
from datetime import datetime, timezone
from enum import Enum
from pathlib import Path

from localdpo.losses import LossType
from localdpo.storage.fileio import atomic_write_bytes
from localdpo.studio.errors import StudioError
from localdpo.trainer.steerdata import held_out_count

HOLD_OUT_FRACTION = 0.2
"""Share of the steers held out for the held-out metrics (`data.eval_fraction`)."""
SPLIT_SEED = 0
"""Seed of the hold-out split and the data order (`train.seed`): the same steers give the same split."""
MIN_STEERS = 2
"""One steer to train on and one held out: fewer and there is nothing to measure the run by."""
STOP_GRACE_S = 10.0
"""After SIGTERM, how long the training process gets before SIGKILL."""
ADAPTER_DIR = "final"
"""Where the trainer saves the LoRA adapter in a run directory (`checkpoint.save_final`)."""
LOG_TAIL_CHARS = 2000


def _methods() -> dict[str, tuple[str, ...]]:
    """Method label -> trainer overrides: the comparison's four (`localdpo.compare.config`), then localized DPO
    with each other preference loss, and span SFT plus unlikelihood on the rejected span."""
    methods = {
        "sft": ("method=sft",),
        "ldpo": ("method=ldpo",),
        "ldpo+sft": ("method=ldpo", "loss.sft_weight=1.0"),
        "dpo": ("method=dpo",),
    }
    for loss in LossType:
        if loss.is_preference and loss is not LossType.SIGMOID:
            methods[f"ldpo_{loss.value}"] = ("method=ldpo", f"loss.loss_type={loss.value}")
    methods["sft+ul"] = ("method=ldpo", "loss.loss_type=[sft,unlikelihood]", "loss.loss_weights=[1,1]")
    return methods


METHODS = _methods()
METHOD_HELP = {
    "sft": "NLL of the corrected tokens only (the chosen span)",
    "ldpo": "localized DPO: the DPO loss on the edit itself (chosen span against rejected span)",
    "ldpo+sft": "localized DPO plus the chosen span's NLL (weight 1)",
    "dpo": "standard DPO: the whole answer of each side is scored",
    "sft+ul": "chosen span's NLL plus unlikelihood of the rejected span's tokens",
}
"""What each method scores, as the page says it; the `ldpo_<loss>` ones are localized DPO with that loss."""


@dataclass(frozen=True)
class Budget:
    """How long and how hard a run trains (LoRA, r 16, on the studio's model)."""

    steps: int = 16
    """Optimizer steps (`train.max_steps`)."""
    lr: float = 2e-4
    """Peak learning rate: LoRA adapters take ~10x full fine-tuning's (`optim.lr`)."""
    batch_size: int = 4
    """Steer pairs per step (`train.batch_size`)."""


MAX_STEPS = 10_000
"""The most steps the page may ask for."""


class RunState(str, Enum):
    """Where a training run stands, as read from its process and its `metrics.jsonl`."""

    PREPARING = "preparing"
    """Started, no step yet (loading the model, the reference log-probs, the step-0 evaluation)."""
    TRAINING = "training"
    EVALUATING = "evaluating"
    """The last step is done: the final evaluation and the adapter's save."""
    DONE = "done"
    STOPPED = "stopped"
    FAILED = "failed"

    @property
    def running(self) -> bool:
        return self in (RunState.PREPARING, RunState.TRAINING, RunState.EVALUATING)


def runs_dir(steers_path: Path) -> Path:
    """Where the studio's training runs of `steers_path` go: `<stem>.studio-runs/` beside it."""
    return steers_path.parent / f"{steers_path.stem}.studio-runs"


def hold_out_counts(n_steers: int) -> tuple[int, int]:
    """(train, held out) steers of `n_steers` under the run's split (`trainer.steerdata.held_out_count`)."""
    if n_steers < 1:
        return 0, 0
    held = held_out_count(n_steers, HOLD_OUT_FRACTION)
    return n_steers - held, held


def read_metrics(path: Path) -> list[dict]:
    """The rows of a run's `metrics.jsonl` written so far (a last line still being written is left out)."""
    if not path.exists():
        return []
    rows = []
    for line in path.read_text().splitlines():
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


EVAL_KEYS = {
    "preference_accuracy": "eval/preference_accuracy",
    "margin": "eval/rewards_margins",
    "recurrence": "eval/recurrence",
    "uptake": "eval/uptake",
    "chosen_nll": "eval/chosen_nll",
    "drift_kl": "eval/drift_kl",
}
"""What the page shows of each evaluation: its name -> the trainer's metric key."""


def train_command(
    *,
    model: str,
    device: str,
    snapshot: Path,
    run_dir: Path,
    method: str,
    budget: Budget,
    extra: tuple[str, ...],
) -> list[str]:
    """The `localdpo train` command of a studio run (no config file: the trainer's defaults, then these)."""
    overrides = [
        *METHODS[method],
        f"model.name={model}",
        "model.lora.enabled=true",
        f"run_dir={run_dir}",
        f"data.train_steers={snapshot}",
        f"data.eval_fraction={HOLD_OUT_FRACTION}",
        f"train.seed={SPLIT_SEED}",
        f"train.max_steps={budget.steps}",
        f"train.batch_size={budget.batch_size}",
        f"optim.lr={budget.lr}",
        f"train.device={device}",
        "train.progress=false",
        "wandb.mode=disabled",
        "checkpoint.save_final=true",
        "eval.drift_num_prompts=8",
        *extra,
    ]
    return [sys.executable, "-m", "localdpo", "train", *overrides]


class TrainingRun:
    """One `localdpo train` process and what its run directory says of it."""

    def __init__(
        self, run_dir: Path, method: str, budget: Budget, counts: tuple[int, int], command: list[str]
    ):
        self.run_dir, self.method, self.budget = run_dir, method, budget
        self.train_steers, self.held_out = counts
        self.log_path = run_dir / "train.log"
        self.stop_requested = False
        self.returncode: int | None = None
        with self.log_path.open("wb") as log:
            self.process = subprocess.Popen(
                command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.ended = threading.Event()
        threading.Thread(target=self._wait, name=f"train-{run_dir.name}", daemon=True).start()

    def _wait(self) -> None:
        self.returncode = self.process.wait()
        self.ended.set()

    @property
    def name(self) -> str:
        return self.run_dir.name

    @property
    def adapter_dir(self) -> Path:
        return self.run_dir / ADAPTER_DIR

    def stop(self) -> None:
        """SIGTERM the process (its own session: only it), SIGKILL after `STOP_GRACE_S`; waits for its end."""
        if self.ended.is_set():
            return
        self.stop_requested = True
        self.process.send_signal(signal.SIGTERM)
        if not self.ended.wait(STOP_GRACE_S):
            self.process.kill()
            self.ended.wait()

    def state(self, rows: list[dict]) -> RunState:
        if self.ended.is_set():
            if self.returncode == 0 and (self.adapter_dir / "adapter_config.json").is_file():
                return RunState.DONE
            return RunState.STOPPED if self.stop_requested else RunState.FAILED
        steps = [row["step"] for row in rows if "train/loss" in row]
        if not steps:
            return RunState.PREPARING
        return RunState.EVALUATING if steps[-1] >= self.budget.steps else RunState.TRAINING

    def status(self) -> dict:
        """The run as the page shows it: state, step, loss, the evaluations, and the log's end on failure."""
        rows = read_metrics(self.run_dir / "metrics.jsonl")
        state = self.state(rows)
        train_rows = [row for row in rows if "train/loss" in row]
        evals = [
            {"step": row["step"], **{name: row[key] for name, key in EVAL_KEYS.items() if key in row}}
            for row in rows
            if "eval/preference_accuracy" in row
        ]
        log_tail = None
        if state is RunState.FAILED:
            log_tail = self.log_path.read_text(errors="replace")[-LOG_TAIL_CHARS:]
        return {
            "run": self.name,
            "state": state.value,
            "running": state.running,
            "method": self.method,
            **asdict(self.budget),
            "train_steers": self.train_steers,
            "held_out": self.held_out,
            "step": train_rows[-1]["step"] if train_rows else 0,
            "loss": train_rows[-1]["train/loss"] if train_rows else None,
            "losses": [[row["step"], row["train/loss"]] for row in train_rows],
            "evals": evals,
            "final": evals[-1] if state is RunState.DONE and evals else None,
            "log": log_tail,
        }


class Training:
    """The studio's training runs: at most one running; the finished ones' adapters, to steer or compare."""

    def __init__(self, steers_path: Path, model: str, device: str, *, extra_overrides: tuple[str, ...] = ()):
        """`model`: the name the studio loaded (`load_model`), `device` where to train; `extra_overrides`: more
        trainer `key=value` overrides after the studio's own (tests make the evaluation smaller)."""
        self.steers_path = Path(steers_path)
        self.root = runs_dir(self.steers_path)
        local = Path(model).expanduser()
        self.model = str(local.resolve()) if local.exists() else model  # the process may not share our cwd
        self.device = device
        self.extra_overrides = tuple(extra_overrides)
        self.current: TrainingRun | None = None
        self.lock = threading.Lock()

    def start(self, method: str, budget: Budget, steer_file_bytes: bytes, n_steers: int) -> TrainingRun:
        """Start training `method` on a snapshot of the steer file (`steer_file_bytes`, `n_steers` steers)."""
        if method not in METHODS:
            raise StudioError(400, f"field 'method': unknown method {method!r} (known: {', '.join(METHODS)})")
        if n_steers < MIN_STEERS:
            raise StudioError(
                409,
                f"the steer file holds {n_steers} steer(s): training needs at least {MIN_STEERS}, one to train "
                f"on and one held out ({HOLD_OUT_FRACTION:.0%} are held out)",
            )
        with self.lock:
            if self.current is not None and not self.current.ended.is_set():
                raise StudioError(
                    409, f"run {self.current.name} is still training: stop it or wait for its end"
                )
            stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S")
            run_dir = self.root / f"{stamp}-{method}"
            suffix = 1
            while run_dir.exists():
                suffix += 1
                run_dir = self.root / f"{stamp}-{method}-{suffix}"
            run_dir.mkdir(parents=True)
            snapshot = run_dir / "steers.jsonl"
            atomic_write_bytes(snapshot, steer_file_bytes)
            snapshot.chmod(0o444)
            command = train_command(
                model=self.model,
                device=self.device,
                snapshot=snapshot,
                run_dir=run_dir,
                method=method,
                budget=budget,
                extra=self.extra_overrides,
            )
            self.current = TrainingRun(run_dir, method, budget, hold_out_counts(n_steers), command)
            return self.current

    def stop(self) -> TrainingRun:
        """Stop the running run (a clean end: its metrics so far stay, no adapter is saved)."""
        with self.lock:
            run = self.current
        if run is None or run.ended.is_set():
            raise StudioError(409, "no training is running")
        run.stop()
        return run

    def shutdown(self) -> None:
        """Stop a running run (the server is going away)."""
        run = self.current
        if run is not None:
            run.stop()

    def finished_runs(self) -> list[str]:
        """Names of the runs under `root` with a saved adapter, newest first."""
        if not self.root.is_dir():
            return []
        done = [d.name for d in self.root.iterdir() if (d / ADAPTER_DIR / "adapter_config.json").is_file()]
        running = (
            {self.current.name} if self.current is not None and not self.current.ended.is_set() else set()
        )
        return sorted(set(done) - running, reverse=True)

    def adapter_of(self, run: str) -> Path:
        """The adapter directory of finished run `run` (a name from `finished_runs`, never a path)."""
        if run not in self.finished_runs():
            raise StudioError(404, f"no finished training run {run!r} under {self.root}")
        return self.root / run / ADAPTER_DIR
