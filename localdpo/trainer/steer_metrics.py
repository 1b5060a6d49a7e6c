"""Metrics at the steer itself: what the model writes, greedily, at the point where a person corrected it.

From each held-out steer's shared token prefix (prompt + prefix: the chosen side's ids up to `divergence`,
where the two sides first differ), on token ids, never on text:

- `recurrence`: the generated tokens start with every token of the rejected span: the model still writes
  the mistake that was corrected (lower is better). Over the steers with a non-empty rejected span: a pure
  insertion rejects nothing that could recur.
- `uptake`: the generated tokens start with every token of the chosen span: the model now writes the
  correction itself. Over the steers with a non-empty chosen span.
- `continuation_accuracy` (task steers only): from prompt + prefix + chosen (the whole chosen side as
  tokenized, which runs to the end of the chosen span or past it), greedy to the end of the answer (EOS, or
  the task's answer budget `max_new_tokens`, counted from the answer's first token as for a fresh answer);
  1 when the task's checker judges prefix + chosen + continuation right. A steer whose correction ends the
  answer (`chosen_complete`: its chosen side ends with EOS) is judged as it stands.

The spans are `tokenize_steer`'s divergent spans (the edit: from the first differing token to where the
correction rejoins the original), each read from `divergence` to its end. Recurrence and uptake are decided
once max(len(chosen span), len(rejected span)) tokens are written, or as soon as a row has left both spans,
and decoding stops there: no margin, since later tokens cannot change either answer. No token ends those
rows early (an end-of-turn token is compared like any other), so a span ending with EOS is matched exactly.
Neither metric needs a checker, so both work on a user's own steers.

Each metric is a 0/1 vector over a fixed set of held-out steers (every run evaluates the same steers, so
methods compare item by item); a metric whose set is empty is left out, never NaN (`compare.stats` refuses
NaN). Decoding is `localdpo.generation.greedy_token_continuations`, the package's one greedy decoder.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from localdpo.generation import eos_token_ids, greedy_token_continuations, pad_token_id
from localdpo.steers.tokenization import SpanMode, TokenizedSteer, divergent_span
from localdpo.tasks import TaskPrompt, Verdict, get_task

STEER_METRICS = ("recurrence", "uptake", "continuation_accuracy")
"""Item keys of `steer_items`; `eval/<key>` in W&B."""


@dataclass(frozen=True)
class SteerProbe:
    """The token ids the steer metrics read of one held-out steer."""

    context: tuple[int, ...]
    """Prompt + prefix: the chosen side's ids before `divergence` (the tokens both sides share)."""
    chosen_span: tuple[int, ...]
    """The chosen side's ids from `divergence` to the end of its span (empty for a pure deletion)."""
    rejected_span: tuple[int, ...]
    """The rejected side's ids from `divergence` to the end of its span (empty for a pure insertion)."""
    chosen_side: tuple[int, ...]
    """Prompt + prefix + chosen as the model sees it (`TokenizedSteer.chosen_ids`)."""
    answer_start: int
    """Index in `chosen_side` of the first token of assistant text."""
    ends_answer: bool
    """`chosen_side` ends with end-of-turn (`chosen_complete`): the answer is finished, nothing to continue."""
    task_prompt: TaskPrompt | None = None
    """The task prompt the steer was made from (None: no task, no continuation accuracy)."""


def edit_spans(example: TokenizedSteer) -> tuple[tuple[int, int], tuple[int, int]]:
    """Half-open `(start, end)` token ranges of the chosen and the rejected edit (divergent span) of `example`.

    In `divergent` span mode these are its masks (an empty side: the empty range at `divergence`); in the
    other modes, whose masks run to each side's end, `divergent_span` of its ids, which those modes never
    truncate (they score, hence keep, every token to the end), so it is the span `tokenize_steer` found.
    """
    if example.span_mode is SpanMode.DIVERGENT:
        empty = (example.divergence, example.divergence)
        chosen, rejected = (s if s[1] > s[0] else empty for s in (example.chosen_span, example.rejected_span))
        return chosen, rejected
    chosen_start, chosen_end, rejected_start, rejected_end = divergent_span(
        example.chosen_ids, example.rejected_ids
    )
    return (chosen_start, chosen_end), (rejected_start, rejected_end)


def steer_probe(
    example: TokenizedSteer, *, eos_token_id: int | None, task_prompt: TaskPrompt | None = None
) -> SteerProbe:
    """The `SteerProbe` of one tokenized held-out steer (`eos_token_id`: what `chosen_complete` appended)."""
    (_, chosen_end), (_, rejected_end) = edit_spans(example)
    chosen, rejected = example.chosen_ids.tolist(), example.rejected_ids.tolist()
    p = example.divergence
    return SteerProbe(
        context=tuple(chosen[:p]),
        chosen_span=tuple(chosen[p:chosen_end]),
        rejected_span=tuple(rejected[p:rejected_end]),
        chosen_side=tuple(chosen),
        answer_start=example.chosen_assistant_start,
        ends_answer=bool(chosen) and chosen[-1] == eos_token_id and "chosen" not in example.truncated,
        task_prompt=task_prompt,
    )


def steer_probes(
    examples: Sequence[TokenizedSteer],
    tokenizer,
    task_prompts: Sequence[TaskPrompt | None] | None = None,
) -> list[SteerProbe]:
    """`steer_probe` of every held-out example; `task_prompts[i]`: the task prompt of example i, if any."""
    task_prompts = task_prompts if task_prompts is not None else [None] * len(examples)
    if len(task_prompts) != len(examples):
        raise ValueError(f"{len(task_prompts)} task prompts for {len(examples)} held-out steers")
    return [
        steer_probe(example, eos_token_id=tokenizer.eos_token_id, task_prompt=task_prompt)
        for example, task_prompt in zip(examples, task_prompts)
    ]


