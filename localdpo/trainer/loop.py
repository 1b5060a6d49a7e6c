"""The trainer: every method on the same steers, data order, optimizer and evaluation; only the loss differs.

trainer = Trainer(load_config("experiments/configs/tiny.yaml"))
result = trainer.run()          # setup() + train() + save(); or run_training(config)
"""

from __future__ import annotations

import copy
import random
import time
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from localdpo.losses import LossType
from localdpo.reference.training import (
    CachedReference,
    EvalReference,
    LiveReference,
    build_reference,
    eval_reference_for,
)
from localdpo.steers.batches import (
    CHOSEN_ATTENTION_MASK,
    CHOSEN_LOSS_MASK,
    REJECTED_ATTENTION_MASK,
    REJECTED_LOSS_MASK,
    collate_pairs,
    trim_to_scored,
)
from localdpo.steers.steer import Steer
from localdpo.steers.tokenization import TokenizedSteer
from localdpo.trainer import checkpoint as ckpt
from localdpo.trainer.config import ConfigError, Distributed, RunConfig, save_config, validate
from localdpo.trainer.device import autocast_dtype, peak_memory_gb, resolve_device
from localdpo.trainer.distributed import (
    DistInfo,
    all_reduce_mean,
    all_reduce_sum,
    init_distributed,
    per_rank_values,
    rank_slice,
    stream_indices,
)
from localdpo.trainer.drift import DriftSet
from localdpo.trainer.evaluation import evaluate_policy, evaluation_due, held_out_batches
from localdpo.trainer.methods import method_loss, sft_mask
from localdpo.trainer.modeling import (
    PolicyForward,
    apply_lora,
    disable_dropout,
    load_base_model,
    trainable_tensors,
)
from localdpo.trainer.optim import build_optimizer, clip_gradients
from localdpo.trainer.steer_metrics import SteerProbe, steer_probes
from localdpo.trainer.steerdata import prepare_steers


@dataclass
class TrainResult:
    """What a run gives back."""

    final: dict[str, float]
    """The last evaluation's metrics plus `train/loss` of the last step."""
    history: list[dict[str, float]] = field(default_factory=list)
    """Every evaluation (`step` included), in order."""
    train_log: list[dict[str, float]] = field(default_factory=list)
    """Every logged training step's metrics (`step` included)."""
    run_dir: Path | None = None


