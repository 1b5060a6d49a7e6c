"""Tokenize steers and find the scored token spans.

Spans are found on token ids, never on strings: byte-level BPE merges across the prefix/continuation
boundary (SmolLM2: prefix `"2. "` + chosen `"High"` tokenizes as `"2", ".", " High"`), so the span starts at
the first token where the two full sequences differ.

Truncation policy: a side longer than `max_length` is cut at `max_length` only when every cut token lies
after the side's last scored token (lossless: under causal attention later tokens never change the scored
log-probs, e.g. the rejected run-on beyond a divergent span). If a scored token would be cut the steer is
too long: `SteerTooLongError`, or a counted skip in `tokenize_steers(..., on_too_long="skip")`. Prompts are
never cut.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import Enum

import torch

from localdpo.steers.steer import Steer


class SpanMode(str, Enum):
    """Which tokens of each side are scored."""

    DIVERGENT = "divergent"
    """The edit itself: from the first differing token to where the correction rejoins the original."""
    TO_END = "to_end"
    """From the first differing token to the end of each side."""
    COMPLETION = "completion"
    """The whole assistant output (prefix + continuation): what standard DPO scores."""


SPAN_RULE_VERSION = "localdpo-span-v2"
"""Changes whenever `divergent_span` can give other spans for the same ids (v2: one agreeing token never
ends a span), so caches keyed on spans (the TRL dataset map) miss."""

MIN_REJOIN_TOKENS = 2
"""Agreeing tokens that end chosen and reappear in rejected needed to take them as a rejoin on their own
(a rejoin may then empty one span); one agreeing token is taken only where both spans stay non-empty."""


class SteerTooLongError(ValueError):
    """A steer's scored tokens do not fit in `max_length`."""


def _find_first(haystack: Sequence[int], needle: Sequence[int]) -> int:
    """Index of the first occurrence of `needle` in `haystack`, or -1 (token-aligned byte search)."""
    if not needle:
        return 0
    hay = b"".join(int(t).to_bytes(4, "little", signed=True) for t in haystack)
    pin = b"".join(int(t).to_bytes(4, "little", signed=True) for t in needle)
    start = hay.find(pin)
    while start != -1 and start % 4:
        start = hay.find(pin, start + 1)
    return -1 if start == -1 else start // 4


