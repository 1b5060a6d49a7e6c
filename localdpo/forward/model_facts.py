"""Facts read off a model or the installed transformers: its text config, its adapters, the KV-cache argument.

A leaf module: it imports nothing of localdpo, so every forward module (and generation) can read these
facts without importing each other.
"""

from __future__ import annotations

from functools import lru_cache


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
