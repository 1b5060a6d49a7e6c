"""Training configuration: nested dataclasses, read from YAML, overridden with `key=value`, saved with each run.

`load_config("ldpo_cpu.yaml", ["optim.lr=1e-5", "method=dpo"])` reads the file, applies the overrides
(dotted keys, values parsed to the field's type) and validates the result. Unknown keys raise
`ConfigError` listing the valid ones. The parsing is the package's one config layer, `localdpo.config`.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any

from localdpo import config as config_layer
from localdpo.config import (  # noqa: F401  (the config layer, re-exported for `localdpo.trainer.config` users)
    ConfigError,
    apply_override,
    coerce,
    get_value,
    save_config,
    to_dict,
)
from localdpo.losses import LossSpec, LossType, loss_combination
from localdpo.reference.training import ReferenceSource
from localdpo.steers.tokenization import SpanMode
from localdpo.trainer.methods import Method


class OnTooLong(str, Enum):
    """What happens to a steer whose scored tokens do not fit `data.max_length`."""

    ERROR = "error"
    SKIP = "skip"


class Precision(str, Enum):
    """Compute precision of the forward passes (master weights stay fp32)."""

    AUTO = "auto"
    BF16 = "bf16"
    FP32 = "fp32"


class Distributed(str, Enum):
    """How processes launched by `torchrun` share the training."""

    DDP = "ddp"
    """DistributedDataParallel: every process holds the whole model, its gradients and AdamW state."""
    FSDP = "fsdp"
    """FSDP2 (`torch.distributed.fsdp.fully_shard`, per decoder layer then the root): weights, gradients and
    AdamW state sharded across processes (`localdpo.trainer.fsdp`); also runs as one process."""


class TaskSplit(str, Enum):
    """Prompt split a task accuracy is measured on."""

    VALIDATION = "validation"
    HELDOUT = "heldout"


class WandbMode(str, Enum):
    """W&B mode; `auto` is online only when the user configured W&B."""

    AUTO = "auto"
    ONLINE = "online"
    OFFLINE = "offline"
    DISABLED = "disabled"


@dataclass
class DataConfig:
    train_steers: str | None = None
    """JSONL steer file to train on (`localdpo.load_steers` format), or a directory of steering rounds holding
    `round-1.jsonl`, `round-2.jsonl`, ...; not needed when steers are passed in. Steers with a `round` are
    trained in round order (`train_files`)."""
    train_files: list[str] = field(default_factory=list)
    """Steer files of successive steering rounds, in order (file i is round i; a steer's own `round` must
    agree): each pass over the data gives round 1's steers (shuffled), then round 2's, ... (instead of
    `train_steers`)."""
    eval_steers: str | None = None
    """JSONL steer file held out for evaluation; when unset, `eval_fraction` of the train steers is held out."""
    eval_fraction: float = 0.2
    """Fraction of the train steers held out (seeded by `train.data_seed`) when there is no `eval_steers`."""
    max_length: int | None = 512
    """Token limit per side (`localdpo.tokenize_steer`); only unscored tail tokens are ever cut."""
    on_too_long: OnTooLong = OnTooLong.SKIP
    """`skip` (counted and reported) or `error` for steers whose scored tokens do not fit `max_length`."""


@dataclass
class LoraConfig:
    enabled: bool = False
    """Train a LoRA adapter (peft) instead of all weights; the reference is the base model."""
    r: int = 16
    """Adapter rank."""
    alpha: int = 32
    """LoRA scaling numerator (the update is scaled by alpha / r)."""
    dropout: float = 0.0
    """Dropout on the adapter input."""
    target_modules: list[str] = field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    """Module names wrapped with adapters (Llama-style names)."""


@dataclass
class ModelConfig:
    name: str = "smollm2-135m-instruct"
    """`smollm2-135m-instruct` (embedded), `tiny` (random toy model for tests), a local directory or hub id."""
    tiny_seed: int = 0
    """Weight seed of the `tiny` model."""
    trust_remote_code: bool = False
    """Passed to transformers; off unless you trust the model repository's code."""
    gradient_checkpointing: bool = False
    """Recompute activations in backward (less memory, ~30% slower)."""
    disable_dropout: bool | None = None
    """Set every dropout probability to 0; None = the method's default (on for DPO methods, off for SFT)."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """LoRA settings."""


@dataclass
class LossConfig:
    span_mode: SpanMode | None = None
    """Scored span: `divergent`, `to_end` or `completion`; None = the method's default."""
    beta: float = 0.1
    """DPO temperature β (rewards are β · log-ratio)."""
    loss_type: list[LossType] = field(default_factory=lambda: [LossType.SIGMOID])
    """Preference loss on the spans, or a list of terms summed with `loss_weights` (TRL's `loss_type=[...]`):
    sigmoid, ipo, hinge, robust, apo_zero, apo_down, dpop, cal_dpo, sft (the chosen-span NLL term) and
    unlikelihood (-log(1 - p) of the rejected span's tokens, no reference); `loss.loss_type=dpop`,
    `loss.loss_type=[sigmoid,sft] loss.loss_weights=[1,0.5]` or `loss.loss_type=[sft,unlikelihood]
    loss.loss_weights=[1,0.3]` (`localdpo.LossType`). At least one term must read the rejected span."""
    loss_weights: list[float] | None = None
    """Weight of each `loss_type` term, same length; None = 1 each."""
    label_smoothing: float = 0.0
    """ε of conservative / robust DPO."""
    length_normalize: bool = False
    """Divide each span's log-ratio by its token count."""
    dpop_lambda: float = 50.0
    """λ of DPO-Positive (`dpop`): the penalty on a chosen span that falls below the reference (paper: 50,
    reported robust over 5 to 500)."""
    sft_weight: float = 0.0
    """Shorthand for adding the `sft` term: `loss.sft_weight=λ` is `loss_type=[<types>, sft]`,
    `loss_weights=[<weights>, λ]`; 0 = off."""
    reference: ReferenceSource = ReferenceSource.CACHE
    """Reference log-probs from `cache` (computed once from the starting model) or a `live` frozen model."""

    @property
    def combination(self) -> list[tuple[LossType, float]]:
        """`[(type, weight), ...]` the trainer optimizes: `loss_type` with `loss_weights`, plus `sft_weight`."""
        types, weights = list(self.loss_type), self.loss_weights
        weights = [1.0] * len(types) if weights is None else list(weights)
        if self.sft_weight:
            types, weights = [*types, LossType.SFT], [*weights, self.sft_weight]
        return loss_combination(types, weights)

    def spec(self) -> LossSpec:
        """The frozen loss the trainer computes (`localdpo.losses.LossSpec`): `combination` and the parameters."""
        combination = self.combination
        return LossSpec(
            tuple(t for t, _ in combination),
            tuple(w for _, w in combination),
            beta=self.beta,
            label_smoothing=self.label_smoothing,
            length_normalize=self.length_normalize,
            dpop_lambda=self.dpop_lambda,
        )


