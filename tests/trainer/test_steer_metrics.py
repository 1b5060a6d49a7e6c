"""Metrics at the steer itself: recurrence, uptake and continuation accuracy, on a tiny model whose greedy
tokens are computed here by hand (one row, no cache, argmax), and the items' alignment across evaluations."""

import pytest
import torch

from localdpo.generation import render_chat
from localdpo.models.loading import tiny_model
from localdpo.steers.steer import Steer, load_steers
from localdpo.steers.tokenization import SpanMode, TokenizedSteer, tokenize_steer
from localdpo.tasks import get_task, task_prompt_of
from localdpo.trainer import Trainer
from localdpo.trainer.steer_metrics import (
    aggregate_steer_items,
    continuation_items,
    edit_spans,
    steer_items,
    steer_probe,
    steer_probes,
)

from .conftest import make_steers, tiny_config

TINY_HELDOUT = "localdpo/compare/presets/tiny_steers_heldout.jsonl"


@pytest.fixture(scope="module")
def tiny(smol_tokenizer):
    """The tiny model with weights scaled up so its greedy tokens depend on the context (as in
    tests/test_generation.py: at the default init every continuation is the same run of newlines)."""
    model, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.mul_(40)
    return model.eval(), tokenizer


def _greedy(model, ids: list[int], n: int, eos: int | None = None) -> list[int]:
    """The greedy tokens after `ids` by hand: one row, no cache, up to `n` tokens or the first `eos` (kept)."""
    out = list(ids)
    with torch.no_grad():
        for _ in range(n):
            out.append(int(model(input_ids=torch.tensor([out])).logits[0, -1].argmax()))
            if out[-1] == eos:
                break
    return out[len(ids) :]


def _hand_steer(context: list[int], chosen: list[int], rejected: list[int], spans: tuple[int, int]):
    """A tokenized steer built from ids: `context` + each side, the first `spans` tokens of each side scored."""

    def mask(side: list[int], length: int) -> torch.Tensor:
        m = torch.zeros(len(context) + len(side), dtype=torch.bool)
        m[len(context) : len(context) + length] = True
        return m

    return TokenizedSteer(
        chosen_ids=torch.tensor(context + chosen),
        rejected_ids=torch.tensor(context + rejected),
        chosen_mask=mask(chosen, spans[0]),
        rejected_mask=mask(rejected, spans[1]),
        chosen_assistant_start=len(context),
        rejected_assistant_start=len(context),
        divergence=len(context),
        span_mode=SpanMode.DIVERGENT,
    )


def test_recurrence_and_uptake_are_what_the_model_writes_at_the_steer(tiny):
    """From the same prompt + prefix the model writes g = g0 g1 g2 ... greedily. Spans, token-exact:
    A rejects g0 g1 g2 (recurrence 1), B's chosen is g0 g1 (uptake 1), C rejects g0 g1 w with w != g2 (a
    span matched only in part is no recurrence), D inserts g0 g1 before the rest (an empty rejected span: D is
    not a recurrence item). Items keep the steers' order, each over its own fixed set."""
    model, tokenizer = tiny
    context = tokenizer(render_chat(tokenizer, "What is 2 + 2?") + "The answer", add_special_tokens=False)
    context = context["input_ids"]
    g = _greedy(model, context, 4)
    other = next(t for t in range(100, 200) if t not in g)  # a token the model does not write here
    steers = [
        _hand_steer(context, [other], g[:3] + [other], (1, 3)),  # A
        _hand_steer(context, g[:2], [other, other], (2, 2)),  # B
        _hand_steer(context, [other], g[:2] + [other], (1, 3)),  # C
        _hand_steer(context, g[:2] + [other], [other], (2, 0)),  # D: pure insertion
    ]
    probes = steer_probes(steers, tokenizer)
    assert probes[0].context == tuple(context) and probes[0].rejected_span == tuple(g[:3])
    assert probes[3].rejected_span == () and probes[3].chosen_span == tuple(g[:2])
    items = steer_items(model, tokenizer, probes, batch_size=3)
    assert items["recurrence"].tolist() == [1.0, 0.0, 0.0]  # A, B, C
    assert items["uptake"].tolist() == [0.0, 1.0, 0.0, 1.0]  # A, B, C, D
    assert items["recurrence"].dtype == torch.float64
    assert "continuation_accuracy" not in items  # no task steer: left out, never NaN
    assert aggregate_steer_items(items) == {"eval/recurrence": pytest.approx(1 / 3), "eval/uptake": 0.5}
    # one steer at a time, or all in one batch: the same items
    assert steer_items(model, tokenizer, probes, batch_size=1).keys() == items.keys()
    for key, values in steer_items(model, tokenizer, probes, batch_size=1).items():
        assert values.tolist() == items[key].tolist()


def test_the_spans_are_the_tokenizers_edit_in_every_span_mode(smol_tokenizer):
    """Recurrence and uptake read the divergent span (the edit) whatever `eval.span_mode` scores: the masks
    of a `divergent` tokenization, from `divergence` on, in all three modes."""
    steers = load_steers(TINY_HELDOUT) + make_steers(4)
    for steer in steers:
        divergent = tokenize_steer(steer, smol_tokenizer)
        want = (
            divergent.chosen_ids[divergent.chosen_mask].tolist(),
            divergent.rejected_ids[divergent.rejected_mask].tolist(),
        )
        for mode in SpanMode:
            example = tokenize_steer(steer, smol_tokenizer, span_mode=mode)
            probe = steer_probe(example, eos_token_id=smol_tokenizer.eos_token_id)
            assert (list(probe.chosen_span), list(probe.rejected_span)) == want, (steer.id, mode)
            assert list(probe.context) == divergent.chosen_ids[: divergent.divergence].tolist()
            (chosen_start, _), (rejected_start, _) = edit_spans(example)
            assert chosen_start == rejected_start == divergent.divergence
    # e.g. the tiny preset's first held-out steer: "199 + 773 = " then "972" against "199 + 7"
    probe = steer_probe(tokenize_steer(steers[0], smol_tokenizer), eos_token_id=smol_tokenizer.eos_token_id)
    assert smol_tokenizer.decode(list(probe.chosen_span)) == "972"