class Trainer:
    """Train one method on steers: `setup()`, `train()`, `evaluate()`, `save()` (or `run()` for all)."""

    def __init__(
        self,
        config: RunConfig,
        model=None,
        tokenizer=None,
        train_steers: Sequence[Steer | TokenizedSteer] | None = None,
        eval_steers: Sequence[Steer | TokenizedSteer] | None = None,
        *,
        reference_cache=None,
        drift_set: DriftSet | None = None,
        eval_reference: EvalReference | None = None,
        eval_reference_model=None,
    ):
        """`model`/`tokenizer`: an already-loaded starting model (copied, never modified); steers as `Steer`s
        or already tokenized (train in the run's span mode, eval in `eval.span_mode`); `reference_cache`: a
        shared cache of the same starting model; `drift_set`: a shared `DriftSet` of the same model;
        `eval_reference`: another run's `EvalReference` of the same model and held-out steers (used only when
        it holds exactly this run's evaluation batches and forward, else built anew); `eval_reference_model`:
        the model the held-out steers' reference is of when it is not `model` (a run continuing another's
        weights, measured against the comparison's starting model: `localdpo.compare.rounds`); the training
        reference is then whatever `reference_cache` holds, the drift reference whatever `drift_set` holds."""
        self.config = validate(config)
        self.loss_spec = self.config.loss.spec()
        """The loss of the preference methods, fixed for the run (`localdpo.losses.LossSpec`)."""
        self._given_model, self.tokenizer = model, tokenizer
        self._eval_reference_model = eval_reference_model
        self._given_train, self._given_eval = train_steers, eval_steers
        self.run_dir = config.resolved_run_dir
        self._is_setup = False
        # runtime (`_setup_runtime`)
        self.device: torch.device | None = None
        self.dist: DistInfo | None = None
        self.mesh = None
        """The FSDP device mesh (`train.distributed=fsdp`), else None."""
        self._owns_process_group = False
        self.autocast_dtype: torch.dtype | None = None
        # data (`_setup_data`): tokenized steers (train in the run's span mode, eval in `eval.span_mode`)
        self.train_examples: list[TokenizedSteer] = []
        self.eval_examples: list[TokenizedSteer] = []
        self.tokenize_reports: Any = None
        self.eval_probes: list[SteerProbe] = []
        """What the steer metrics read of each held-out steer (empty when `eval.steer_metrics` is off)."""
        self.round_sizes: list[int] = []
        """Train examples of each steering round, in order (`data.train_files`); each pass over the data then
        gives the rounds in order (`localdpo.trainer.distributed.epoch_order`); [] without rounds."""
        # reference (`_setup_reference`, `_setup_policy`): all from the starting weights, before any step
        self.reference: CachedReference | LiveReference | None = None
        self.reference_cache = reference_cache
        self.drift_set = drift_set
        self.eval_reference = eval_reference
        # policy (`_setup_policy`): the trained model and its training forward (one module, so DDP wraps all)
        self.model = None
        self.policy_forward: PolicyForward | None = None
        # optimizer (`_setup_optimizer`)
        self.params: dict[str, torch.Tensor] = {}
        self.optimizer: torch.optim.Optimizer | None = None
        self.scheduler = None
        self.train_forward = None
        """What a training step calls: `policy_forward`, wrapped in `DistributedDataParallel` under DDP (under
        FSDP `policy_forward` is itself the sharded root)."""
        # progress (restored by `_resume`)
        self.step = 0
        self.consumed = 0
        self.history: list[dict[str, float]] = []
        self.train_log: list[dict[str, float]] = []
        self.logger = None
        # Per-item values (held-out steers, drift prompts, task prompts) of the latest, the step-0 and the
        # final evaluation: what comparisons pair across methods (`localdpo.compare`).
        self.last_eval_items: dict[str, Any] = {}
        self.initial_items: dict[str, Any] = {}
        self.final_items: dict[str, Any] = {}

    # ------------------------------------------------------------------ setup

    def setup(self) -> Trainer:
        """Load everything, build the reference and drift set from the starting model, restore a checkpoint.

        The steps run in this order, each needing the ones before it: the reference and the drift set are
        computed from the starting weights before dropout is turned off and LoRA is added, and the optimizer
        exists before a checkpoint restores its state.
        """
        self._setup_runtime()
        base = self._setup_starting_model()
        self._setup_data()
        self._setup_reference(base)
        self._setup_policy(base)
        self._setup_optimizer()
        self._resume()
        self._setup_logging()
        self._is_setup = True
        return self

    def _setup_runtime(self) -> None:
        """Device, process group, compute precision, global torch settings and seeds."""
        cfg = self.config
        if cfg.checkpoint.resume == "never" and ckpt.list_checkpoints(self.checkpoint_root):
            raise ConfigError(
                f"{self.checkpoint_root} holds checkpoints and checkpoint.resume=never: choose another run_dir"
            )
        self.device = resolve_device(cfg.train.device)
        self._owns_process_group = self.sharded and not torch.distributed.is_initialized()
        self.dist = init_distributed(self.device.type, always=self.sharded)
        if self.dist.enabled and self.device.type == "cuda":
            self.device = torch.device("cuda", self.dist.local_rank)
            torch.cuda.set_device(self.device)
        self.autocast_dtype = autocast_dtype(cfg.train.precision, self.device)
        if self.device.type == "cuda":
            torch.backends.cuda.matmul.allow_tf32 = True
            torch.backends.cudnn.allow_tf32 = True
        random.seed(cfg.train.seed)
        torch.manual_seed(cfg.train.seed)

    def _setup_starting_model(self):
        """The starting model in float32 (a copy of the given one, or loaded) and its tokenizer, on the device."""
        if self._given_model is not None:
            if self.tokenizer is None:
                raise ValueError("pass the tokenizer together with the model")
            base = copy.deepcopy(self._given_model).float()
        else:
            base, self.tokenizer = load_base_model(self.config, self.tokenizer)
            base = base.float()
        return base

    def _setup_data(self) -> None:
        """Tokenized train and held-out steers (the split, the span modes, over-long steers skipped or refused)."""
        self.train_examples, self.eval_examples, self.tokenize_reports, task_prompts, self.round_sizes = (
            prepare_steers(self.config, self.tokenizer, self._given_train, self._given_eval)
        )
        train = self.config.train
        seen = train.max_steps * train.batch_size * train.grad_accum * self.dist.world_size
        if len(self.round_sizes) > 1 and seen <= len(self.train_examples) - self.round_sizes[-1]:
            before = len(self.train_examples) - self.round_sizes[-1]
            raise ConfigError(
                f"train.max_steps={train.max_steps} x {seen // train.max_steps} steers a step = {seen} steers end "
                f"before the last of the {len(self.round_sizes)} rounds (rounds before it: {before} steers), so "
                f"it is never trained on: raise train.max_steps to at least {before // (seen // train.max_steps) + 1}"
            )
        if self.config.eval.steer_metrics:
            self.eval_probes = steer_probes(self.eval_examples, self.tokenizer, task_prompts)

    def _setup_reference(self, base) -> None:
        """The training reference and the drift set, from the starting weights `base`.

        A live reference of a LoRA model is the policy with its adapter off: `_setup_policy` builds it.
        """
        cfg = self.config
        base.to(self.device)
        self.reference, self.reference_cache = build_reference(
            cfg,
            base,
            self.tokenizer,
            make_forward=self._policy_forward,
            train_examples=self.train_examples,
            device=self.device,
            dist=self.dist,
            autocast_dtype=self.autocast_dtype,
            cache=self.reference_cache,
        )
        if cfg.eval.drift and self.drift_set is None:
            self.drift_set = DriftSet.for_eval(base, self.tokenizer, cfg.eval, device=self.device)

    def _setup_policy(self, base) -> None:
        """The trained model from `base` (dropout off, LoRA, gradient checkpointing), its training forward (sharded
        under FSDP, with a frozen live reference), the LoRA live reference, and the held-out steers' reference
        (this forward on the starting weights)."""
        cfg = self.config
        if (
            cfg.model.disable_dropout
            if cfg.model.disable_dropout is not None
            else cfg.method.disables_dropout
        ):
            disable_dropout(base)
        torch.manual_seed(cfg.train.seed)  # LoRA init does not depend on what setup computed before
        self.model = apply_lora(base, cfg) if cfg.model.lora.enabled else base
        if cfg.model.gradient_checkpointing:
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.model.to(self.device)
        self.model.train()
        self.policy_forward = self._policy_forward(self.model)
        fingerprint = None
        if self.sharded:
            fingerprint = self._shard()
        if self.reference is None:  # live reference of a LoRA model: the model with its adapter off
            self.reference = LiveReference(
                self.policy_forward, disable_adapter_of=self.model, autocast_dtype=self.autocast_dtype
            )
        of = self._eval_reference_model
        self.eval_reference = eval_reference_for(
            self.model if of is None else of,
            self.policy_forward if of is None else self._policy_forward(of),
            self._eval_batches,
            autocast=self._autocast(),
            autocast_dtype=self.autocast_dtype,
            batch_size=cfg.eval.batch_size,
            given=self.eval_reference,
            fingerprint=fingerprint,
        )

    @property
    def sharded(self) -> bool:
        """Whether the run shards its model with FSDP2 (`train.distributed=fsdp`)."""
        return self.config.train.distributed is Distributed.FSDP

    def _shard(self) -> str:
        """Shard the training forward (and a frozen live reference) with FSDP2 (`localdpo.trainer.fsdp`);
        returns the starting weights' fingerprint, taken before sharding (what the held-out reference is keyed on)."""
        from localdpo.reference.fingerprint import model_fingerprint
        from localdpo.trainer import fsdp

        fingerprint = model_fingerprint(self.model)
        self.mesh = fsdp.device_mesh(self.device, self.dist.world_size)
        fsdp.shard_forward(self.policy_forward, self.model, mesh=self.mesh, autocast_dtype=self.autocast_dtype)
        if isinstance(self.reference, LiveReference):  # full fine-tuning: the frozen copy is sharded too
            frozen = self.reference.forward
            fsdp.shard_forward(frozen, frozen.model, mesh=self.mesh, autocast_dtype=self.autocast_dtype)
        return fingerprint

    def _setup_optimizer(self) -> None:
        """AdamW and its schedule over the trainable tensors (shards under FSDP); the DDP wrapper of the
        training forward."""
        cfg = self.config
        self.params = trainable_tensors(self.model)
        self.optimizer, self.scheduler = build_optimizer(
            list(self.params.values()), cfg.optim, max_steps=cfg.train.max_steps, device=self.device
        )
        self.train_forward = self.policy_forward
        if self.dist.enabled and not self.sharded:
            from torch.nn.parallel import DistributedDataParallel

            self.train_forward = DistributedDataParallel(
                self.policy_forward, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )

    def _setup_logging(self) -> None:
        """Rank 0: the run directory, the resolved config and the metrics logger (from the resumed step)."""
        if self.dist.is_main:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            save_config(self.config, self.run_dir / "config.yaml")
            from localdpo.trainer.logging import RunLogger

            self.logger = RunLogger(self.config, self.run_dir, resume_step=self.step)

    def _eval_batches(self):
        return held_out_batches(
            self.eval_examples,
            batch_size=self.config.eval.batch_size,
            pad_token_id=self.tokenizer.pad_token_id,
            to_device=self._to_device,
        )

    def _policy_forward(self, model) -> PolicyForward:
        train = self.config.train
        return PolicyForward(
            model, packing=train.packing, span_head=train.span_head, pad_token_id=self.tokenizer.pad_token_id
        )

    # ------------------------------------------------------------------ checkpoints

    @property
    def checkpoint_root(self) -> Path:
        return self.run_dir / "checkpoints"

    def _progress(self) -> ckpt.TrainingProgress:
        return ckpt.TrainingProgress(self.step, self.consumed, self.history, self.initial_items)

    def _resume(self) -> None:
        """Restore the checkpoint `checkpoint.resume` names, if any (`localdpo.trainer.checkpoint.resume_training`,
        or `localdpo.trainer.sharded_checkpoint.resume_sharded` under FSDP)."""
        if self.sharded:
            from localdpo.trainer.sharded_checkpoint import resume_sharded

            progress = resume_sharded(
                self.checkpoint_root,
                self.config.checkpoint.resume,
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                data_seed=self.config.data_seed,
                n_train=len(self.train_examples),
                dist=self.dist,
            )
        else:
            progress = ckpt.resume_training(
                self.checkpoint_root,
                self.config.checkpoint.resume,
                params=self.params,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                data_seed=self.config.data_seed,
                n_train=len(self.train_examples),
            )
        if progress is not None:
            self.step, self.consumed = progress.step, progress.consumed
            self.history, self.initial_items = progress.history, progress.initial_items

    def save_checkpoint(self) -> Path | None:
        """Write a resumable checkpoint of the current step (rank 0; every process its shards under FSDP) and
        prune old ones."""
        if self.sharded:
            from localdpo.trainer.sharded_checkpoint import save_sharded_checkpoint

            return save_sharded_checkpoint(
                self.checkpoint_root,
                self._progress(),
                model=self.model,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                data_seed=self.config.data_seed,
                n_train=len(self.train_examples),
                dist=self.dist,
                keep_last=self.config.checkpoint.keep_last,
            )
        path = None
        if self.dist.is_main:
            path = ckpt.save_training_checkpoint(
                self.checkpoint_root,
                self._progress(),
                params=self.params,
                optimizer=self.optimizer,
                scheduler=self.scheduler,
                data_seed=self.config.data_seed,
                n_train=len(self.train_examples),
                world_size=self.dist.world_size,
                keep_last=self.config.checkpoint.keep_last,
            )
        if self.dist.enabled:
            torch.distributed.barrier()
        return path

    def save(self) -> Path | None:
        """Save the final model (or LoRA adapter) and tokenizer in Hugging Face format under run_dir/final
        (under FSDP gathered whole first: every process calls this)."""
        state_dict = None
        if self.sharded:
            from localdpo.trainer.fsdp import full_model_state

            state_dict = full_model_state(self.model, trainable_only=self.config.model.lora.enabled)
        if not self.dist.is_main:
            return None
        return ckpt.save_final_model(self.model, self.tokenizer, self.run_dir, state_dict=state_dict)

    # ------------------------------------------------------------------ training

    def _to_device(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        if self.device.type == "cuda":
            return {k: v.pin_memory().to(self.device, non_blocking=True) for k, v in batch.items()}
        return batch

    def _autocast(self):
        return torch.autocast(
            device_type=self.device.type, dtype=self.autocast_dtype, enabled=self.autocast_dtype is not None
        )

    def _micro_batch(self) -> tuple[list[TokenizedSteer], dict[str, torch.Tensor]]:
        per_step = self.config.train.batch_size * self.dist.world_size
        indices = stream_indices(
            len(self.train_examples), self.config.data_seed, self.consumed, per_step, self.round_sizes
        )
        self.consumed += per_step
        mine = rank_slice(indices, self.dist, self.config.train.batch_size)
        examples = [self.train_examples[i] for i in mine]
        batch = collate_pairs(
            [trim_to_scored(e) for e in examples], pad_token_id=self.tokenizer.pad_token_id, indices=mine
        )
        return examples, self._to_device(batch)

    def _loss(
        self,
        examples,
        batch,
        sft_num_tokens: float | None = None,
        unlikelihood_num_tokens: float | None = None,
    ):
        cfg = self.config
        score_mask = None if cfg.method.is_preference else sft_mask(cfg.method, batch)  # (B, Tc) | None
        with self._autocast():
            chosen, rejected = self.train_forward(batch, score_mask)
        ref_chosen = ref_rejected = None
        if cfg.method.needs_reference:
            ref_chosen, ref_rejected = self.reference.training_logps(examples, batch, self.device)
        return method_loss(
            cfg.method,
            self.loss_spec,
            policy_chosen_logps=chosen,
            chosen_loss_mask=batch[CHOSEN_LOSS_MASK],
            chosen_attention_mask=batch[CHOSEN_ATTENTION_MASK],
            policy_rejected_logps=rejected,
            rejected_loss_mask=batch[REJECTED_LOSS_MASK],
            ref_chosen_logps=ref_chosen,
            ref_rejected_logps=ref_rejected,
            sft_num_tokens=sft_num_tokens,
            unlikelihood_num_tokens=unlikelihood_num_tokens,
        )

    def train_step(self) -> dict[str, float]:
        """One optimizer step over `grad_accum` micro-batches; returns its metrics (averaged over processes)."""
        cfg = self.config
        start = time.perf_counter()
        sums: dict[str, float] = {}
        tokens = 0
        accum = cfg.train.grad_accum
        micro_batches = [self._micro_batch() for _ in range(accum)]
        # The SFT term is one token mean over the whole step (every micro-batch, every process), as in one
        # big batch: each micro-batch divides its NLL sum by the step's scored tokens / (accum × world size).
        step_sft_tokens = all_reduce_sum(
            float(sum(int(sft_mask(cfg.method, batch).sum()) for _, batch in micro_batches)),
            self.dist,
            self.device,
        )
        sft_num_tokens = step_sft_tokens / (accum * self.dist.world_size)
        unlikelihood_num_tokens = None  # the unlikelihood term likewise over the step's rejected-span tokens
        if cfg.method.is_preference and LossType.UNLIKELIHOOD in self.loss_spec.loss_types:
            step_rejected_tokens = all_reduce_sum(
                float(sum(int(batch[REJECTED_LOSS_MASK].sum()) for _, batch in micro_batches)),
                self.dist,
                self.device,
            )
            unlikelihood_num_tokens = step_rejected_tokens / (accum * self.dist.world_size)
        for micro, (examples, batch) in enumerate(micro_batches):
            sync = micro == accum - 1 or not self.dist.enabled
            if self.sharded:  # FSDP's no_sync: gradients reduce-scattered on the last micro-batch only
                self.policy_forward.set_requires_gradient_sync(sync)
            context = self.train_forward.no_sync() if not (sync or self.sharded) else nullcontext()
            with context:
                out = self._loss(examples, batch, sft_num_tokens, unlikelihood_num_tokens)
                (out.loss / accum).backward()
            sums["train/loss"] = sums.get("train/loss", 0.0) + float(out.loss.detach()) / accum
            for key, value in out.metrics.items():
                sums[key] = sums.get(key, 0.0) + float(value.float().mean()) / accum
            tokens += int(batch[CHOSEN_ATTENTION_MASK].sum())
            if cfg.method.is_preference:
                tokens += int(batch[REJECTED_ATTENTION_MASK].sum())
        max_norm = cfg.optim.max_grad_norm if cfg.optim.max_grad_norm is not None else float("inf")
        grad_norm = clip_gradients(list(self.params.values()), max_norm)
        lr = self.scheduler.get_last_lr()[0]
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        elapsed = time.perf_counter() - start
        metrics = all_reduce_mean(sums, self.dist, self.device)
        peaks = per_rank_values(peak_memory_gb(self.device), self.dist, self.device)
        if self.dist.enabled:
            metrics.update({f"perf/peak_memory_gb_rank{rank}": peak for rank, peak in enumerate(peaks)})
        metrics.update(
            {
                "train/lr": lr,
                "train/grad_norm": grad_norm,
                "train/epoch": self.consumed / len(self.train_examples),
                "perf/tokens_per_s": tokens * self.dist.world_size / elapsed,
                "perf/step_time_s": elapsed,
                "perf/peak_memory_gb": max(peaks),
                "perf/packing": float(self.policy_forward.packing and cfg.method.is_preference),
                "perf/span_head": float(self.policy_forward.span_head),
            }
        )
        return metrics

    def train(self) -> TrainResult:
        """Train to `train.max_steps` (from a restored checkpoint if any), evaluating and checkpointing on schedule."""
        if not self._is_setup:
            self.setup()
        cfg = self.config
        if self.step == 0 and cfg.eval.at_start and not self.history:
            self._evaluate_and_log(final=False)
        bar = None
        if cfg.train.progress and self.dist.is_main:
            from tqdm.auto import tqdm

            bar = tqdm(
                total=cfg.train.max_steps, initial=self.step, desc=f"{cfg.method.value}", dynamic_ncols=True
            )
        last = {}
        while self.step < cfg.train.max_steps:
            last = self.train_step()
            if self.dist.is_main and (
                self.step % cfg.train.log_every == 0 or self.step == cfg.train.max_steps
            ):
                self.train_log.append(dict(last, step=self.step))
                self.logger.log(last, self.step)
            if bar is not None:
                bar.update(1)
                bar.set_postfix(loss=f"{last['train/loss']:.4f}", tok_s=f"{last['perf/tokens_per_s']:.0f}")
            done = self.step == cfg.train.max_steps
            if not done and evaluation_due(cfg.eval, self.step).evaluate:
                self._evaluate_and_log(final=False)
            if cfg.checkpoint.every and (self.step % cfg.checkpoint.every == 0 or done):
                self.save_checkpoint()
        if bar is not None:
            bar.close()
        final = (
            self._evaluate_and_log(final=True)
            if not (self.history and self.history[-1]["step"] == self.step)
            else self.history[-1]
        )
        final = dict(final)
        if not self.final_items:
            self.final_items = dict(self.last_eval_items)
        if last:
            final["train/loss"] = last["train/loss"]
        if self.logger is not None:
            self.logger.summary({f"final/{k}": v for k, v in final.items()})
        return TrainResult(
            final=final, history=list(self.history), train_log=list(self.train_log), run_dir=self.run_dir
        )

    def run(self) -> TrainResult:
        """`setup()`, `train()`, `save()` (when `checkpoint.save_final`), then close the logger."""
        try:
            self.setup()
            result = self.train()
            if self.config.checkpoint.save_final:
                self.save()
            return result
        finally:
            self.close()

    def close(self) -> None:
        if self.logger is not None:
            self.logger.finish()
            self.logger = None
        if self._owns_process_group and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
            self._owns_process_group = False

    # ------------------------------------------------------------------ evaluation

    @torch.no_grad()
    def evaluate(self, *, task: bool = False, steer_metrics: bool = True) -> dict[str, float]:
        """Held-out metrics of the current policy: preference accuracy, mean margin, chosen-span NLL, recurrence,
        uptake and continuation accuracy at the held-out steers, drift (, task).

        See `localdpo.trainer.evaluation`: one implicit reward for every method, so the numbers compare.
        """
        model = self.model
        was_training = model.training
        model.eval()
        gathered = nullcontext()
        if self.sharded:
            from localdpo.trainer.fsdp import root_gathered

            gathered = root_gathered(self.policy_forward)
        try:
            with gathered:
                metrics, items = evaluate_policy(
                    model,
                    self.tokenizer,
                    self.config,
                    eval_examples=self.eval_examples,
                    reference=self.eval_reference,
                    drift_set=self.drift_set,
                    device=self.device,
                    autocast=self._autocast(),
                    autocast_dtype=self.autocast_dtype,
                    to_device=self._to_device,
                    task=task,
                    forward=self.policy_forward,
                    probes=self.eval_probes if steer_metrics else [],
                )
        finally:
            model.train(was_training)
        self.last_eval_items = {k: v.cpu().numpy() for k, v in items.items()}
        return {"step": self.step, **metrics}

    def _evaluate_and_log(self, *, final: bool) -> dict[str, float]:
        task = evaluation_due(self.config.eval, self.step, final=final).task
        # Evaluation must not consume training randomness (a resumed run skips evaluations already logged).
        python_state = random.getstate()
        with torch.random.fork_rng(devices=[self.device] if self.device.type == "cuda" else []):
            metrics = self.evaluate(task=task, steer_metrics=final or self.step == 0)
        random.setstate(python_state)
        self.history.append(metrics)
        if self.step == 0:
            self.initial_items = dict(self.last_eval_items)
        if final:
            self.final_items = dict(self.last_eval_items)
        if self.logger is not None:
            self.logger.log({k: v for k, v in metrics.items() if k != "step"}, self.step)
        return metrics


def run_training(config: RunConfig, **kwargs) -> TrainResult:
    """Train `config` end to end (`Trainer(config, **kwargs).run()`): the entry point for notebooks and comparisons."""
    return Trainer(config, **kwargs).run()
