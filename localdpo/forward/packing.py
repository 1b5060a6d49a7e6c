"""Shared-prefix packing: a steer's two sides in one row, the common prefix computed once.

A pair is laid out as `[shared][chosen tail][rejected tail]`, where `shared` is the common token prefix of
the two sides (`TokenizedSteer.divergence` tokens). Attention (query q, key k of the same row) is allowed
iff both belong to the same pair, k <= q, and k is shared or on q's own branch: rejected-tail tokens never
see chosen-tail tokens. Position ids run 0..p-1 over the shared part and restart at p for each tail, so
every token has the context and position it has in its own unpacked sequence, and its log-prob is the same
(up to floating-point summation order). The first token of each tail is predicted from the last shared
token's hidden state; so are both sides' shared scored tokens (span mode `completion`), computed once.

Several pairs may share a row (`max_tokens`): a block-diagonal mask keeps them apart.

Masks by attention implementation (transformers 5 passes a ready 4D mask through untouched,
`masking_utils._preprocess_mask_arguments`): `sdpa` gets a (R, 1, L, L) boolean mask, `eager` the same as
an additive float mask, `flex_attention` a `BlockMask` built from the pair and branch ids (no L×L tensor).
`flash_attention_*` cannot express the tail-to-tail exclusion and is refused.

This module lays pairs out and builds their masks; running the model on them is
`localdpo.forward.pairs.packed_pair_logps`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from localdpo.forward.model_facts import has_prompt_learning_adapter, text_config
from localdpo.steers.batches import (
    CHOSEN_ATTENTION_MASK,
    CHOSEN_INPUT_IDS,
    CHOSEN_LOSS_MASK,
    INDEX,
    REJECTED_ATTENTION_MASK,
    REJECTED_INPUT_IDS,
    REJECTED_LOSS_MASK,
    collate_pairs,
)

PAD, SHARED, CHOSEN, REJECTED = -1, 0, 1, 2
"""Branch ids of packed tokens."""

SUPPORTED_MODEL_TYPES = frozenset({"llama", "mistral", "qwen2", "qwen3", "gemma"})
"""Decoder-only architectures whose attention takes a custom 4D mask and explicit position ids (RoPE, no
per-layer mask types), checked for equality with the unpacked forward in tests/forward/test_packing.py."""

MASKED_ATTENTION = frozenset({"sdpa", "eager", "flex_attention"})


class PackingUnsupportedError(ValueError):
    """The model cannot run packed pairs exactly; use the unpacked path."""


def sliding_window(model) -> int | None:
    """The attention window the model applies, or None (a packed row ignores it: checked against lengths)."""
    config = text_config(model)
    if getattr(config, "use_sliding_window", True) is False:
        return None
    return getattr(config, "sliding_window", None)


def check_packing_support(model) -> None:
    """Raise `PackingUnsupportedError` naming why `model` cannot run packed pairs exactly."""
    config = text_config(model)
    model_type = getattr(config, "model_type", None)
    if model_type not in SUPPORTED_MODEL_TYPES:
        raise PackingUnsupportedError(
            f"model_type {model_type!r} is not one of the packing-tested architectures "
            f"{sorted(SUPPORTED_MODEL_TYPES)}; use packing=False"
        )
    implementation = getattr(config, "_attn_implementation", None)
    if implementation not in MASKED_ATTENTION:
        raise PackingUnsupportedError(
            f"attention implementation {implementation!r} does not honour a custom 4D mask; load the model with "
            f"attn_implementation in {sorted(MASKED_ATTENTION)} or use packing=False"
        )
    if has_prompt_learning_adapter(model):
        raise PackingUnsupportedError(
            "prompt-learning PEFT adapters prepend virtual tokens; use packing=False"
        )


def supports_packing(model) -> bool:
    """Whether `model` can run packed pairs exactly (see `check_packing_support` for the reason if not)."""
    try:
        check_packing_support(model)
    except PackingUnsupportedError:
        return False
    return True


@dataclass(frozen=True)
class PackedBatch:
    """Pairs packed as `[shared][chosen tail][rejected tail]` rows, with maps back to collate_pairs' layout."""

    input_ids: torch.Tensor
    """(R, L) int64: packed token ids, right-padded."""
    position_ids: torch.Tensor
    """(R, L) int64: each token's position in its own unpacked side (0 on padding)."""
    pair_ids: torch.Tensor
    """(R, L) int64: batch index of the pair each token belongs to, -1 on padding."""
    branch: torch.Tensor
    """(R, L) int64: SHARED, CHOSEN or REJECTED (tail), PAD on padding."""
    chosen_source: torch.Tensor
    """(B, Tc) int64: flat index r·L + l of the hidden state that predicts chosen token t, -1 if none."""
    rejected_source: torch.Tensor
    """(B, Tr) int64: the same for rejected tokens."""
    chosen_ids: torch.Tensor
    """(B, Tc) int64: chosen token ids in collate_pairs' layout (the prediction targets)."""
    rejected_ids: torch.Tensor
    """(B, Tr) int64."""
    chosen_mask: torch.Tensor
    """(B, Tc) bool: scored chosen tokens."""
    rejected_mask: torch.Tensor
    """(B, Tr) bool: scored rejected tokens."""
    index: torch.Tensor
    """(B,) int64: dataset index of each pair."""
    unpacked_tokens: int
    """Non-padding tokens the unpacked path would run (both sides of every pair, untrimmed)."""

    @property
    def packed_tokens(self) -> int:
        """Non-padding tokens in the packed rows."""
        return int((self.pair_ids >= 0).sum())

    def to(self, device: torch.device | str) -> PackedBatch:
        """This batch with every tensor on `device`."""
        moved = {
            name: value.to(device) if isinstance(value, torch.Tensor) else value
            for name, value in self.__dict__.items()
        }
        return PackedBatch(**moved)

    def attention_allowed(self) -> torch.Tensor:
        """Which key each query may attend to (padding attends to itself only, so no row is all-masked).

        Shape: (R, 1, L, L) bool.
        """
        pair_q, pair_k = self.pair_ids[:, :, None], self.pair_ids[:, None, :]  # (R, L, 1), (R, 1, L)
        branch_q, branch_k = self.branch[:, :, None], self.branch[:, None, :]
        length = self.pair_ids.shape[1]
        position = torch.arange(length, device=self.pair_ids.device)
        causal = position[None, :, None] >= position[None, None, :]  # (1, L, L)
        same_branch = (branch_k == SHARED) | (branch_k == branch_q)  # (R, L, L)
        allowed = (pair_q == pair_k) & (pair_q >= 0) & causal & same_branch  # (R, L, L)
        diagonal = torch.eye(length, dtype=torch.bool, device=allowed.device)[None]  # (1, L, L)
        return (allowed | diagonal).unsqueeze(1)  # (R, 1, L, L)

    def mask_mod(self):
        """FlexAttention `mask_mod(b, h, q_idx, kv_idx) -> bool` of `attention_allowed`, read from the ids."""
        pair_ids, branch = self.pair_ids, self.branch

        def mask_mod(b, h, q_idx, kv_idx):
            same_pair = (pair_ids[b, q_idx] == pair_ids[b, kv_idx]) & (pair_ids[b, q_idx] >= 0)
            visible = (branch[b, kv_idx] == SHARED) | (branch[b, kv_idx] == branch[b, q_idx])
            return (same_pair & visible & (kv_idx <= q_idx)) | (q_idx == kv_idx)

        return mask_mod

    def block_mask(self):
        """FlexAttention `BlockMask` of `attention_allowed`, built from pair and branch ids (no L×L tensor)."""
        from torch.nn.attention.flex_attention import create_block_mask

        rows, length = self.pair_ids.shape
        return create_block_mask(
            self.mask_mod(), B=rows, H=None, Q_LEN=length, KV_LEN=length, device=self.pair_ids.device
        )

    def attention_mask_for(self, implementation: str, dtype: torch.dtype):
        """The mask in the form `implementation` takes: bool (sdpa), additive `dtype` (eager), BlockMask (flex)."""
        if implementation == "flex_attention":
            return self.block_mask()
        allowed = self.attention_allowed()  # (R, 1, L, L)
        if implementation == "sdpa":
            return allowed
        if implementation == "eager":
            zero = torch.zeros((), dtype=dtype, device=allowed.device)
            return torch.where(allowed, zero, torch.finfo(dtype).min)
        raise PackingUnsupportedError(f"no packed mask for attention implementation {implementation!r}")


