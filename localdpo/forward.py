"""Model forwards that return per-token log-probs of given sequences."""

from __future__ import annotations

import torch

from localdpo.losses import token_logps


def text_config(model):
    """The config of `model`'s text decoder: `config.get_text_config()` (multimodal configs nest it), else
    `config` itself."""
    config = model.config
    return config.get_text_config() if hasattr(config, "get_text_config") else config


def has_prompt_learning_adapter(model) -> bool:
    """Whether `model` (a peft model) holds any prompt-learning adapter (prompt / prefix / p-tuning), which
    prepends virtual tokens in the wrapper's forward. Any, not only the active one: the reference forward runs
    the same model with its adapter switched off, and peft does not mix prompt learning with other types."""
    peft_config = getattr(model, "peft_config", None)
    return isinstance(peft_config, dict) and any(
        getattr(config, "is_prompt_learning", False) for config in peft_config.values()
    )


def sequence_token_logps(model, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
    """Per-token log-probs of right-padded sequences under a causal LM (`out[:, 0] = 0`; padding is garbage).

    Shape: input_ids (B, T), attention_mask (B, T) -> (B, T) float32.
    """
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits  # (B, T, V)
    return token_logps(logits, input_ids)
