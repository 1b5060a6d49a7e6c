"""Per-token log-probs of a steer batch's two sides: the package's one pair forward, `pair_logps`.

Which fast paths run is decided once per model (`FastPaths.for_model`: a path the model cannot run is
turned off with a warning naming why); `pair_logps` then takes the packed path (`localdpo.forward.packing`
lays the pairs out, `packed_pair_logps` runs them) or the one unpacked path, both sides right-padded to one
width and run as 2B rows, with the span-only LM head (`localdpo.forward.span_head`) on either when it is on.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch

from localdpo.forward.model_facts import text_config
from localdpo.forward.packing import (
    PackedBatch,
    PackingUnsupportedError,
    check_packing_support,
    check_window,
    pack_batch,
)
from localdpo.forward.span_head import (
    DEFAULT_CHUNK_SIZE,
    SpanHeadUnsupportedError,
    check_span_head_support,
    decoder_hidden_states,
    head_token_logps,
    span_token_logps,
)
from localdpo.losses import token_logps
from localdpo.steers.batches import (
    CHOSEN_ATTENTION_MASK,
    CHOSEN_INPUT_IDS,
    CHOSEN_LOSS_MASK,
    REJECTED_ATTENTION_MASK,
    REJECTED_INPUT_IDS,
    REJECTED_LOSS_MASK,
)


@dataclass(frozen=True)
class FastPaths:
    """Which fast paths a pair forward takes; both off is the plain forward every other path is checked against."""

    packing: bool = False
    """Pack each pair's shared prefix once (`localdpo.forward.packing`)."""
    span_head: bool = False
    """Project only the scored positions through the LM head (`localdpo.forward.span_head`)."""

    @classmethod
    def for_model(cls, model, *, packing: bool, span_head: bool) -> FastPaths:
        """The paths as asked, each turned off, with a warning naming why, where `model` cannot run it."""
        if packing:
            try:
                check_packing_support(model)
            except PackingUnsupportedError as error:
                warnings.warn(f"packing off: {error}", stacklevel=3)
                packing = False
        if span_head:
            try:
                check_span_head_support(model)
            except SpanHeadUnsupportedError as error:
                warnings.warn(f"span head off: {error}", stacklevel=3)
                span_head = False
        return cls(packing=packing, span_head=span_head)


PLAIN = FastPaths()
"""No fast path: one forward of both sides stacked, full logits."""


def sequence_token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-token log-probs of right-padded sequences under a causal LM (`out[:, 0] = 0`; padding is garbage).

    Shape: input_ids (B, T), attention_mask (B, T) -> (B, T) float32.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (B, T, V)
    return token_logps(logits, input_ids)