def _shared_token_count(a: torch.Tensor, b: torch.Tensor) -> int:
    limit = min(a.numel(), b.numel())
    differ = (a[:limit] != b[:limit]).nonzero()
    return int(differ[0]) if differ.numel() else limit


def _kept_length(loss_mask: torch.Tensor, length: int, trim: bool) -> int:
    if not trim:
        return length
    scored = loss_mask[:length].nonzero().flatten()
    return int(scored[-1]) + 1 if scored.numel() else 0


@dataclass(frozen=True)
class PairLayout:
    """One pair's segment of a packed row: `[shared][chosen tail][rejected tail]`, from `offset` of `row`."""

    chosen_kept: int
    """Chosen tokens kept (up to its last scored token when trimming): side positions 0..chosen_kept-1."""
    rejected_kept: int
    """Rejected tokens kept."""
    prefix: torch.Tensor
    """(shared,) int64: the common prefix, placed once."""
    chosen_tail: torch.Tensor
    """(ct,) int64: chosen's kept tokens after the prefix."""
    rejected_tail: torch.Tensor
    """(rt,) int64: rejected's kept tokens after the prefix."""

    @property
    def shared(self) -> int:
        return self.prefix.numel()

    @property
    def length(self) -> int:
        """Tokens of the segment: shared + ct + rt."""
        return self.shared + self.chosen_tail.numel() + self.rejected_tail.numel()

    def tokens(self) -> torch.Tensor:
        """(length,) int64: the segment's token ids."""
        return torch.cat([self.prefix, self.chosen_tail, self.rejected_tail])

    def positions(self) -> torch.Tensor:
        """(length,) int64: each token's position in its own side (the rejected tail restarts at `shared`)."""
        shared, ct, rt = self.shared, self.chosen_tail.numel(), self.rejected_tail.numel()
        return torch.cat([torch.arange(shared + ct), torch.arange(shared, shared + rt)])

    def branches(self) -> torch.Tensor:
        """(length,) int64: SHARED, CHOSEN or REJECTED for each token."""
        shared, ct, rt = self.shared, self.chosen_tail.numel(), self.rejected_tail.numel()
        return torch.tensor([SHARED] * shared + [CHOSEN] * ct + [REJECTED] * rt, dtype=torch.long)

    def chosen_sources(self, start: int) -> torch.Tensor:
        """(chosen_kept - 1,) int64: flat index of the hidden state predicting chosen token t = 1.., for a
        segment starting at flat index `start`: column t - 1 (shared then chosen tail are contiguous)."""
        t = torch.arange(1, max(self.chosen_kept, 1))  # a side with an empty span keeps nothing (n = 0)
        return start + t - 1

    def rejected_sources(self, start: int) -> torch.Tensor:
        """(rejected_kept - 1,) int64: the same for rejected token t = 1..: column t - 1 inside the prefix, else
        the rejected tail's column, past the chosen tail."""
        t = torch.arange(1, max(self.rejected_kept, 1))
        past_chosen = start + self.shared + self.chosen_tail.numel() + (t - 1 - self.shared)
        return torch.where(t - 1 < self.shared, start + t - 1, past_chosen)


