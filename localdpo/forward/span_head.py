"""Span-only LM head: log-probs of the scored tokens without the full (B, T, V) logits.

A causal LM's forward projects every position through the LM head (49,152-way for SmolLM2), but a steer
scores a short span. Here the decoder runs alone for hidden states, then only the rows that predict a scored
token (position t-1 for a scored token t) go through the LM head and a float32 log-softmax, in chunks. Under
autograd each chunk is recomputed in backward (activation checkpointing), so at most one chunk of
(chunk_size, V) logits is alive at a time instead of (B, T, V).

Post-processing of the logits that some architectures apply after the LM head is reproduced, following what
the model classes do in transformers 5 (and TRL 1.16's `add_fused_lm_head`): `logit_scale` (Cohere:
multiply), `logits_scaling` (Granite: divide), `final_logit_softcapping` (Gemma 2/3: cap·tanh(z/cap)). A
config with another output multiplier is refused (`SpanHeadUnsupportedError`) rather than scored wrong.
"""

from __future__ import annotations

import torch
from torch.utils.checkpoint import checkpoint

from localdpo.forward.model_facts import has_prompt_learning_adapter, text_config

DEFAULT_CHUNK_SIZE = 1024
"""Rows of hidden states projected through the LM head at once (1024 × 49,152 fp32 logits = 192 MiB)."""

_UNHANDLED_LOGIT_ATTRIBUTES = ("output_multiplier", "lm_head_multiplier")


class SpanHeadUnsupportedError(ValueError):
    """The model's output head does something the span-only head does not reproduce."""


def _check_not_prompt_learning(model) -> None:
    if has_prompt_learning_adapter(model):
        raise SpanHeadUnsupportedError(
            "prompt-learning PEFT adapters prepend virtual tokens in the wrapper's forward; "
            "the span head calls the decoder directly: use span_head=False"
        )


def logit_transform(model) -> tuple[float, float | None]:
    """`(scale, softcap)` the model applies to `lm_head(h)`: logits = cap·tanh(scale·z / cap), or scale·z.

    Raises `SpanHeadUnsupportedError` for output multipliers it does not know how to apply.
    """
    config = text_config(model)
    for name in _UNHANDLED_LOGIT_ATTRIBUTES:
        if getattr(config, name, None) not in (None, 1, 1.0):
            raise SpanHeadUnsupportedError(
                f"{config.model_type}: config.{name}={getattr(config, name)!r} is not reproduced by the span "
                "head; use span_head=False"
            )
    scale = 1.0
    if getattr(config, "logit_scale", None) is not None:
        scale *= float(config.logit_scale)
    if getattr(config, "logits_scaling", None) is not None:
        if config.model_type == "hyperclovax":
            raise SpanHeadUnsupportedError("hyperclovax multiplies by logits_scaling; use span_head=False")
        scale /= float(config.logits_scaling)
    softcap = getattr(config, "final_logit_softcapping", None)
    return scale, (float(softcap) if softcap else None)


def _decoder(model):
    _check_not_prompt_learning(model)
    decoder = model.get_decoder() if hasattr(model, "get_decoder") else None
    if decoder is None or decoder is model:
        raise SpanHeadUnsupportedError(
            f"{type(model).__name__} exposes no separate decoder (get_decoder()); use span_head=False"
        )
    return decoder


def check_span_head_support(model) -> None:
    """Raise `SpanHeadUnsupportedError` naming the reason when the span head cannot reproduce `model`'s logits."""
    logit_transform(model)
    _decoder(model)


def _rows_logps(
    lm_head: torch.nn.Module, rows: torch.Tensor, targets: torch.Tensor, scale: float, softcap: float | None
) -> torch.Tensor:
    """log softmax(transform(lm_head(rows)))[targets] in float32.

    Shape: rows (N, H), targets (N,) -> (N,).
    """
    logits = lm_head(rows).float()  # (N, V)
    if scale != 1.0:
        logits = logits * scale
    if softcap is not None:
        logits = softcap * torch.tanh(logits / softcap)
    picked = logits.gather(-1, targets.unsqueeze(-1)).squeeze(-1)  # (N,)
    return picked - torch.logsumexp(logits, dim=-1)  # (N,)


def head_token_logps(
    model, rows: torch.Tensor, targets: torch.Tensor, *, chunk_size: int = DEFAULT_CHUNK_SIZE
) -> torch.Tensor:
    """Log-probs of `targets` given final hidden states `rows`, through the model's LM head, chunk by chunk.

    Under autograd each chunk is checkpointed: only `rows` are saved, the (chunk, V) logits are rebuilt in
    backward.

    Shape: rows (N, H), targets (N,) int64 -> (N,) float32.
    """
    if rows.shape[:1] != targets.shape:
        raise ValueError(f"rows {tuple(rows.shape)} and targets {tuple(targets.shape)} disagree on N")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    lm_head = model.get_output_embeddings()
    if lm_head is None:
        raise SpanHeadUnsupportedError(f"{type(model).__name__} has no output embeddings (LM head)")
    scale, softcap = logit_transform(model)
    out = []
    for start in range(0, rows.shape[0], chunk_size):
        chunk, chunk_targets = rows[start : start + chunk_size], targets[start : start + chunk_size]
        if torch.is_grad_enabled() and rows.shape[0] > chunk_size:
            out.append(
                checkpoint(_rows_logps, lm_head, chunk, chunk_targets, scale, softcap, use_reentrant=False)
            )
        else:
            out.append(_rows_logps(lm_head, chunk, chunk_targets, scale, softcap))
    if not out:
        return rows.new_zeros((0,), dtype=torch.float32)
    return torch.cat(out)  # (N,)


def decoder_hidden_states(model, input_ids: torch.Tensor, attention_mask, **forward_kwargs) -> torch.Tensor:
    """Final hidden states of the model's decoder (after its last norm), without the LM head.

    Shape: input_ids (B, T), attention_mask (B, T) or 4D or BlockMask -> (B, T, H).
    """
    decoder = _decoder(model)
    forward_kwargs.setdefault("use_cache", False)
    return decoder(input_ids=input_ids, attention_mask=attention_mask, **forward_kwargs).last_hidden_state


def span_token_logps(
    model,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    score_mask: torch.Tensor,
    *,
    chunk_size: int = DEFAULT_CHUNK_SIZE,
    **forward_kwargs,
) -> torch.Tensor:
    """Per-token log-probs at the scored positions, zero elsewhere; never builds the (B, T, V) logits.

    Equal, on `score_mask`, to `localdpo.forward.pairs.sequence_token_logps` (`out[b, t] = log p(x_t | x_<t)`);
    position 0 has no predictor and is 0 even when marked.

    Shape: input_ids (B, T), attention_mask (B, T), score_mask (B, T) bool -> (B, T) float32.
    """
    if score_mask.shape != input_ids.shape:
        raise ValueError(
            f"score_mask {tuple(score_mask.shape)} and input_ids {tuple(input_ids.shape)} differ"
        )
    hidden = decoder_hidden_states(model, input_ids, attention_mask, **forward_kwargs)  # (B, T, H)
    batch_idx, pos = score_mask[:, 1:].bool().nonzero(as_tuple=True)  # (N,), (N,): token pos+1 is scored
    rows = hidden[batch_idx, pos]  # (N, H)
    targets = input_ids[batch_idx, pos + 1]  # (N,)
    logps = head_token_logps(model, rows, targets, chunk_size=chunk_size)  # (N,)
    out = torch.zeros(input_ids.shape, dtype=torch.float32, device=input_ids.device)  # (B, T)
    return out.index_put((batch_idx, pos + 1), logps)
