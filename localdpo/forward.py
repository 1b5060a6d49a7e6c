"""Model forwards that return per-token log-probs of given sequences."""

from __future__ import annotations

import torch

from localdpo.losses import token_logps


def sequence_token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-token log-probs of right-padded sequences under a causal LM (`out[:, 0] = 0`; padding is garbage).

    Shape: input_ids (B, T), attention_mask (B, T) -> (B, T) float32.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (B, T, V)
    return token_logps(logits, input_ids)