def _pair_layout(
    chosen: torch.Tensor, rejected: torch.Tensor, chosen_kept: int, rejected_kept: int
) -> PairLayout:
    """The layout of one pair from its unpadded sides (Shape: (Tc,), (Tr,)) and kept lengths."""
    p = _shared_token_count(chosen, rejected)
    shared = min(p, max(chosen_kept, rejected_kept))
    return PairLayout(
        chosen_kept=chosen_kept,
        rejected_kept=rejected_kept,
        prefix=chosen[:shared],
        chosen_tail=chosen[shared : max(chosen_kept, shared)],
        rejected_tail=rejected[shared : max(rejected_kept, shared)],
    )


def _assign_rows(lengths: list[int], max_tokens: int | None, index: torch.Tensor) -> list[tuple[int, int]]:
    """(row, offset) of each segment: one per row, or first-fit decreasing into rows of `max_tokens`."""
    if max_tokens is None:
        return [(i, 0) for i in range(len(lengths))]
    fill: list[int] = []
    placement: list[tuple[int, int]] = [(0, 0)] * len(lengths)
    for i in sorted(range(len(lengths)), key=lambda j: -lengths[j]):
        if lengths[i] > max_tokens:
            raise ValueError(
                f"pair {i} (dataset index {int(index[i])}) packs to {lengths[i]} tokens > max_tokens={max_tokens}"
            )
        row = next((r for r, used in enumerate(fill) if used + lengths[i] <= max_tokens), None)
        if row is None:
            fill.append(0)
            row = len(fill) - 1
        placement[i] = (row, fill[row])
        fill[row] += lengths[i]
    return placement


