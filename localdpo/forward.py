"""Model forwards that return per-token log-probs of given sequences."""

from __future__ import annotations

from functools import lru_cache

import torch

from localdpo.data import CHOSEN_ATTENTION_MASK, CHOSEN_INPUT_IDS, REJECTED_ATTENTION_MASK, REJECTED_INPUT_IDS
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


def pair_logps(
    model,
    batch: dict[str, torch.Tensor],
    *,
    packing: bool = False,
    span_head: bool = False,
    pad_token_id: int | None = None,
    score_mask: torch.Tensor | None = None,
    need_rejected: bool = True,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Per-token log-probs of both sides of a `collate_pairs` batch: the package's one pair forward.

    The trainer (`localdpo.trainer.modeling.PolicyForward`), the held-out evaluation, the reference cache and
    the `transformers.Trainer` mixin all call it. With both fast paths off (the default) it is the plain
    forward, one pass over the 2B stacked rows, that every other path is checked against; `packing` packs
    each pair's shared prefix once and `span_head` projects only scored positions through the LM head
    (`localdpo.packing.pair_token_logps`, exact on every scored position, falling back with a warning where
    the model cannot run a path). `score_mask` (chosen positions the loss reads) or `need_rejected=False`
    asks for the chosen side alone (`rejected` is None), through the span head when it is on.

    Shape: batch chosen (B, Tc), rejected (B, Tr); score_mask (B, Tc) bool -> (B, Tc), (B, Tr) float32.
    """
    if score_mask is not None or not need_rejected:
        if span_head and score_mask is not None:
            from localdpo.span_head import span_token_logps

            chosen = span_token_logps(
                model, batch[CHOSEN_INPUT_IDS], batch[CHOSEN_ATTENTION_MASK], score_mask
            )
            return chosen, None  # (B, Tc)
        return sequence_token_logps(model, batch[CHOSEN_INPUT_IDS], batch[CHOSEN_ATTENTION_MASK]), None
    if packing or span_head:
        from localdpo.packing import pair_token_logps

        chosen, rejected, _, _ = pair_token_logps(
            model, batch, packing=packing, span_head=span_head, pad_token_id=pad_token_id
        )
        return chosen, rejected  # (B, Tc), (B, Tr)
    return _stacked_pair_logps(model, batch)


def _stacked_pair_logps(model, batch: dict[str, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """The plain forward: both sides right-padded to one width and run as 2B rows of one forward.

    Shape: batch chosen (B, Tc), rejected (B, Tr) -> (B, Tc), (B, Tr) float32.
    """
    chosen_ids, chosen_attn = batch[CHOSEN_INPUT_IDS], batch[CHOSEN_ATTENTION_MASK]
    rejected_ids, rejected_attn = batch[REJECTED_INPUT_IDS], batch[REJECTED_ATTENTION_MASK]
    tc, tr = chosen_ids.shape[1], rejected_ids.shape[1]
    length = max(tc, tr)
    ids = torch.cat(
        [
            torch.nn.functional.pad(chosen_ids, (0, length - tc)),
            torch.nn.functional.pad(rejected_ids, (0, length - tr)),
        ]
    )  # (2B, T)
    attn = torch.cat(
        [
            torch.nn.functional.pad(chosen_attn, (0, length - tc)),
            torch.nn.functional.pad(rejected_attn, (0, length - tr)),
        ]
    )  # (2B, T)
    logps = sequence_token_logps(model, ids, attn)  # (2B, T)
    batch_size = chosen_ids.shape[0]
    return logps[:batch_size, :tc], logps[batch_size:, :tr]  # (B, Tc), (B, Tr)


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
