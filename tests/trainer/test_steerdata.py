"""The run's steers: the seeded held-out split and tokenization in the train and eval span modes."""

import pytest

from localdpo.tokenization import SpanMode
from localdpo.trainer.config import ConfigError
from localdpo.trainer.steerdata import prepare_steers, split_steers

from .conftest import make_steers, tiny_config

STEERS = make_steers(12)


def test_split_is_seeded_disjoint_and_holds_at_least_one():
    train, held = split_steers(STEERS, 0.25, seed=3)
    assert len(train) == 9 and len(held) == 3 and not {s.id for s in train} & {s.id for s in held}
    assert split_steers(STEERS, 0.25, seed=3) == (train, held)
    assert split_steers(STEERS, 0.25, seed=4) != (train, held)
    assert len(split_steers(STEERS[:2], 0.01, seed=0)[1]) == 1
    assert split_steers(STEERS, 0.0, seed=0) == (STEERS, [])


def test_prepare_steers_tokenizes_train_and_eval_in_their_own_span_modes(tmp_path, smol_tokenizer):
    config = tiny_config(tmp_path, "method=dpo", "eval.max_steers=2")
    train, held, reports, task_prompts = prepare_steers(config, smol_tokenizer, STEERS[:4], STEERS[8:])
    assert [e.steer_id for e in train] == ["s0", "s1", "s2", "s3"]
    assert [e.steer_id for e in held] == ["s8", "s9"]  # eval.max_steers
    assert {e.span_mode for e in train} == {SpanMode.COMPLETION} and {e.span_mode for e in held} == {
        SpanMode.DIVERGENT
    }
    assert set(reports) == {"train", "eval"} and task_prompts == [None, None]  # no task in their meta
    with pytest.raises(ValueError, match="tokenized with another span mode than divergent"):
        prepare_steers(tiny_config(tmp_path), smol_tokenizer, train, held)
    with pytest.raises(ConfigError, match="data.train_steers is not set"):
        prepare_steers(config, smol_tokenizer)


def test_held_out_task_prompts_follow_the_examples_by_steer_id(smol_tokenizer):
    """Each held-out example gets the task prompt of its own steer (whatever the order of the examples);
    None where the steer names no task, has no id, or shares its id with another held-out steer; a prompt id
    of no prompt of its task is None with one warning (the run goes on)."""
    from dataclasses import replace

    from localdpo.tasks import get_task
    from localdpo.tokenization import tokenize_steer
    from localdpo.trainer.steerdata import held_out_task_prompts

    addition = get_task("addition")
    prompts = [addition.build(10 + i, "+", 20) for i in range(4)]
    held = [
        replace(STEERS[i], id=f"t{i}", meta={"task": "addition", "prompt_id": prompts[i].id})
        for i in range(4)
    ]
    held += [
        replace(STEERS[4], id=None, meta={"task": "addition", "prompt_id": prompts[0].id}),  # no id
        replace(STEERS[5], id="twice", meta={"task": "addition", "prompt_id": prompts[1].id}),
        replace(STEERS[6], id="twice", meta={"task": "addition", "prompt_id": prompts[2].id}),
        replace(STEERS[7], id="own", meta={"task": "my own task", "prompt_id": "x"}),  # no registered task
    ]
    examples = [tokenize_steer(s, smol_tokenizer) for s in held]
    order = [3, 0, 4, 5, 7, 2]
    got = held_out_task_prompts([examples[i] for i in order], held)
    assert got == [prompts[3], prompts[0], None, None, None, prompts[2]]
    stray = replace(STEERS[8], id="stray", meta={"task": "addition", "prompt_id": "addition/1+x"})
    with pytest.warns(UserWarning, match=r"1 held-out steers name no prompt of their task.*stray"):
        got = held_out_task_prompts([tokenize_steer(stray, smol_tokenizer), examples[1]], [stray, held[1]])
    assert got == [None, prompts[1]]