def starts_with(tokens: Sequence[int], span: Sequence[int]) -> bool:
    """Whether `tokens` begins with every token of `span` (a non-empty span)."""
    return len(tokens) >= len(span) and list(tokens[: len(span)]) == list(span)


def _decided(new: list[int], spans: Sequence[Sequence[int]]) -> bool:
    """Whether `starts_with(new + anything, span)` is already known for every non-empty span."""
    return all(len(new) >= len(span) or new != list(span[: len(new)]) for span in spans if span)


def at_edit_items(
    model, probes: Sequence[SteerProbe], *, batch_size: int, pad_id: int
) -> dict[str, torch.Tensor]:
    """`recurrence` and `uptake` per steer (0/1 float64) over the probes with a non-empty rejected, resp.
    chosen, span, in `probes` order; a key without items is absent. The caller puts the model in eval mode."""
    if not probes:
        return {}
    written = greedy_token_continuations(
        model,
        [probe.context for probe in probes],
        max_new_tokens=max(max(len(p.chosen_span), len(p.rejected_span)) for p in probes),
        eos_ids=set(),
        pad_id=pad_id,
        batch_size=batch_size,
        should_stop=lambda i, new: _decided(new, (probes[i].chosen_span, probes[i].rejected_span)),
    )
    items = {}
    for key, side in (("recurrence", "rejected_span"), ("uptake", "chosen_span")):
        values = [
            starts_with(new, getattr(probe, side))
            for probe, (new, _) in zip(probes, written)
            if getattr(probe, side)
        ]
        if values:
            items[key] = torch.tensor(values, dtype=torch.float64)
    return items


def continuation_items(
    model,
    tokenizer,
    probes: Sequence[SteerProbe],
    *,
    batch_size: int,
    max_new_tokens: int | None = None,
) -> dict[str, torch.Tensor]:
    """`continuation_accuracy` per task steer (0/1 float64, `probes` order, the probes without a task prompt
    left out; absent when there is none).

    The corrected answer gets the budget of a fresh one: `max_new_tokens` tokens of answer in all (None: the
    task's `max_new_tokens`), prefix and chosen included, so a row continues for what is left of it; an answer
    already that long is judged as it stands, cut off. A row also stops as soon as the checker judges a mistake
    in its answer so far (the verdict is decided then, as in `localdpo.tasks.evaluation`). Each task's steers are
    continued together. The caller puts the model in eval mode.
    """
    tasked = [i for i, probe in enumerate(probes) if probe.task_prompt is not None]
    if not tasked:
        return {}
    eos_ids, pad_id = eos_token_ids(model, tokenizer), pad_token_id(tokenizer)

    def answer(probe: SteerProbe, new: list[int]) -> str:
        return tokenizer.decode(list(probe.chosen_side[probe.answer_start :]) + new, skip_special_tokens=True)

    right: dict[int, bool] = {}
    for name in dict.fromkeys(probes[i].task_prompt.task for i in tasked):
        task = get_task(name)
        mine = [i for i in tasked if probes[i].task_prompt.task == name]
        budget = {
            i: (max_new_tokens or task.max_new_tokens) - (len(probes[i].chosen_side) - probes[i].answer_start)
            for i in mine
        }
        todo = [i for i in mine if not probes[i].ends_answer and budget[i] > 0]

        def stop(j: int, new: list[int], todo=todo, task=task, budget=budget) -> bool:
            if new[-1] in eos_ids:  # the end of turn ends the row, as a finished answer
                return False
            probe = probes[todo[j]]
            wrong = task.check(probe.task_prompt, answer(probe, new), complete=False).verdict is Verdict.WRONG
            return wrong or len(new) >= budget[todo[j]]

        written = greedy_token_continuations(
            model,
            [probes[i].chosen_side for i in todo],
            max_new_tokens=max((budget[i] for i in todo), default=0),
            eos_ids=eos_ids,
            pad_id=pad_id,
            batch_size=batch_size,
            should_stop=stop,
        )
        continued = dict(zip(todo, written))
        for i in mine:
            # a finished answer stands as it is; one with no budget left is judged cut off
            new, ended = continued.get(i, ([], probes[i].ends_answer))
            verdict = task.check(probes[i].task_prompt, answer(probes[i], new), complete=ended).verdict
            right[i] = verdict is Verdict.CORRECT
    values = [right[i] for i in tasked]
    return {"continuation_accuracy": torch.tensor(values, dtype=torch.float64)}


@torch.no_grad()
def steer_items(
    model,
    tokenizer,
    probes: Sequence[SteerProbe],
    *,
    batch_size: int,
    max_new_tokens: int | None = None,
) -> dict[str, torch.Tensor]:
    """`recurrence`, `uptake` (`at_edit_items`) and `continuation_accuracy` (`continuation_items`) of `model`
    (in eval mode) on the held-out `probes`: per item 0/1, each (N_metric,) float64."""
    return {
        **at_edit_items(model, probes, batch_size=batch_size, pad_id=pad_token_id(tokenizer)),
        **continuation_items(model, tokenizer, probes, batch_size=batch_size, max_new_tokens=max_new_tokens),
    }


def aggregate_steer_items(items: dict[str, torch.Tensor]) -> dict[str, float]:
    """`eval/recurrence`, `eval/uptake`, `eval/continuation_accuracy`: the share of 1s of each item vector."""
    return {f"eval/{key}": float(items[key].mean()) for key in STEER_METRICS if key in items}
