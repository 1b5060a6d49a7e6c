"""Pair batches: right padding, trimming after the last scored token, and the collated layout."""

import pytest
import torch

from localdpo.steers.batches import (
    CHOSEN_ATTENTION_MASK,
    CHOSEN_INPUT_IDS,
    CHOSEN_LOSS_MASK,
    INDEX,
    REJECTED_ATTENTION_MASK,
    REJECTED_INPUT_IDS,
    REJECTED_LOSS_MASK,
    collate_pairs,
    pad_right,
    trim_to_scored,
)
from localdpo.steers.tokenization import SpanMode, TokenizedSteer


def _pair(chosen, rejected, chosen_mask, rejected_mask, steer_id="p"):
    return TokenizedSteer(
        steer_id=steer_id,
        chosen_ids=torch.tensor(chosen),
        rejected_ids=torch.tensor(rejected),
        chosen_mask=torch.tensor(chosen_mask, dtype=torch.bool),
        rejected_mask=torch.tensor(rejected_mask, dtype=torch.bool),
        chosen_assistant_start=0,
        rejected_assistant_start=0,
        divergence=2,
        span_mode=SpanMode.DIVERGENT,
    )


def test_pad_right_stacks_to_the_longest_or_a_given_length():
    rows = [torch.tensor([1, 2, 3]), torch.tensor([4])]
    assert pad_right(rows, 0).tolist() == [[1, 2, 3], [4, 0, 0]]
    assert pad_right(rows, -1, 5).tolist() == [[1, 2, 3, -1, -1], [4, -1, -1, -1, -1]]


def test_trim_to_scored_drops_tokens_after_the_last_scored_one():
    pair = _pair([1, 2, 3, 4, 5], [1, 2, 7, 8], [0, 0, 1, 0, 0], [0, 0, 0, 0])
    trimmed = trim_to_scored(pair)
    assert trimmed.chosen_ids.tolist() == [1, 2, 3] and trimmed.chosen_mask.tolist() == [False, False, True]
    assert trimmed.rejected_ids.tolist() == [1]  # nothing scored: one token kept so the side is not empty


def test_collate_pairs_pads_each_side_to_its_own_longest_row():
    a = _pair([1, 2, 3], [1, 2, 4, 5], [0, 0, 1], [0, 0, 1, 1], "a")
    b = _pair([1, 9], [1, 8], [0, 1], [0, 1], "b")
    batch = collate_pairs([a, b], pad_token_id=0, indices=[7, 3])
    assert batch[CHOSEN_INPUT_IDS].tolist() == [[1, 2, 3], [1, 9, 0]]
    assert batch[CHOSEN_ATTENTION_MASK].tolist() == [[True, True, True], [True, True, False]]
    assert batch[CHOSEN_LOSS_MASK].tolist() == [[False, False, True], [False, True, False]]
    assert batch[REJECTED_INPUT_IDS].tolist() == [[1, 2, 4, 5], [1, 8, 0, 0]]
    assert batch[REJECTED_ATTENTION_MASK].sum(-1).tolist() == [4, 2]
    assert batch[REJECTED_LOSS_MASK].tolist() == [[False, False, True, True], [False, True, False, False]]
    assert batch[INDEX].tolist() == [7, 3]
    assert collate_pairs([a], pad_token_id=0, pad_to_multiple_of=4)[CHOSEN_INPUT_IDS].shape == (1, 4)
    with pytest.raises(ValueError, match="empty batch"):
        collate_pairs([], pad_token_id=0)