def divergent_span(
    chosen_ids: Sequence[int] | torch.Tensor,
    rejected_ids: Sequence[int] | torch.Tensor,
    *,
    resync: bool = True,
    replaced_end: int | None = None,
) -> tuple[int, int, int, int]:
    """Half-open spans `(chosen_start, chosen_end, rejected_start, rejected_end)` of the edit.

    The rule in one sentence: both spans start at the first differing token, and the correction rejoins the
    original where the longest run of tokens that ends chosen reappears in rejected's tail, provided that
    run is at least two tokens long, or is one token that leaves neither span empty; otherwise both spans
    run to their ends.

    In steps: p is the length of the common prefix. With `resync`, the longest suffix S of chosen's tail
    `chosen[p:]` that also occurs in rejected's tail `rejected[p:]` is the rejoin: the chosen span ends where
    S begins, the rejected span where S first occurs (at p + j), and what rejected wrote after S is not part
    of the steer. A rejoin of two or more tokens may leave one span empty (a true insertion or deletion). A
    single agreeing token is weak evidence (digits and sub-word pieces coincide by chance), so it is taken
    only at an occurrence that leaves both spans non-empty (the first such), never as an insertion or a
    deletion. Without a rejoin, or with `resync=False` (span mode `to_end`), each span runs to its side's end.

    `replaced_end` is where the mistake ends in rejected when its maker knew it (`Steer.replaces` > 0, as a
    token index): the rejected span is then `[p, max(replaced_end, p + 1))` (at least the token rejected wrote
    where chosen differs), and chosen rejoins only with a suffix that rejected holds exactly there; the rest of
    rejected is the model's run-on.

    Examples (one token per digit, as SmolLM2 splits them):
    - chosen `[a b X s t]`, rejected `[a b Y Z s t u v]` -> `(2, 3, 2, 4)`: `[X]` against `[Y Z]`.
    - insertion: chosen `[very big dog]`, rejected `[big dog runs fast]` -> `(0, 1, 0, 0)`: `[very]` alone.
    - `217` against `275 - 2`: the tail `1 7` shares only `7` with `7 5 - 2`, and at its one occurrence
      it would empty the rejected span, so no rejoin: `(1, 3, 1, 6)`, `1 7` against `7 5 - 2`.
    - `1040` against `1000. This`: `0` occurs in the tail `0 0 .` twice; the first occurrence would empty
      the rejected span, the second does not: `(2, 3, 2, 3)`, `4` against `0`.
    """
    chosen = chosen_ids.tolist() if isinstance(chosen_ids, torch.Tensor) else list(chosen_ids)
    rejected = rejected_ids.tolist() if isinstance(rejected_ids, torch.Tensor) else list(rejected_ids)
    if not all(isinstance(t, int) for t in (*chosen, *rejected)):
        # any hashable tokens (e.g. strings in examples): intern them as small ints
        interned: dict = {}
        chosen = [interned.setdefault(t, len(interned)) for t in chosen]
        rejected = [interned.setdefault(t, len(interned)) for t in rejected]
    if chosen == rejected:
        raise ValueError("chosen and rejected token ids are identical: there is no divergent span")
    p = 0
    limit = min(len(chosen), len(rejected))
    while p < limit and chosen[p] == rejected[p]:
        p += 1
    chosen_tail, rejected_tail = chosen[p:], rejected[p:]
    to_end = (p, len(chosen), p, len(rejected))
    if not resync or not chosen_tail or not rejected_tail:
        return to_end
    if replaced_end is not None:
        return _anchored_span(chosen, rejected, p, replaced_end)
    # If a suffix of length k occurs in rejected's tail, so does every shorter one: binary search on k.
    low, high = 0, len(chosen_tail)
    while low < high:
        mid = (low + high + 1) // 2
        if _find_first(rejected_tail, chosen_tail[-mid:]) >= 0:
            low = mid
        else:
            high = mid - 1
    if low >= MIN_REJOIN_TOKENS:
        return p, len(chosen) - low, p, p + _find_first(rejected_tail, chosen_tail[-low:])
    offset = len(chosen_tail) - 1
    if low == 1 and 0 < offset < len(rejected_tail) and rejected_tail[offset] == chosen_tail[-1]:
        # one agreeing token, at the same offset in both tails: a like-for-like substitution
        return p, len(chosen) - 1, p, p + offset
    return to_end


def _anchored_span(
    chosen: list[int], rejected: list[int], p: int, replaced_end: int
) -> tuple[int, int, int, int]:
    """`divergent_span` when the mistake's end in rejected is known: the longest suffix of chosen's tail
    that rejected holds right at the rejected span's end is the rejoin (one token only if chosen keeps one)."""
    rejected_end = min(len(rejected), max(replaced_end, p + 1))
    rejoin = 0
    for length in range(len(chosen) - p, 0, -1):
        if rejected[rejected_end : rejected_end + length] == chosen[len(chosen) - length :]:
            rejoin = length
            break
    if rejoin == len(chosen) - p and rejoin < MIN_REJOIN_TOKENS:
        rejoin = 0  # one agreeing token never empties a span
    return p, len(chosen) - rejoin, p, rejected_end


def render_prompt(prompt: str | list[dict[str, str]], tokenizer) -> tuple[str, bool]:
    """The prompt as text, and whether it went through the chat template (then it holds its special tokens).

    A message list is rendered with `add_generation_prompt=True`, so the assistant text follows directly.
    """
    if isinstance(prompt, str):
        return prompt, False
    if prompt and prompt[-1].get("role") == "assistant":
        raise ValueError("the prompt's last message is an assistant turn: put that text in `prefix` instead")
    if getattr(tokenizer, "chat_template", None) is None:
        raise ValueError("the prompt is a message list but the tokenizer has no chat template")
    text = tokenizer.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
    return text, True


