"""Model forwards that return per-token log-probs of given sequences."""

from __future__ import annotations

from functools import lru_cache

import torch

from localdpo.losses import token_logps


def sequence_token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-token log-probs of right-padded sequences under a causal LM (`out[:, 0] = 0`; padding is garbage).

    Shape: input_ids (B, T), attention_mask (B, T) -> (B, T) float32.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (B, T, V)
    return token_logps(logits, input_ids)


@lru_cache(maxsize=1)
def _cache_argument() -> str:
    from transformers.modeling_outputs import CausalLMOutputWithPast

    return "cache" if "cache" in CausalLMOutputWithPast.__dataclass_fields__ else "past_key_values"


def kv_cache_kwargs(cache) -> dict:
    """`{name: cache}` for a model call or `generate`: `cache` on transformers versions that take it (5.24
    deprecates `past_key_values`), `past_key_values` before; decided once from transformers' own output type."""
    return {_cache_argument(): cache}


def returned_cache(output):
    """The KV cache a model call returned (`output.cache`, or `output.past_key_values` before the rename)."""
    return getattr(output, _cache_argument())
