"""The trainer's reference: where its log-probs come from (`ReferenceSource`: the reference cache, default, or
a live frozen model for training batches), and for the held-out steers the policy's own evaluation forward on
the starting weights.

Each gives per-token log-probs of the starting model, laid out like the (trimmed, right-padded) batch.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from contextlib import contextmanager, nullcontext
from enum import Enum
from typing import TYPE_CHECKING

import torch

from localdpo.reference.cache import ReferenceCache, padded_pair_values
from localdpo.steers.tokenization import TokenizedSteer

if TYPE_CHECKING:  # annotations only: the trainer's config imports `ReferenceSource` from here
    from localdpo.trainer.config import RunConfig
    from localdpo.trainer.distributed import DistInfo


class ReferenceSource(str, Enum):
    """Where the reference log-probs come from (`loss.reference`)."""

    CACHE = "cache"
    """Computed once from the starting model and stored (`localdpo.reference.cache`)."""
    LIVE = "live"
    """A frozen copy of the starting model (or the LoRA model with its adapter off), run every step."""


class CachedReference:
    """Reference log-probs looked up in a `localdpo.reference.cache.ReferenceCache` (or any object with `.get`).

    The cache is asked with the untrimmed examples (its keys are the full token ids); the values are cut to
    the batch's trimmed lengths and right-padded with 0 like the batch.
    """

    def __init__(self, cache):
        self.cache = cache

    def training_logps(
        self, examples: Sequence[TokenizedSteer], batch: dict[str, torch.Tensor], device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: -> (B, Tc), (B, Tr) float32 matching the batch's chosen / rejected input ids."""
        from localdpo.steers.batches import CHOSEN_ATTENTION_MASK, REJECTED_ATTENTION_MASK

        masks = batch[CHOSEN_ATTENTION_MASK], batch[REJECTED_ATTENTION_MASK]  # (B, Tc), (B, Tr)
        chosen, rejected = padded_pair_values(
            self.cache.get(list(examples)),
            examples,
            lengths=(masks[0].sum(-1).tolist(), masks[1].sum(-1).tolist()),
            widths=(masks[0].shape[1], masks[1].shape[1]),
        )
        return chosen.to(device, non_blocking=True), rejected.to(device, non_blocking=True)


class LiveReference:
    """Reference log-probs from a frozen model forward (a copy of the starting model, or the LoRA base).

    `training_logps` runs the training forward (a `PolicyForward`: packed / span head when on), the policy's
    own training path, exact on every scored position (the only positions a loss reads; others may be 0).
    """

    def __init__(self, forward, *, disable_adapter_of=None, autocast_dtype: torch.dtype | None = None):
        """`forward`: a `PolicyForward` over the frozen reference; with `disable_adapter_of` (a peft model) it is
        the forward of that model, run with its adapter switched off, so no copy is kept."""
        self.forward = forward
        self.peft_model = disable_adapter_of
        self.autocast_dtype = autocast_dtype

    def training_logps(
        self, examples: Sequence[TokenizedSteer], batch: dict[str, torch.Tensor], device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Reference log-probs on the scored tokens, by the training forward.

        Shape: -> (B, Tc), (B, Tr) float32 matching the batch's chosen / rejected input ids.
        """
        model = self.peft_model if self.peft_model is not None else self.forward.model
        with (
            reference_mode(model, peft_model=self.peft_model),
            torch.autocast(
                device_type=torch.device(device).type,
                dtype=self.autocast_dtype,
                enabled=self.autocast_dtype is not None,
            ),
        ):
            chosen, rejected = self.forward(batch)  # (B, Tc), (B, Tr)
        return chosen.float(), rejected.float()


@contextmanager
def reference_mode(model, *, peft_model=None):
    """`model` as its reference: eval mode, no grad, `peft_model`'s adapter switched off; its train flag restored."""
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), peft_model.disable_adapter() if peft_model is not None else nullcontext():
            yield
    finally:
        model.train(was_training)