@dataclass(frozen=True)
class TokenizedSteer:
    """Both full sides of a steer as token ids, with the scored tokens marked."""

    chosen_ids: torch.Tensor
    """(Tc,) int64: prompt + prefix + chosen (+ EOS when `chosen_complete`)."""
    rejected_ids: torch.Tensor
    """(Tr,) int64: prompt + prefix + rejected."""
    chosen_mask: torch.Tensor
    """(Tc,) bool: True on scored chosen tokens."""
    rejected_mask: torch.Tensor
    """(Tr,) bool: True on scored rejected tokens."""
    chosen_assistant_start: int
    """Index of the first chosen token holding assistant text (the completion region starts here)."""
    rejected_assistant_start: int
    divergence: int
    """Index of the first token where the two sides differ."""
    span_mode: SpanMode
    steer_id: str | None = None
    truncated: dict[str, int] = field(default_factory=dict)
    """Unscored tail tokens cut from each side to fit `max_length` ({} when nothing was cut)."""

    @property
    def chosen_span(self) -> tuple[int, int]:
        return _mask_range(self.chosen_mask)

    @property
    def rejected_span(self) -> tuple[int, int]:
        return _mask_range(self.rejected_mask)


def _mask_range(mask: torch.Tensor) -> tuple[int, int]:
    positions = mask.nonzero().flatten()
    if positions.numel() == 0:
        return 0, 0
    return int(positions[0]), int(positions[-1]) + 1


def tokenize_side(
    tokenizer, prompt_text: str, is_chat: bool, assistant_text: str, add_eos: bool, mark: int | None = None
) -> tuple[list[int], int, int | None]:
    """Token ids of prompt + assistant text (+ EOS), the index of the first token holding assistant text, and
    (for a character offset `mark` into the assistant text) the index of the first token that starts at or
    after it (a token holding characters on both sides of `mark` lies before it)."""
    encoding = tokenizer(
        prompt_text + assistant_text,
        add_special_tokens=not is_chat,
        return_offsets_mapping=True,
    )
    ids = list(encoding["input_ids"])
    offsets = encoding["offset_mapping"]
    boundary = len(prompt_text)
    assistant_start = next((i for i, (_, end) in enumerate(offsets) if end > boundary), len(ids))
    mark_index = None
    if mark is not None:
        mark_index = next((i for i, (start, _) in enumerate(offsets) if start >= boundary + mark), len(ids))
    if add_eos:
        if tokenizer.eos_token_id is None:
            raise ValueError(
                "chosen_complete needs an end-of-turn token but the tokenizer has no eos_token_id"
            )
        ids.append(int(tokenizer.eos_token_id))
    return ids, assistant_start, mark_index


def _span_range(
    span_mode: SpanMode, side_length: int, assistant_start: int, div_start: int, div_end: int, p: int
) -> tuple[int, int]:
    if span_mode is SpanMode.DIVERGENT:
        return div_start, div_end
    if span_mode is SpanMode.TO_END:
        return p, side_length
    if span_mode is SpanMode.COMPLETION:
        return min(assistant_start, p), side_length
    raise ValueError(f"unknown span mode {span_mode!r}")


def _fit(
    ids: list[int], span: tuple[int, int], max_length: int | None, side: str, steer_id: str | None
) -> tuple[list[int], int]:
    if max_length is None or len(ids) <= max_length:
        return ids, 0
    if span[1] > max_length:
        raise SteerTooLongError(
            f"steer {steer_id!r}: the scored {side} tokens end at {span[1]} > max_length={max_length} "
            f"({side} side has {len(ids)} tokens); raise max_length or shorten the prompt"
        )
    return ids[:max_length], len(ids) - max_length


