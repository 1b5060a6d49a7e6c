"""Reference-model per-token log-probs, computed once per (model, tokenizer, dtype, truncation, token ids).

What is stored: the per-token log-probs of each side's *whole* token sequence (prompt + prefix +
continuation), so every span mode, beta and loss type is served from one cache: a span only selects
positions. A side's ids are the same for every span mode (unless `max_length` cut its tail), and a side
trimmed after its last scored token (`localdpo.steers.batches.trim_to_scored`) is served as a prefix of the cached
full side of the same steer, after checking that the cached ids start with the requested ones (under
causal attention the log-probs of a prefix do not depend on what follows).

Keys: the sha256 of sorted JSON over the model fingerprint (full content of every weight, config, class),
the tokenizer fingerprint (vocabulary, rules, special tokens, chat template), the compute dtype,
`max_length`, a format version, and the exact token ids of the side (`localdpo.reference.store.sequence_key`).
Every stored entry also keeps its ids, checked against the request before a value is returned.

The fingerprint is computed once, at construction. Before any miss is computed the model's weights are
re-checked through a cheap stamp (tensor identity, data pointer, in-place version counter); if that shows
a change, the full fingerprint is recomputed and a changed model raises `ReferenceModelChangedError`
instead of computing "reference" values with trained weights. Writes through `.data` bypass version
counters: after those (or to deliberately re-key to new weights) call `refresh_fingerprint()`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from localdpo.forward import pair_logps
from localdpo.reference.fingerprint import (
    content_hash,
    is_peft_model,
    model_fingerprint,
    tokenizer_fingerprint,
    weights_stamp,
)
from localdpo.reference.store import (
    FORMAT_VERSION,
    ContextStore,
    Record,
    ShardDamagedError,
    default_cache_dir,
    sequence_key,
)
from localdpo.steers.batches import (
    CHOSEN_ATTENTION_MASK,
    REJECTED_ATTENTION_MASK,
    collate_pairs,
    pad_right,
)
from localdpo.steers.tokenization import TokenizedSteer

SIDES = ("chosen", "rejected")
_HALF = (torch.float16, torch.bfloat16)


class ReferenceModelChangedError(RuntimeError):
    """The model's weights changed after the cache was created, so it is no longer the reference."""


@dataclass
class CacheStats:
    """Counters since the cache object was created."""

    hits: int = 0
    """Examples whose two sides were both served from the cache."""
    misses: int = 0
    """Examples with at least one side computed (duplicates within one call count once each)."""
    forward_passes: int = 0
    """Reference model forward calls."""
    computed_examples: int = 0
    """Distinct examples run through the reference model."""
    prefix_hits: int = 0
    """Sides served as the prefix of a longer cached side of the same steer (e.g. trimmed batches)."""
    damaged_shards: int = 0
    """Shards found damaged (warned about, removed, recomputed)."""


def _param_dtype(model) -> torch.dtype:
    for parameter in model.parameters():
        if parameter.is_floating_point():
            return parameter.dtype
    raise ValueError("the model has no floating-point parameters")


def _active_adapter_layers(model) -> list:
    """peft tuner layers (LoRA, ...) and modules-to-save wrappers of `model` whose adapters are on."""
    from peft.tuners.tuners_utils import BaseTunerLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    layers = (BaseTunerLayer, AuxiliaryTrainingWrapper)
    return [m for m in model.modules() if isinstance(m, layers) and not getattr(m, "disable_adapters", True)]


@contextlib.contextmanager
def _adapters_off(model):
    """Every active adapter layer of `model` off, whatever wrapped it; adapters and requires_grad restored."""
    layers = _active_adapter_layers(model)
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for layer in layers:
        layer.enable_adapters(False)
    try:
        yield
    finally:
        for layer in layers:
            layer.enable_adapters(True)
        for parameter, requires_grad in flags:
            parameter.requires_grad_(requires_grad)


def _model_device(model) -> torch.device:
    for parameter in model.parameters():
        return parameter.device
    return torch.device("cpu")


