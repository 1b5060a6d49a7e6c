"""The review view of a steer: each side's assistant tokens with the ones the trainer scores marked."""

from __future__ import annotations

from typing import Any

from localdpo.steers import Steer
from localdpo.studio.text import token_pieces
from localdpo.tokenization import SpanMode, tokenize_steer


def steer_view(steer: Steer, tokenizer, span_mode: SpanMode | str) -> dict[str, Any]:
    """Both sides' assistant tokens as `[text, scored]` pairs and the token counts, from `tokenize_steer`.

    A steer that does not tokenize (e.g. both sides give the same ids) gets `error` instead of tokens.
    """
    try:
        tokenized = tokenize_steer(steer, tokenizer, span_mode=span_mode)
    except ValueError as error:
        return {"error": str(error)}
    view: dict[str, Any] = {"prompt_tokens": tokenized.chosen_assistant_start}
    for side in ("chosen", "rejected"):
        ids = getattr(tokenized, f"{side}_ids")
        mask = getattr(tokenized, f"{side}_mask")
        start = min(getattr(tokenized, f"{side}_assistant_start"), tokenized.divergence)
        # (T - start,): the assistant tokens (and EOS, shown as its special token) with their scored flags
        pieces = token_pieces(tokenizer, ids[start:].tolist(), skip_special_tokens=False)
        view[side] = {
            "tokens": [[piece, bool(scored)] for piece, scored in zip(pieces, mask[start:].tolist())],
            "length": int(ids.numel()),
            "scored": int(mask.sum()),
        }
    return view