def pack_batch(
    batch: dict[str, torch.Tensor],
    *,
    pad_token_id: int,
    max_tokens: int | None = None,
    trim: bool = True,
    pad_to_multiple_of: int | None = None,
) -> PackedBatch:
    """Pack a `collate_pairs` batch; the shared part of each pair is the common prefix of its two sides.

    `max_tokens=None` puts each pair on its own row; otherwise rows hold up to `max_tokens` tokens (a pair
    longer than that raises `ValueError`). `trim` drops each side's tokens after its last scored token
    (lossless under causal attention; their log-probs then come out 0).

    Example (one pair, every token scored): chosen `[a b c X Y]`, rejected `[a b c Z W]`; the shared prefix
    is `[a b c]` (`PairLayout`):

        column          0  1  2  3  4  5  6
        input_ids       a  b  c  X  Y  Z  W
        branch          S  S  S  C  C  R  R
        position_ids    0  1  2  3  4  3  4     the rejected tail restarts at 3, as in its own sequence

    Token t of a side is predicted by the hidden state of its token t - 1: `chosen_source` is
    `[-1, 0, 1, 2, 3]` and `rejected_source` `[-1, 0, 1, 2, 5]` (Z from c's column 2, W from Z's column 5,
    not from Y's column 4); -1 = not predicted (the first token).
    """
    chosen, rejected = batch[CHOSEN_INPUT_IDS].cpu(), batch[REJECTED_INPUT_IDS].cpu()  # (B, Tc), (B, Tr)
    chosen_mask, rejected_mask = batch[CHOSEN_LOSS_MASK].cpu().bool(), batch[REJECTED_LOSS_MASK].cpu().bool()
    chosen_len = batch[CHOSEN_ATTENTION_MASK].cpu().bool().sum(-1).tolist()  # B ints
    rejected_len = batch[REJECTED_ATTENTION_MASK].cpu().bool().sum(-1).tolist()
    index = batch[INDEX].cpu() if INDEX in batch else torch.arange(chosen.shape[0])
    layouts = [
        _pair_layout(
            chosen[i, : chosen_len[i]],
            rejected[i, : rejected_len[i]],
            _kept_length(chosen_mask[i], chosen_len[i], trim),
            _kept_length(rejected_mask[i], rejected_len[i], trim),
        )
        for i in range(chosen.shape[0])
    ]
    lengths = [layout.length for layout in layouts]
    placement = _assign_rows(lengths, max_tokens, index)
    rows = 1 + max(row for row, _ in placement)
    width = max([offset + n for (_, offset), n in zip(placement, lengths)] + [1])
    if pad_to_multiple_of:
        width = -(-width // pad_to_multiple_of) * pad_to_multiple_of
    input_ids = torch.full((rows, width), pad_token_id, dtype=torch.long)
    position_ids = torch.zeros((rows, width), dtype=torch.long)
    pair_ids = torch.full((rows, width), PAD, dtype=torch.long)
    branch = torch.full((rows, width), PAD, dtype=torch.long)
    chosen_source = torch.full(chosen.shape, -1, dtype=torch.long)
    rejected_source = torch.full(rejected.shape, -1, dtype=torch.long)
    for i, ((row, offset), layout) in enumerate(zip(placement, layouts)):
        segment = slice(offset, offset + layout.length)
        input_ids[row, segment] = layout.tokens()
        position_ids[row, segment] = layout.positions()
        pair_ids[row, segment] = i
        branch[row, segment] = layout.branches()
        start = row * width + offset  # flat index r·L + l of the segment's first column
        chosen_source[i, 1 : layout.chosen_kept] = layout.chosen_sources(start)
        rejected_source[i, 1 : layout.rejected_kept] = layout.rejected_sources(start)
    return PackedBatch(
        input_ids=input_ids,
        position_ids=position_ids,
        pair_ids=pair_ids,
        branch=branch,
        chosen_source=chosen_source,
        rejected_source=rejected_source,
        chosen_ids=chosen,
        rejected_ids=rejected,
        chosen_mask=chosen_mask,
        rejected_mask=rejected_mask,
        index=index,
        unpacked_tokens=int(sum(chosen_len) + sum(rejected_len)),
    )


def pack_pairs(
    examples,
    *,
    pad_token_id: int,
    max_tokens: int | None = None,
    trim: bool = True,
    pad_to_multiple_of: int | None = None,
) -> PackedBatch:
    """`pack_batch` of `collate_pairs(examples)`: a sequence of `TokenizedSteer` as packed rows."""
    batch = collate_pairs(examples, pad_token_id=pad_token_id)
    return pack_batch(
        batch,
        pad_token_id=pad_token_id,
        max_tokens=max_tokens,
        trim=trim,
        pad_to_multiple_of=pad_to_multiple_of,
    )


def check_window(model, packed: PackedBatch) -> None:
    """Raise `PackingUnsupportedError` when `packed` reaches past the sliding window `model` applies."""
    window = sliding_window(model)
    longest = int(packed.position_ids.max()) + 1
    if window is not None and longest > window:
        raise PackingUnsupportedError(
            f"sequences reach position {longest} > sliding_window={window}; a packed mask does not apply the "
            "window: use packing=False"
        )
