"""A steer file as the trainer will see it: both sides with their scored tokens marked, and the rows it drops.

`preview_steers` loads a file the way training does (bad rows reported, not fatal) and tokenizes each steer
with `localdpo.steers.tokenization.tokenize_steer`, so the marked tokens are exactly the ones the loss reads.
`render_text` draws it for a terminal (ANSI colour) or a pipe (bracket markers), `render_html` as a page,
`steer_view` as the studio's review shows it; all three read the scored tokens from `side_tokens`.
"""

from __future__ import annotations

import html
import itertools
import os
import warnings
from dataclasses import dataclass, field
from typing import Any

from localdpo.steers.steer import LoadReport, Steer, load_steers
from localdpo.steers.text import token_pieces
from localdpo.steers.tokenization import SpanMode, TokenizedSteer, tokenize_steer

SIDES = ("chosen", "rejected")

# ANSI: scored chosen tokens on green, scored rejected tokens on red, labels dim.
_ANSI = {"chosen": "\033[30;42m", "rejected": "\033[30;41m", "dim": "\033[2m", "reset": "\033[0m"}
_BRACKETS = {"chosen": ("[+", "+]"), "rejected": ("[-", "-]")}


@dataclass(frozen=True)
class TokenRun:
    """A run of consecutive tokens of one side that are all scored or all not."""

    text: str
    scored: bool


@dataclass(frozen=True)
class SteerPreview:
    """One steer of the file: its tokenization, or why the trainer refuses it."""

    steer: Steer
    tokenized: TokenizedSteer | None
    refused: str | None = None
    """Why `tokenize_steer` refused the steer (too long for max_length, sides tokenize the same, ...)."""


@dataclass
class Preview:
    """Every steer of a file with its scored tokens, and every row that would be skipped or refused."""

    path: str
    span_mode: SpanMode
    max_length: int | None
    steers: list[SteerPreview] = field(default_factory=list)
    load_report: LoadReport | None = None

    @property
    def refused(self) -> list[SteerPreview]:
        return [item for item in self.steers if item.refused is not None]


def preview_steers(
    path: str | os.PathLike,
    tokenizer,
    *,
    span_mode: SpanMode | str = SpanMode.DIVERGENT,
    max_length: int | None = None,
) -> Preview:
    """The steers of `path` tokenized as training will tokenize them; bad rows and refusals listed, not raised."""
    with warnings.catch_warnings():
        # the skipped rows are part of the preview itself: not repeated as a warning
        warnings.simplefilter("ignore", UserWarning)
        steers, report = load_steers(path, skip_invalid=True, return_report=True)
    preview = Preview(
        path=str(path), span_mode=SpanMode(span_mode), max_length=max_length, load_report=report
    )
    for steer in steers:
        try:
            tokenized = tokenize_steer(steer, tokenizer, max_length=max_length, span_mode=span_mode)
        except ValueError as error:  # SteerTooLongError, identical token ids, no chat template
            preview.steers.append(SteerPreview(steer, None, str(error)))
            continue
        preview.steers.append(SteerPreview(steer, tokenized))
    return preview


def side_tokens(tokenized: TokenizedSteer, side: str, tokenizer) -> list[tuple[str, bool]]:
    """The assistant part of one side, one `(text, scored)` per token (EOS shown as its special token).

    The texts are `token_pieces`: they add up to the decoded text, a character split over several tokens
    going to the token that completes it. The part starts at the first assistant token, or at the divergence
    when BPE merged the prompt's last characters into the first differing token (then that token is scored and
    shown whole).
    """
    ids = getattr(tokenized, f"{side}_ids")
    mask = getattr(tokenized, f"{side}_mask")
    start = min(getattr(tokenized, f"{side}_assistant_start"), tokenized.divergence)
    pieces = token_pieces(tokenizer, ids[start:].tolist(), skip_special_tokens=False)  # (T - start,)
    return [(piece, bool(scored)) for piece, scored in zip(pieces, mask[start:].tolist())]


def side_runs(tokenized: TokenizedSteer, side: str, tokenizer) -> list[TokenRun]:
    """`side_tokens` as runs of consecutive tokens that are all scored or all not."""
    return [
        TokenRun("".join(text for text, _ in run), scored)
        for scored, run in itertools.groupby(side_tokens(tokenized, side, tokenizer), key=lambda t: t[1])
    ]


def steer_view(steer: Steer, tokenizer, span_mode: SpanMode | str) -> dict[str, Any]:
    """The studio's review of a steer: both sides' `side_tokens` as `[text, scored]` pairs and the token
    counts, from `tokenize_steer`; a steer that does not tokenize (e.g. both sides give the same ids) gets
    `error` instead of tokens."""
    try:
        tokenized = tokenize_steer(steer, tokenizer, span_mode=span_mode)
    except ValueError as error:
        return {"error": str(error)}
    view: dict[str, Any] = {"prompt_tokens": tokenized.chosen_assistant_start}
    for side in SIDES:
        view[side] = {
            "tokens": [[text, scored] for text, scored in side_tokens(tokenized, side, tokenizer)],
            "length": int(getattr(tokenized, f"{side}_ids").numel()),
            "scored": scored_count(tokenized, side),
        }
    return view


def scored_count(tokenized: TokenizedSteer, side: str) -> int:
    return int(getattr(tokenized, f"{side}_mask").sum())


def _prompt_text(prompt) -> str:
    if isinstance(prompt, str):
        return prompt
    return "\n".join(f"{message['role']}: {message['content']}" for message in prompt)