@dataclass
class OptimConfig:
    lr: float = 1e-5
    """Peak learning rate (AdamW)."""
    weight_decay: float = 0.0
    """AdamW decoupled weight decay."""
    adam_beta1: float = 0.9
    """AdamW β1."""
    adam_beta2: float = 0.999
    """AdamW β2."""
    adam_eps: float = 1e-8
    """AdamW ε."""
    warmup_steps: int = 0
    """Linear warmup from 0 to `lr` over this many optimizer steps."""
    min_lr_ratio: float = 0.0
    """Cosine decay ends at `lr * min_lr_ratio` at `train.max_steps`."""
    max_grad_norm: float | None = 1.0
    """Clip the global gradient norm to this (None = no clipping; the norm is logged either way)."""


@dataclass
class TrainConfig:
    max_steps: int = 100
    """Optimizer steps."""
    batch_size: int = 4
    """Steer pairs per micro-batch per process."""
    grad_accum: int = 1
    """Micro-batches per optimizer step (global batch = batch_size × grad_accum × world size)."""
    seed: int = 0
    """Seed of torch/python RNGs (dropout, LoRA init)."""
    data_seed: int | None = None
    """Seed of the data order and the eval split; None = `seed`."""
    device: str = "auto"
    """`auto` (cuda if available), `cpu`, `cuda`, `cuda:N`."""
    precision: Precision = Precision.AUTO
    """`auto` (bf16 autocast on CUDA, fp32 on CPU), `bf16` (autocast) or `fp32`; master weights stay fp32."""
    distributed: Distributed = Distributed.DDP
    """`ddp` (default, models whose weights and AdamW state fit one device) or `fsdp` (sharded; checkpoints in
    `torch.distributed.checkpoint` format). Applies under `torchrun`; `fsdp` also shards a single process."""
    packing: bool = True
    """Pack each pair's shared prefix once (`localdpo.forward.packing`, preference methods; falls back to the
    unpacked forward, with a warning, where the architecture is not supported). False for ablation."""
    span_head: bool = True
    """Apply the LM head on scored positions only (`localdpo.forward.span_head`, every method; falls back to full
    logits, with a warning, where the head is not reproducible). False for ablation."""
    log_every: int = 1
    """Log training metrics every this many optimizer steps."""
    progress: bool = True
    """Show a tqdm progress bar (rank 0)."""