class EvalReference:
    """Reference log-probs of the held-out steers, computed once from the starting model by the policy's own
    evaluation forward over the same batches (`held_out_batches`).

    So a policy equal to its reference scores margins of exactly 0 on every held-out steer. Any other path
    (the reference cache's batching, a plain forward against a packed one) agrees only to float rounding
    (up to 1.7e-5 per token measured on SmolLM2-135M in fp32), which is enough to break ties and count noise
    as preference. Held in memory (held-out sets are small); batches are found by their content.
    """

    def __init__(self, values: dict[bytes, tuple[torch.Tensor, torch.Tensor]], signature: tuple):
        self.values = values
        """Batch content key -> (chosen (B, Tc), rejected (B, Tr)) float32 log-probs (CPU)."""
        self.signature = signature
        """What else decides the values: the starting weights' fingerprint, the forward's fast paths, the autocast
        dtype, the batch size."""

    @staticmethod
    def batch_key(batch: dict[str, torch.Tensor]) -> bytes:
        """The content of a collated batch that decides its log-probs: ids, attention and loss masks, shapes."""
        import hashlib

        from localdpo.steers.batches import PAIR_KEYS

        digest = hashlib.sha256()
        for name in PAIR_KEYS:
            tensor = batch[name].detach().to("cpu", torch.long)
            digest.update(repr(tuple(tensor.shape)).encode())
            digest.update(tensor.numpy().tobytes())
        return digest.digest()

    @classmethod
    @torch.no_grad()
    def build(cls, forward, batches, *, autocast, signature: tuple) -> EvalReference:
        """Run `forward` (a `PolicyForward` over the starting model, in eval mode) on every `(chunk, batch)`."""
        values = {}
        for _, batch in batches:
            with autocast:
                chosen, rejected = forward(batch)  # (B, Tc), (B, Tr)
            values[cls.batch_key(batch)] = (chosen.float().cpu(), rejected.float().cpu())
        return cls(values, signature)

    def covers(self, batches, signature: tuple) -> bool:
        """Whether these batches, run with this signature, are exactly the ones this reference holds."""
        return signature == self.signature and {self.batch_key(b) for _, b in batches} == set(self.values)

    def batch_logps(
        self, examples: Sequence[TokenizedSteer], batch: dict[str, torch.Tensor], device
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Shape: -> (B, Tc), (B, Tr) float32, the stored log-probs of this exact batch."""
        found = self.values.get(self.batch_key(batch))
        if found is None:
            ids = [getattr(e, "steer_id", None) for e in examples]
            raise KeyError(f"held-out batch of steers {ids} is not one this EvalReference was built on")
        return found[0].to(device), found[1].to(device)


def eval_reference_for(
    model,
    forward,
    batches,
    *,
    autocast,
    autocast_dtype,
    batch_size: int,
    given: EvalReference | None = None,
    fingerprint: str | None = None,
) -> EvalReference:
    """The held-out steers' `EvalReference` of `model`'s current (starting) weights through `forward` (the
    policy's `PolicyForward`): `given` when it holds exactly these batches under the same signature, else built
    now, in eval mode with a peft adapter switched off. `batches()` gives the `held_out_batches` afresh;
    `fingerprint`: the starting weights' `model_fingerprint` when taken already (before FSDP sharded them)."""
    from localdpo.reference.fingerprint import is_peft_model, model_fingerprint

    # what decides the values besides the batches: the starting weights (adapters skipped), the forward
    if fingerprint is None:
        fingerprint = model_fingerprint(model)
    signature = (fingerprint, forward.packing, forward.span_head, autocast_dtype, batch_size)
    if given is not None and given.covers(batches(), signature):
        return given
    with reference_mode(model, peft_model=model if is_peft_model(model) else None):
        return EvalReference.build(forward, batches(), autocast=autocast, signature=signature)


def reference_cache_for(
    config: RunConfig, model, tokenizer, *, device, autocast_dtype: torch.dtype | None, progress: bool = True
):
    """The `ReferenceCache` of starting model `model` for runs of `config`: computed in the runs' autocast dtype
    (so a policy equal to its reference has margins of exactly 0), at their max_length, under `cache_dir`."""
    return ReferenceCache(
        model,
        tokenizer,
        dtype=autocast_dtype or torch.float32,
        max_length=config.data.max_length,
        cache_dir=config.cache_dir,
        batch_size=config.eval.batch_size,
        device=device,
        progress=config.train.progress and progress,
    )


def build_reference(
    config: RunConfig,
    base,
    tokenizer,
    *,
    make_forward,
    train_examples: Sequence[TokenizedSteer],
    device: torch.device,
    dist: DistInfo,
    autocast_dtype: torch.dtype | None,
    cache=None,
):
    """`(reference, cache)` of the starting model `base`, before any step.

    `loss.reference=cache`: the shared `cache` (or a new `ReferenceCache`) filled with the training steers of a
    preference method (held-out steers get an `EvalReference` instead), under DDP by rank 0 first; `live`
    without LoRA: a frozen copy of `base` run through `make_forward(copy)`; `live` with LoRA: `(None, cache)`, since the reference is the LoRA model with its adapter off, built once it
    exists. A given `cache` is handed back unused under `live`.
    """
    source = ReferenceSource(config.loss.reference)
    if source is ReferenceSource.LIVE:
        if config.model.lora.enabled:
            return None, cache
        frozen = copy.deepcopy(base).eval().requires_grad_(False)
        return LiveReference(make_forward(frozen), autocast_dtype=autocast_dtype), cache
    if source is not ReferenceSource.CACHE:
        raise ValueError(f"loss.reference={source.value!r} has no reference here")
    if cache is None:
        cache = reference_cache_for(
            config, base, tokenizer, device=device, autocast_dtype=autocast_dtype, progress=dist.is_main
        )
    needed = list(train_examples) if config.method.needs_reference else []
    # Under DDP rank 0 computes the shared on-disk cache first; the others then read it (all hits).
    if dist.enabled and not dist.is_main:
        torch.distributed.barrier()
    cache.precompute(needed)
    if dist.enabled and dist.is_main:
        torch.distributed.barrier()
    return CachedReference(cache), cache