def _indent(text: str, pad: str) -> str:
    return text.replace("\n", "\n" + pad)


def render_text(preview: Preview, tokenizer, *, color: bool) -> str:
    """The preview as terminal text: scored tokens in colour (`color`) or between `[+ +]` / `[- -]`."""
    dim = (lambda s: f"{_ANSI['dim']}{s}{_ANSI['reset']}") if color else (lambda s: s)
    lines = [
        f"{preview.path}: span mode {preview.span_mode.value}"
        + (f", max_length {preview.max_length}" if preview.max_length else "")
        + ("" if color else "; scored tokens: chosen [+ ... +], rejected [- ... -]")
    ]
    pad = " " * 12
    for item in preview.steers:
        steer = item.steer
        lines.append("")
        lines.append(f"== {steer.id}" + ("   REFUSED: " + item.refused if item.refused else ""))
        lines.append(f"{dim('prompt    ')}  {_indent(_prompt_text(steer.prompt), pad)}")
        lines.append(f"{dim('prefix    ')}  {_indent(repr(steer.prefix), pad)}")
        if item.tokenized is None:
            for side in SIDES:
                lines.append(f"{dim(f'{side:<10}')}  {_indent(repr(getattr(steer, side)), pad)}")
            continue
        for side in SIDES:
            parts = []
            for segment in side_runs(item.tokenized, side, tokenizer):
                if not segment.scored:
                    parts.append(segment.text)
                elif color:
                    parts.append(f"{_ANSI[side]}{segment.text}{_ANSI['reset']}")
                else:
                    opening, closing = _BRACKETS[side]
                    parts.append(f"{opening}{segment.text}{closing}")
            ids = getattr(item.tokenized, f"{side}_ids")
            counts = f"{len(ids)} tokens, {scored_count(item.tokenized, side)} scored"
            cut = item.tokenized.truncated.get(side)
            if cut:
                counts += f", {cut} unscored cut"
            lines.append(f"{dim(f'{side:<10}')}  {_indent(''.join(parts), pad)}")
            lines.append(f"{pad}{dim(f'({counts})')}")
    lines.append("")
    lines.extend(summary_lines(preview))
    return "\n".join(lines) + "\n"


def summary_lines(preview: Preview) -> list[str]:
    """How many steers train, and each row that is skipped (bad row) or refused (tokenization), with why."""
    report = preview.load_report
    skipped = report.skipped if report else []
    refused = preview.refused
    lines = [
        f"{len(preview.steers) - len(refused)} steers will train; "
        f"{len(skipped)} rows skipped as invalid, {len(refused)} steers refused"
    ]
    tokenized = [item for item in preview.steers if item.tokenized is not None]
    empty = {
        side: [item.steer.id for item in tokenized if scored_count(item.tokenized, side) == 0]
        for side in SIDES
    }
    lines.append(
        f"{len(empty['chosen'])} with an empty chosen span (nothing for SFT to learn), "
        f"{len(empty['rejected'])} with an empty rejected span (no negative signal for localized DPO)"
    )
    lines.extend(f"  empty {side} span: {steer_id}" for side in SIDES for steer_id in empty[side][:20])
    lines.extend(f"  skipped: {message}" for _, message in skipped)
    lines.extend(f"  refused: {item.steer.id}: {item.refused}" for item in refused)
    return lines


def render_html(preview: Preview, tokenizer) -> str:
    """The preview as a self-contained HTML page (scored tokens marked green / red)."""
    esc = html.escape
    body = [f"<h1>{esc(preview.path)}</h1>", f"<p>span mode <code>{preview.span_mode.value}</code>"]
    if preview.max_length:
        body[-1] += f", max_length {preview.max_length}"
    body[-1] += "</p>"
    for item in preview.steers:
        steer = item.steer
        body.append(
            f"<section><h2>{esc(str(steer.id))}</h2><table><tr><th>prompt</th><td><pre>"
            f"{esc(_prompt_text(steer.prompt))}</pre></td></tr>"
        )
        body.append(f"<tr><th>prefix</th><td><pre>{esc(steer.prefix)}</pre></td></tr>")
        if item.tokenized is None:
            body.append(f'<tr><th>refused</th><td class="refused">{esc(item.refused or "")}</td></tr>')
            for side in SIDES:
                body.append(f"<tr><th>{side}</th><td><pre>{esc(getattr(steer, side))}</pre></td></tr>")
        else:
            for side in SIDES:
                text = "".join(
                    f'<mark class="{side}">{esc(s.text)}</mark>' if s.scored else esc(s.text)
                    for s in side_runs(item.tokenized, side, tokenizer)
                )
                ids = getattr(item.tokenized, f"{side}_ids")
                counts = f"{len(ids)} tokens, {scored_count(item.tokenized, side)} scored"
                body.append(f"<tr><th>{side}</th><td><pre>{text}</pre><small>{counts}</small></td></tr>")
        body.append("</table></section>")
    body.append("<pre>" + esc("\n".join(summary_lines(preview))) + "</pre>")
    style = (
        "body{font-family:sans-serif;max-width:60em;margin:auto}th{text-align:left;vertical-align:top;"
        "padding-right:1em}pre{white-space:pre-wrap;margin:0}mark.chosen{background:#9be09b}"
        "mark.rejected{background:#f3a0a0}.refused{color:#a00}section{border-top:1px solid #ccc}"
    )
    return (
        f'<!doctype html>\n<html><head><meta charset="utf-8"><title>{esc(preview.path)}</title>'
        f"<style>{style}</style></head><body>\n" + "\n".join(body) + "\n</body></html>\n"
    )