def _addition_steer(prefix: str, chosen: str, *, complete: bool = False, task: bool = True, i: int = 0):
    prompt = get_task("addition").build(12, "+", 34)
    meta = {"task": "addition", "prompt_id": prompt.id} if task else {}
    return Steer(
        prompt=[{"role": "user", "content": prompt.text}],
        prefix=prefix,
        rejected="47 apples",
        chosen=chosen,
        chosen_complete=complete,
        id=f"s{i}",
        meta=meta,
    )


def test_continuation_accuracy_judges_prefix_chosen_and_the_greedy_continuation(tiny):
    """12 + 34 = 46. S0: chosen "46", partial: the answer is "12 + 34 = 46" + the model's greedy continuation
    (by hand, to its end-of-turn or the task's 48 answer tokens, those of "12 + 34 = 46" included), judged by
    the addition checker. S1: chosen "46" ends the answer: right as it stands. S2: chosen "45": wrong whatever
    follows. S3 has no task: no item. With a budget the answer so far already fills, S0 is judged cut off
    inside its result (not right); S1 is finished."""
    model, tokenizer = tiny
    steers = [
        _addition_steer("12 + 34 = ", "46", i=0),
        _addition_steer("12 + 34 = ", "46", complete=True, i=1),
        _addition_steer("So 12 + 34 = ", "45", i=2),
        _addition_steer("12 + 34 = ", "46", task=False, i=3),
    ]
    examples = [tokenize_steer(s, tokenizer) for s in steers]
    probes = steer_probes(examples, tokenizer, [task_prompt_of(s.meta) for s in steers])
    assert [p.ends_answer for p in probes] == [False, True, False, False]
    task, prompt = get_task("addition"), task_prompt_of(steers[0].meta)
    answer_tokens = len(examples[0].chosen_ids) - examples[0].chosen_assistant_start  # "12 + 34 = 46"
    assert 0 < answer_tokens < 12
    budget = task.max_new_tokens - answer_tokens
    written = _greedy(model, examples[0].chosen_ids.tolist(), budget, tokenizer.eos_token_id)
    ended = written[-1:] == [tokenizer.eos_token_id]
    answer = "12 + 34 = 46" + tokenizer.decode(written, skip_special_tokens=True)
    expected = float(task.check(prompt, answer, complete=ended).verdict.value == "correct")
    items = continuation_items(model, tokenizer, probes, batch_size=2)
    assert items["continuation_accuracy"].tolist() == [expected, 1.0, 0.0]
    short = continuation_items(model, tokenizer, probes, batch_size=2, max_new_tokens=answer_tokens)
    assert short["continuation_accuracy"].tolist() == [0.0, 1.0, 0.0]
    # with no task steer there is no item vector at all
    assert continuation_items(model, tokenizer, probes[3:], batch_size=2) == {}


def test_a_run_has_the_steer_metrics_at_its_first_and_final_evaluation_on_the_same_items(tmp_path, smol_tokenizer):
    """Step 0 (the `base` row of a comparison) and the final evaluation: `eval/recurrence`, `eval/uptake`,
    `eval/continuation_accuracy` logged, and item vectors of one length per metric (the held-out steers with a
    non-empty rejected span, chosen span, task); not at the evaluation in between (step 1 of 2);
    `eval.steer_metrics=false` turns them off."""
    model, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    held = load_steers(TINY_HELDOUT)
    keys = ("recurrence", "uptake", "continuation_accuracy")
    runs = {}
    for flag in ("true", "false"):
        trainer = Trainer(
            tiny_config(
                tmp_path / flag,
                "eval.at_start=true",
                "eval.every=1",
                f"eval.steer_metrics={flag}",
                "train.max_steps=2",
            ),
            model=model,
            tokenizer=tokenizer,
            train_steers=make_steers(4),
            eval_steers=held,
        )
        result = trainer.run()
        runs[flag] = (trainer, result)
    trainer, result = runs["true"]
    probes = trainer.eval_probes
    assert len(probes) == len(held) and all(p.task_prompt is not None for p in probes)
    sizes = {
        "recurrence": sum(bool(p.rejected_span) for p in probes),
        "uptake": sum(bool(p.chosen_span) for p in probes),
        "continuation_accuracy": len(held),
    }
    for items in (trainer.initial_items, trainer.final_items):
        assert {k: len(items[k]) for k in keys} == sizes
        assert all(set(items[k].tolist()) <= {0.0, 1.0} for k in keys)
    assert [evaluation["step"] for evaluation in result.history] == [0, 1, 2]
    first, between, final = result.history
    for evaluation in (first, final):
        assert all(0.0 <= evaluation[f"eval/{k}"] <= 1.0 for k in keys)
    assert not any(f"eval/{k}" in between for k in keys)
    trainer, result = runs["false"]
    assert trainer.eval_probes == [] and not set(keys) & set(trainer.final_items)
    assert not any(f"eval/{k}" in result.final for k in keys)