@dataclass
class EvalConfig:
    every: int = 0
    """Evaluate on held-out steers every this many steps (0 = only at the start and the end)."""
    at_start: bool = True
    """Evaluate before the first step (the baseline of every curve)."""
    batch_size: int = 8
    """Pairs per evaluation forward."""
    span_mode: SpanMode = SpanMode.DIVERGENT
    """Span scored by the held-out metrics, the same for every method so they compare."""
    max_steers: int | None = None
    """Use at most this many held-out steers (None = all)."""
    drift: bool = True
    """Measure drift: mean per-token KL(reference || policy) on unrelated chat prompts."""
    drift_prompts: str | None = None
    """JSONL of `{"prompt": ...}` rows; None = the 32 prompts shipped in `localdpo/trainer/drift_prompts.jsonl`."""
    drift_num_prompts: int | None = None
    """Use only the first this many drift prompts (None = all)."""
    drift_max_new_tokens: int = 24
    """Length of the reference model's greedy continuation on which the KL is measured."""
    task: str | None = None
    """Task name for generation accuracy (`localdpo.tasks.evaluation.evaluate_task`); None = skip."""
    task_n: int = 50
    """Held-out task prompts generated per task evaluation."""
    task_seed: int = 1234
    """Seed of the held-out task prompts."""
    task_split: TaskSplit = TaskSplit.HELDOUT
    """Prompt split the task accuracy is measured on: `heldout`, or `validation` when choosing
    hyperparameters (`localdpo compare`'s `select:`), so the held-out split is never read for a choice."""
    task_max_new_tokens: int | None = None
    """Generated tokens per task answer at most; None = the task's own budget."""
    task_batch_size: int | None = None
    """Prompts per greedy generation batch of the task evaluation; None = `batch_size`. Decoding one token
    at a time is bound by per-step overhead, so it gains from larger batches than the scoring forward does
    (80 prompts on 2 CPU cores: 21.8 s at 16 per batch, 12.6 s at 80)."""
    task_every: int = 0
    """Also run the task evaluation every this many steps (0 = only at the start and the end)."""
    steer_metrics: bool = True
    """At the first and the final evaluation, greedy decoding at each held-out steer
    (`localdpo.trainer.steer_metrics`, `task_batch_size` rows per batch): `eval/recurrence` (the model writes
    the rejected span again), `eval/uptake` (it writes the chosen span) and, for task steers,
    `eval/continuation_accuracy` (the answer continued from prefix + chosen is right). Not in between: ~30 s
    an evaluation on the `cpu` preset's 96 held-out steers (2-core CPU), and comparisons read the end."""


@dataclass
class CheckpointConfig:
    every: int = 0
    """Save a resumable checkpoint every this many steps (0 = none during training)."""
    keep_last: int = 2
    """Keep this many newest checkpoints (older ones are deleted after a newer one is verified)."""
    resume: str = "auto"
    """`auto` (latest verified checkpoint of run_dir, if any), `never` (refuse a run_dir with checkpoints), or a path."""
    save_final: bool = True
    """Save the final model (or adapter) in Hugging Face format under run_dir/final."""


@dataclass
class WandbConfig:
    mode: WandbMode = WandbMode.AUTO
    """`auto` (online when WANDB_MODE=online or WANDB_API_KEY is set, else offline), `online`, `offline`, `disabled`."""
    project: str = "localdpo"
    """W&B project."""
    group: str | None = None
    """W&B group: the runs of one comparison."""
    name: str | None = None
    """Run name; None = the run_dir's name."""
    tags: list[str] = field(default_factory=list)
    """W&B tags."""
    dir: str | None = None
    """Where the wandb/ folder goes; None = run_dir."""
    verbose: bool = False
    """Show W&B's own terminal output (banner, run history and summary); False = one line per run: where it is."""