def pair_logps(
    model,
    batch: dict[str, torch.Tensor],
    paths: FastPaths = PLAIN,
    *,
    pad_token_id: int | None = None,
    score_mask: torch.Tensor | None = None,
    need_rejected: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of both sides of a `collate_pairs` batch: the package's one pair forward.

    The trainer (`localdpo.trainer.modeling.PolicyForward`), the held-out evaluation, the reference cache and
    the `transformers.Trainer` mixin all call it. `paths` comes from `FastPaths.for_model` (decided once per
    model); with `PLAIN` (the default) it is one forward over the 2B stacked rows. Every path is exact on
    every scored position; a batch reaching past the model's sliding window runs unpacked, with a warning.
    `score_mask` (chosen positions the loss reads) or `need_rejected=False` asks for the chosen side alone
    (`rejected` is None), through the span head when it is on.

    Shape: batch chosen (B, Tc), rejected (B, Tr); score_mask (B, Tc) bool -> (B, Tc), (B, Tr) float32.
    """
    if score_mask is not None or not need_rejected:
        if paths.span_head and score_mask is not None:
            chosen = span_token_logps(model, batch[CHOSEN_INPUT_IDS], batch[CHOSEN_ATTENTION_MASK], score_mask)
            return chosen, None  # (B, Tc)
        return sequence_token_logps(model, batch[CHOSEN_INPUT_IDS], batch[CHOSEN_ATTENTION_MASK]), None
    if paths.packing:
        try:
            packed = pack_batch(batch, pad_token_id=pad_token_id or 0)
            check_window(model, packed)
        except PackingUnsupportedError as error:
            warnings.warn(f"packing off: {error}", stacklevel=2)
        else:
            return packed_pair_logps(model, packed, span_head=paths.span_head)  # (B, Tc), (B, Tr)
    return _stacked_pair_logps(model, batch, span_head=paths.span_head)


def _stacked_pair_logps(
    model, batch: dict[str, torch.Tensor], *, span_head: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """The unpacked path: both sides right-padded to one width and run as 2B rows of one forward; with
    `span_head`, only the scored positions (the batch's loss masks) go through the LM head.

    Shape: batch chosen (B, Tc), rejected (B, Tr) -> (B, Tc), (B, Tr) float32.
    """
    device = next(model.parameters()).device
    chosen_ids, rejected_ids = batch[CHOSEN_INPUT_IDS], batch[REJECTED_INPUT_IDS]
    tc, tr = chosen_ids.shape[1], rejected_ids.shape[1]
    length = max(tc, tr)

    def stacked(chosen: torch.Tensor, rejected: torch.Tensor) -> torch.Tensor:
        padded = torch.nn.functional.pad(chosen, (0, length - tc)), torch.nn.functional.pad(rejected, (0, length - tr))
        return torch.cat(padded).to(device)  # (2B, T)

    ids = stacked(chosen_ids, rejected_ids)  # (2B, T)
    attn = stacked(batch[CHOSEN_ATTENTION_MASK], batch[REJECTED_ATTENTION_MASK])  # (2B, T)
    if span_head:
        scored = stacked(batch[CHOSEN_LOSS_MASK], batch[REJECTED_LOSS_MASK]).bool()  # (2B, T)
        logps = span_token_logps(model, ids, attn, scored)  # (2B, T)
    else:
        logps = sequence_token_logps(model, ids, attn)  # (2B, T)
    batch_size = chosen_ids.shape[0]
    return logps[:batch_size, :tc], logps[batch_size:, :tr]  # (B, Tc), (B, Tr)


def _scatter(values: torch.Tensor, where: torch.Tensor) -> torch.Tensor:
    """Zeros of `where`'s shape holding `values` at its True entries. Shape: (N,), (B, T) bool -> (B, T)."""
    out = torch.zeros(where.shape, dtype=torch.float32, device=values.device)
    return out.masked_scatter(where, values)


def packed_pair_logps(
    model,
    packed: PackedBatch,
    *,
    span_head: bool = True,
    chunk_size: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-token log-probs of both sides from one packed forward, in collate_pairs' layout.

    `out[b, t] = log p(x_t | x_<t)` as `sequence_token_logps` gives on the unpacked side, at every scored
    position (with `span_head`, only there; without it, at every kept position); 0 elsewhere and at t = 0.
    `span_head` projects only the predicting hidden states through the LM head (`localdpo.forward.span_head`).

    Shape: -> chosen (B, Tc) float32, rejected (B, Tr) float32.
    """
    check_packing_support(model)
    check_window(model, packed)
    device = next(model.parameters()).device
    packed = packed.to(device)
    implementation = text_config(model)._attn_implementation
    mask = packed.attention_mask_for(implementation, next(model.parameters()).dtype)
    need_chosen = packed.chosen_source >= 0  # (B, Tc)
    need_rejected = packed.rejected_source >= 0  # (B, Tr)
    if span_head:
        need_chosen, need_rejected = need_chosen & packed.chosen_mask, need_rejected & packed.rejected_mask
    source = torch.cat([packed.chosen_source[need_chosen], packed.rejected_source[need_rejected]])  # (N,)
    targets = torch.cat([packed.chosen_ids[need_chosen], packed.rejected_ids[need_rejected]])  # (N,)
    forward = {"attention_mask": mask, "position_ids": packed.position_ids, "use_cache": False}
    if span_head:
        hidden = decoder_hidden_states(model, packed.input_ids, **forward)  # (R, L, H)
        flat = hidden.reshape(-1, hidden.shape[-1])  # (R·L, H)
        # shared scored tokens appear on both sides with the same predictor and target: project them once
        radix = int(targets.max()) + 1 if targets.numel() else 1
        unique_keys, inverse = torch.unique(source * radix + targets, return_inverse=True)  # (U,), (N,)
        rows, row_targets = flat[unique_keys // radix], unique_keys % radix  # (U, H), (U,)
        logps = head_token_logps(model, rows, row_targets, chunk_size=chunk_size or DEFAULT_CHUNK_SIZE)[
            inverse
        ]
    else:
        logits = model(input_ids=packed.input_ids, **forward).logits  # (R, L, V)
        rows = logits.reshape(-1, logits.shape[-1])[source].float()  # (N, V)
        logps = rows.gather(-1, targets.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(rows, dim=-1)  # (N,)
    n_chosen = int(need_chosen.sum())
    return _scatter(logps[:n_chosen], need_chosen), _scatter(logps[n_chosen:], need_rejected)
