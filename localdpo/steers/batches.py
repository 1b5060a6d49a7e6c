"""Batches of tokenized steers: right-padded tensors under fixed key names."""

from __future__ import annotations

from collections.abc import Sequence

import torch

from localdpo.steers.tokenization import TokenizedSteer

CHOSEN_INPUT_IDS = "chosen_input_ids"
CHOSEN_ATTENTION_MASK = "chosen_attention_mask"
CHOSEN_LOSS_MASK = "chosen_loss_mask"
REJECTED_INPUT_IDS = "rejected_input_ids"
REJECTED_ATTENTION_MASK = "rejected_attention_mask"
REJECTED_LOSS_MASK = "rejected_loss_mask"
INDEX = "index"
"""(B,) int64: position of each example in its dataset; caches and results point back through it."""
PAIR_KEYS = (
    CHOSEN_INPUT_IDS,
    CHOSEN_ATTENTION_MASK,
    CHOSEN_LOSS_MASK,
    REJECTED_INPUT_IDS,
    REJECTED_ATTENTION_MASK,
    REJECTED_LOSS_MASK,
)
"""The tensors of a collated pair batch that decide its log-probs and losses (`INDEX` aside)."""


def pad_right(rows: Sequence[torch.Tensor], value: int | bool, length: int | None = None) -> torch.Tensor:
    """Stack 1-D tensors, right-padded with `value` to `length` (default: the longest).

    Shape: B tensors of (T_i,) -> (B, T).
    """
    length = max(int(r.numel()) for r in rows) if length is None else length
    out = torch.full((len(rows), length), value, dtype=rows[0].dtype)
    for i, row in enumerate(rows):
        out[i, : row.numel()] = row
    return out


def trim_to_scored(example: TokenizedSteer) -> TokenizedSteer:
    """Drop each side's tokens after its last scored token (lossless under causal attention)."""
    from dataclasses import replace

    def cut(ids: torch.Tensor, mask: torch.Tensor) -> int:
        scored = mask.nonzero().flatten()
        return int(scored[-1]) + 1 if scored.numel() else 1

    c, r = cut(example.chosen_ids, example.chosen_mask), cut(example.rejected_ids, example.rejected_mask)
    return replace(
        example,
        chosen_ids=example.chosen_ids[:c],
        chosen_mask=example.chosen_mask[:c],
        rejected_ids=example.rejected_ids[:r],
        rejected_mask=example.rejected_mask[:r],
    )


def collate_pairs(
    examples: Sequence[TokenizedSteer],
    *,
    pad_token_id: int,
    indices: Sequence[int] | None = None,
    pad_to_multiple_of: int | None = None,
) -> dict[str, torch.Tensor]:
    """Right-padded batch of chosen and rejected sides (each padded to its own longest row).

    Returns `{chosen,rejected}_{input_ids,attention_mask,loss_mask}` of shape (B, Tc) / (B, Tr) and
    `index` (B,).
    """
    if not examples:
        raise ValueError("cannot collate an empty batch")

    def length_of(rows: Sequence[torch.Tensor]) -> int:
        longest = max(int(r.numel()) for r in rows)
        if pad_to_multiple_of:
            longest = -(-longest // pad_to_multiple_of) * pad_to_multiple_of
        return longest

    batch: dict[str, torch.Tensor] = {}
    for side, ids_key, attn_key, loss_key in (
        ("chosen", CHOSEN_INPUT_IDS, CHOSEN_ATTENTION_MASK, CHOSEN_LOSS_MASK),
        ("rejected", REJECTED_INPUT_IDS, REJECTED_ATTENTION_MASK, REJECTED_LOSS_MASK),
    ):
        ids = [getattr(e, f"{side}_ids") for e in examples]
        masks = [getattr(e, f"{side}_mask") for e in examples]
        length = length_of(ids)
        batch[ids_key] = pad_right(ids, pad_token_id, length)  # (B, T)
        batch[attn_key] = pad_right(
            [torch.ones_like(i, dtype=torch.bool) for i in ids], False, length
        )  # (B, T)
        batch[loss_key] = pad_right(masks, False, length)  # (B, T)
    batch[INDEX] = torch.tensor(
        list(indices) if indices is not None else range(len(examples)), dtype=torch.long
    )
    return batch