@dataclass
class RunConfig:
    """Everything a training run needs; `method` picks the loss, the rest is shared by every method."""

    method: Method = Method.LDPO
    """`ldpo`, `dpo`, `sft` or `sft_full` (see `localdpo.trainer.Method`)."""
    run_dir: str | None = None
    """Output directory (config, checkpoints, metrics); None = `runs/<method>-seed<seed>`."""
    cache_dir: str | None = None
    """localdpo cache (converted models, reference log-probs); None = `$LOCALDPO_CACHE` or ~/.cache/localdpo."""
    data: DataConfig = field(default_factory=DataConfig)
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    optim: OptimConfig = field(default_factory=OptimConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    checkpoint: CheckpointConfig = field(default_factory=CheckpointConfig)
    wandb: WandbConfig = field(default_factory=WandbConfig)

    @property
    def span_mode(self) -> SpanMode:
        """The training span mode: `loss.span_mode`, or the method's default."""
        return self.loss.span_mode if self.loss.span_mode is not None else self.method.default_span_mode

    @property
    def resolved_run_dir(self) -> Path:
        return (
            Path(self.run_dir)
            if self.run_dir
            else Path("runs") / f"{self.method.value}-seed{self.train.seed}"
        )

    @property
    def data_seed(self) -> int:
        return self.train.seed if self.train.data_seed is None else self.train.data_seed


def validate(config: RunConfig) -> RunConfig:
    """`config` after checking cross-field rules; `ConfigError` naming the key otherwise."""
    config_layer.enum_fields(config)
    method, span = config.method, config.span_mode
    if span not in method.allowed_span_modes:
        allowed = ", ".join(m.value for m in method.allowed_span_modes)
        hint = " (use method=ldpo for a localized span)" if method is Method.DPO else ""
        raise ConfigError(
            f"loss.span_mode={span.value} is not valid for method={method.value}: allowed {allowed}{hint}"
        )
    if config.loss.sft_weight and not method.is_preference:
        raise ConfigError(
            f"loss.sft_weight applies to DPO methods only (method={method.value} is already SFT)"
        )
    if config.loss.sft_weight and LossType.SFT in config.loss.loss_type:
        raise ConfigError(
            "loss.sft_weight and an 'sft' term in loss.loss_type both add the SFT term: keep one "
            "(e.g. loss.loss_type=[sigmoid,sft] loss.loss_weights=[1,1] and loss.sft_weight=0)"
        )
    if config.loss.loss_weights is not None and len(config.loss.loss_weights) != len(config.loss.loss_type):
        raise ConfigError(
            f"loss.loss_weights={config.loss.loss_weights} has {len(config.loss.loss_weights)} values for "
            f"{len(config.loss.loss_type)} loss.loss_type terms {[t.value for t in config.loss.loss_type]}"
        )
    for weight in config.loss.loss_weights or []:
        if not 0 <= weight < float("inf"):
            raise ConfigError(f"loss.loss_weights={config.loss.loss_weights}: every weight must be finite and >= 0")
    try:
        _ = config.loss.combination
    except ValueError as error:  # a repeated type, or no positive-weight term on the rejected span
        raise ConfigError(f"loss.loss_type: {error}") from None
    if config.loss.dpop_lambda < 0:
        raise ConfigError(f"loss.dpop_lambda={config.loss.dpop_lambda}: must be >= 0")
    positive = (
        "train.max_steps",
        "train.batch_size",
        "train.grad_accum",
        "eval.batch_size",
        "train.log_every",
    )
    for key in positive:
        if get_value(config, key) < 1:
            raise ConfigError(f"{key}={get_value(config, key)}: must be >= 1")
    if config.eval.task_batch_size is not None and config.eval.task_batch_size < 1:
        raise ConfigError(f"eval.task_batch_size={config.eval.task_batch_size}: must be >= 1 (or null)")
    for key in (
        "eval.every",
        "eval.task_every",
        "checkpoint.every",
        "optim.warmup_steps",
        "checkpoint.keep_last",
    ):
        if get_value(config, key) < 0:
            raise ConfigError(f"{key}={get_value(config, key)}: must be >= 0")
    if config.loss.beta <= 0:
        raise ConfigError(f"loss.beta={config.loss.beta}: must be > 0")
    if config.optim.lr <= 0:
        raise ConfigError(f"optim.lr={config.optim.lr}: must be > 0")
    if not 0 <= config.data.eval_fraction < 1:
        raise ConfigError(f"data.eval_fraction={config.data.eval_fraction}: must be in [0, 1)")
    if config.eval.task is not None:
        from localdpo.tasks import UnknownTaskError, get_task

        try:  # a task of one's own is loaded (and registered) now, before its steers are read
            get_task(config.eval.task)
        except UnknownTaskError as error:
            raise ConfigError(f"eval.task: {error}") from None
    return config


def valid_keys(cls=RunConfig, prefix: str = "") -> list[str]:
    """Every dotted key of the config (leaves only)."""
    return config_layer.valid_keys(cls, prefix)


def from_dict(data: dict[str, Any], cls=RunConfig, prefix: str = "") -> Any:
    """A config dataclass (default `RunConfig`) from a nested dict; unknown keys raise `ConfigError`."""
    return config_layer.from_dict(data, cls, prefix)


def load_config(
    path: str | os.PathLike | None = None, overrides: list[str] | tuple[str, ...] = ()
) -> RunConfig:
    """The validated config from a YAML file (or the defaults when `path` is None) plus `key=value` overrides."""
    data = config_layer.read_yaml(path) if path is not None else {}
    return config_layer.build(RunConfig, data, overrides, validate=validate, source=path)