def tokenize_steer(
    steer: Steer,
    tokenizer,
    *,
    max_length: int | None = None,
    span_mode: SpanMode | str = SpanMode.DIVERGENT,
) -> TokenizedSteer:
    """Token ids of both full sides of `steer` and the masks of their scored tokens.

    Each side is `render_prompt(prompt) + prefix + continuation`, tokenized whole, so BPE merges at the
    boundaries are the ones the model sees. EOS is appended to chosen only when `chosen_complete` (and to
    rejected only for whole-answer rows with `rejected_complete`).
    """
    span_mode = SpanMode(span_mode)
    prompt_text, is_chat = render_prompt(steer.prompt, tokenizer)
    chosen_ids, chosen_start, _ = tokenize_side(
        tokenizer, prompt_text, is_chat, steer.prefix + steer.chosen, steer.chosen_complete
    )
    # an inserted item (nothing replaced) has no extent in rejected to anchor on: the rule decides
    mark = len(steer.prefix) + steer.replaces if steer.replaces else None
    rejected_ids, rejected_start, replaced_end = tokenize_side(
        tokenizer, prompt_text, is_chat, steer.prefix + steer.rejected, steer.rejected_complete, mark
    )
    if chosen_ids == rejected_ids:
        raise ValueError(f"steer {steer.id!r}: chosen and rejected tokenize to the same ids")
    c_start, c_end, r_start, r_end = divergent_span(
        chosen_ids, rejected_ids, resync=True, replaced_end=replaced_end
    )
    p = c_start
    chosen_range = _span_range(span_mode, len(chosen_ids), chosen_start, c_start, c_end, p)
    rejected_range = _span_range(span_mode, len(rejected_ids), rejected_start, r_start, r_end, p)
    chosen_ids, chosen_cut = _fit(chosen_ids, chosen_range, max_length, "chosen", steer.id)
    rejected_ids, rejected_cut = _fit(rejected_ids, rejected_range, max_length, "rejected", steer.id)
    chosen_mask = torch.zeros(len(chosen_ids), dtype=torch.bool)
    chosen_mask[chosen_range[0] : chosen_range[1]] = True
    rejected_mask = torch.zeros(len(rejected_ids), dtype=torch.bool)
    rejected_mask[rejected_range[0] : rejected_range[1]] = True
    truncated = {k: v for k, v in (("chosen", chosen_cut), ("rejected", rejected_cut)) if v}
    return TokenizedSteer(
        chosen_ids=torch.tensor(chosen_ids, dtype=torch.long),
        rejected_ids=torch.tensor(rejected_ids, dtype=torch.long),
        chosen_mask=chosen_mask,
        rejected_mask=rejected_mask,
        chosen_assistant_start=chosen_start,
        rejected_assistant_start=rejected_start,
        divergence=p,
        span_mode=span_mode,
        steer_id=steer.id,
        truncated=truncated,
    )


@dataclass
class TokenizeReport:
    """Steers tokenized and steers skipped as too long (with their ids and reasons)."""

    tokenized: int = 0
    skipped: list[tuple[str | None, str]] = field(default_factory=list)

    def summary(self) -> str:
        return f"tokenized {self.tokenized} steers, skipped {len(self.skipped)} too long" + "".join(
            f"\n  {steer_id}: {reason}" for steer_id, reason in self.skipped[:20]
        )


def tokenize_steers(
    steers: Sequence[Steer],
    tokenizer,
    *,
    max_length: int | None = None,
    span_mode: SpanMode | str = SpanMode.DIVERGENT,
    on_too_long: str = "error",
) -> tuple[list[TokenizedSteer], TokenizeReport]:
    """`tokenize_steer` over a list; `on_too_long="skip"` skips over-long steers and reports each one."""
    if on_too_long not in ("error", "skip"):
        raise ValueError(f"on_too_long must be 'error' or 'skip', got {on_too_long!r}")
    report = TokenizeReport()
    out: list[TokenizedSteer] = []
    for steer in steers:
        try:
            out.append(tokenize_steer(steer, tokenizer, max_length=max_length, span_mode=span_mode))
        except SteerTooLongError as error:
            if on_too_long == "error":
                raise
            report.skipped.append((steer.id, str(error)))
    report.tokenized = len(out)
    if report.skipped:
        warnings.warn(report.summary(), stacklevel=2)
    return out, report