def padded_pair_values(
    values: Sequence[tuple[torch.Tensor, torch.Tensor]],
    examples: Sequence[TokenizedSteer],
    lengths: tuple[Sequence[int], Sequence[int]],
    widths: tuple[int, int],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Cached `(chosen, rejected)` per-token log-probs (`ReferenceCache.get`) as two right-padded batch tensors.

    Each side's row is cut to that row's token count in the batch (a batch trimmed to its scored tokens holds a
    prefix of each sequence) and padded with 0 to the batch width; a row with fewer values raises.
    Shape: lengths ([B], [B]), widths (Tc, Tr) -> ((B, Tc), (B, Tr)) float32.
    """
    sides = []
    for position, side in enumerate(("chosen", "rejected")):
        rows = [pair[position][: int(n)].float() for pair, n in zip(values, lengths[position])]
        for row, n, example in zip(rows, lengths[position], examples):
            if row.numel() != n:
                raise ValueError(
                    f"reference cache returned {row.numel()} {side} log-probs for steer {example.steer_id!r}, "
                    f"expected {n}"
                )
        sides.append(pad_right(rows, 0.0, widths[position]))  # (B, T)
    return sides[0], sides[1]


class ReferenceCache:
    """Reference per-token log-probs of tokenized steers, computed on a miss and stored on disk.

    `model` is the reference (or the policy whose adapter is disabled for the reference: peft models).
    `dtype` is the compute dtype of the reference forward: the model's own parameter dtype, or float16 /
    bfloat16 under autocast for a float32 model. `max_length` is the truncation setting the examples were
    tokenized with (part of the key; longer sides are rejected). `cache_dir` defaults to
    `$LOCALDPO_REFCACHE`, else `localdpo.storage.paths.cache_root() / "refcache"`. `batch_size` is the number of
    examples (2 x batch_size sequences) per forward; `device` is where inputs go (default: the model's).
    `shard_size`: examples computed per shard written to disk (an interrupted build keeps every full shard).
    """

    def __init__(
        self,
        model,
        tokenizer,
        *,
        dtype: torch.dtype = torch.float32,
        max_length: int | None = None,
        cache_dir=None,
        batch_size: int = 8,
        device=None,
        progress: bool = True,
        shard_size: int = 256,
    ):
        if batch_size < 1 or shard_size < 1:
            raise ValueError(f"batch_size and shard_size must be >= 1, got {batch_size}, {shard_size}")
        if max_length is not None and max_length < 1:
            raise ValueError(f"max_length must be >= 1 or None, got {max_length}")
        param_dtype = _param_dtype(model)
        if dtype != param_dtype and not (dtype in _HALF and param_dtype == torch.float32):
            raise ValueError(
                f"dtype={dtype} cannot run a model whose parameters are {param_dtype}: pass dtype={param_dtype} "
                "(or a float32 model with dtype=float16/bfloat16 for autocast)"
            )
        self.model = model
        self.tokenizer = tokenizer
        self.dtype = dtype
        self.max_length = max_length
        self.batch_size = batch_size
        self.shard_size = shard_size
        self.progress = progress
        self.device = torch.device(device) if device is not None else _model_device(model)
        self.cache_dir = default_cache_dir(cache_dir)
        self.pad_token_id = next(
            (t for t in (tokenizer.pad_token_id, tokenizer.eos_token_id) if t is not None), 0
        )
        self.stats = CacheStats()
        self.tokenizer_fingerprint = tokenizer_fingerprint(tokenizer)
        self._autocast = dtype != param_dtype
        self._set_model_fingerprint(model_fingerprint(model))

    # --- keys and context -------------------------------------------------------------------------
    def _set_model_fingerprint(self, fingerprint: str) -> None:
        self.model_fingerprint = fingerprint
        self._stamp = weights_stamp(self.model)
        self.context = {
            "format": FORMAT_VERSION,
            "model": fingerprint,
            "tokenizer": self.tokenizer_fingerprint,
            "dtype": str(self.dtype).removeprefix("torch."),
            "max_length": self.max_length,
        }
        self.context_hash = content_hash(self.context)
        self.store = ContextStore(self.cache_dir / self.context_hash[:24], self.context_hash)
        described = dict(
            self.context,
            model_class=type(self.model).__name__,
            model_name=getattr(getattr(self.model, "config", None), "_name_or_path", None),
        )
        self.store.ensure(described)
        self.store.refresh()

    def refresh_fingerprint(self) -> str:
        """Re-hash the model's weights and key later lookups to them (after deliberate weight changes)."""
        self._set_model_fingerprint(model_fingerprint(self.model))
        return self.model_fingerprint

    def key(self, ids: torch.Tensor | Sequence[int]) -> str:
        """The cache key of one side's token ids under this cache's context."""
        return sequence_key(self.context_hash, ids.tolist() if isinstance(ids, torch.Tensor) else ids)

    def _check_weights_unchanged(self) -> None:
        if weights_stamp(self.model) == self._stamp:
            return
        current = model_fingerprint(self.model)
        if current != self.model_fingerprint:
            raise ReferenceModelChangedError(
                "the model's weights changed after the ReferenceCache was created (fingerprint "
                f"{self.model_fingerprint[:12]} -> {current[:12]}): computing the missing reference log-probs now "
                "would use trained weights. Call precompute() before training, pass a frozen reference model, "
                "or call refresh_fingerprint() if the new weights are meant to be the reference."
            )
        self._stamp = weights_stamp(self.model)

    # --- lookups ----------------------------------------------------------------------------------
    def _lookup(self, key: str, ids: torch.Tensor, steer_id: str | None, side: str) -> torch.Tensor | None:
        """Cached log-probs (T,) of `ids`, exact or as a prefix of the same steer's longer side; None on a miss."""
        entry = self.store.lookup(key)
        candidates = [entry] if entry is not None else self.store.candidates(steer_id, side, ids.numel() + 1)
        for candidate in candidates:
            try:
                stored_ids, logps = self.store.read(candidate)
            except ShardDamagedError as error:
                self.stats.damaged_shards += 1
                self.store.discard(candidate.shard, str(error).split(": ", 1)[-1])
                return self._lookup(key, ids, steer_id, side)
            n = ids.numel()
            if stored_ids.numel() >= n and torch.equal(stored_ids[:n], ids):
                if candidate is not entry:
                    self.stats.prefix_hits += 1
                return logps[:n].clone()
        return None

    def _validate(self, index: int, example) -> list[torch.Tensor]:
        sides = []
        for side in SIDES:
            ids = getattr(example, f"{side}_ids", None)
            if not isinstance(ids, torch.Tensor) or ids.dim() != 1 or ids.numel() == 0:
                raise ValueError(
                    f"example {index} (steer {getattr(example, 'steer_id', None)!r}): {side}_ids must be a non-empty 1-D tensor"
                )
            if self.max_length is not None and ids.numel() > self.max_length:
                raise ValueError(
                    f"example {index} (steer {example.steer_id!r}): {side} side has {ids.numel()} tokens > "
                    f"max_length={self.max_length} this cache was created with"
                )
            sides.append(ids.detach().to("cpu", torch.long))
        return sides

    # --- public API -------------------------------------------------------------------------------
    def get(self, examples: Sequence[TokenizedSteer]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Per example (chosen (Tc,), rejected (Tr,)) float32 CPU reference log-probs aligned with its ids.

        `out[0] = 0` on each side. Misses are computed in batches (tqdm progress) with the reference model
        under `torch.no_grad()` in eval mode (adapter disabled for peft models) and stored before returning.
        """
        return self._ensure(examples, collect=True)

    def precompute(self, examples: Sequence[TokenizedSteer]) -> None:
        """Compute and store every missing example of a dataset (each full shard is on disk as it completes)."""
        self._ensure(examples, collect=False)

    def _ensure(self, examples: Sequence[TokenizedSteer], *, collect: bool):
        ids = [self._validate(i, example) for i, example in enumerate(examples)]
        keys = [[self.key(side_ids) for side_ids in pair] for pair in ids]
        out: list[list[torch.Tensor | None]] = [[None, None] for _ in examples]
        for rescan in (False, True):
            if rescan and not self.store.refresh():
                break  # nothing new from other writers
            for i, example in enumerate(examples):
                for s, side in enumerate(SIDES):
                    if out[i][s] is None:
                        out[i][s] = self._lookup(
                            keys[i][s], ids[i][s], getattr(example, "steer_id", None), side
                        )
            if all(v is not None for pair in out for v in pair):
                break
        missing: dict[tuple[str, str], int] = {}
        for i, pair in enumerate(out):
            if pair[0] is not None and pair[1] is not None:
                self.stats.hits += 1
            else:
                self.stats.misses += 1
                missing.setdefault((keys[i][0], keys[i][1]), i)
        if missing:
            to_compute = [examples[i] for i in missing.values()]
            computed = self._compute(to_compute, [keys[i] for i in missing.values()], keep=collect)
            for i, pair in enumerate(out if collect else []):
                for s in range(2):
                    if pair[s] is None:
                        pair[s] = computed[keys[i][s]].clone()
        return [(pair[0], pair[1]) for pair in out] if collect else None

    # --- computation ------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _reference_mode(self):
        """Eval mode, no grad, adapters disabled, autocast when `dtype` is below the parameter dtype.

        Adapters: a peft `PeftModel` through `disable_adapter()`; adapters found in any other model (added with
        transformers' `add_adapter` / `load_adapter`, or injected in place by `get_peft_model` into the model
        this cache holds) are switched off layer by layer and back on afterwards. Every module's train/eval
        flag is restored afterwards.
        """
        modes = [(module, module.training) for module in self.model.modules()]
        self.model.eval()
        try:
            with contextlib.ExitStack() as stack:
                stack.enter_context(torch.no_grad())
                if is_peft_model(self.model):
                    stack.enter_context(self.model.disable_adapter())
                else:
                    stack.enter_context(_adapters_off(self.model))
                if self._autocast:
                    stack.enter_context(torch.autocast(self.device.type, dtype=self.dtype))
                yield
        finally:
            for module, training in modes:
                module.training = training

    def _compute(self, examples: list, keys: list[list[str]], *, keep: bool) -> dict[str, torch.Tensor]:
        """Run the reference model over `examples` (longest first, `batch_size` per forward) and store them.

        Returns key -> log-probs (T,) of every computed side when `keep` (else an empty dict).
        """
        from tqdm.auto import tqdm

        self._check_weights_unchanged()
        order = sorted(
            range(len(examples)),
            key=lambda i: -max(examples[i].chosen_ids.numel(), examples[i].rejected_ids.numel()),
        )
        computed: dict[str, torch.Tensor] = {}
        pending: list[Record] = []
        pending_examples = 0
        batches = [order[start : start + self.batch_size] for start in range(0, len(order), self.batch_size)]
        with (
            self._reference_mode(),
            tqdm(
                total=len(examples), desc="reference log-probs", unit="ex", disable=not self.progress
            ) as bar,
        ):
            for batch_order in batches:
                batch = [examples[i] for i in batch_order]
                chosen, rejected = self._forward(batch)
                for j, i in enumerate(batch_order):
                    for s, (side, logps) in enumerate(zip(SIDES, (chosen[j], rejected[j]))):
                        if keep:
                            computed[keys[i][s]] = logps
                        side_ids = getattr(examples[i], f"{side}_ids")
                        pending.append(
                            Record(keys[i][s], side_ids, logps, getattr(examples[i], "steer_id", None), side)
                        )
                self.stats.computed_examples += len(batch)
                pending_examples += len(batch)
                bar.update(len(batch))
                if pending_examples >= self.shard_size:
                    self.store.write(pending)
                    pending, pending_examples = [], 0
        if pending:
            self.store.write(pending)
        return computed

    def _forward(self, batch: list) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
        """Reference log-probs of both sides of `batch` in one forward: ([(Tc_i,)], [(Tr_i,)]) float32 CPU."""
        collated = collate_pairs(batch, pad_token_id=self.pad_token_id)
        collated = {key: value.to(self.device) for key, value in collated.items()}
        chosen, rejected = pair_logps(self.model, collated)  # (B, Tc), (B, Tr)
        chosen, rejected = chosen.float().cpu(), rejected.float().cpu()
        self.stats.forward_passes += 1
        finite = torch.cat(
            [chosen[collated[CHOSEN_ATTENTION_MASK].cpu()], rejected[collated[REJECTED_ATTENTION_MASK].cpu()]]
        )
        if not bool(torch.isfinite(finite).all()):
            raise FloatingPointError("the reference model produced non-finite log-probs: nothing was cached")
        return (
            [chosen[j, : e.chosen_ids.numel()].clone() for j, e in enumerate(batch)],
            [rejected[j, : e.rejected_ids.numel()].clone() for j, e in enumerate(batch)],
        )
