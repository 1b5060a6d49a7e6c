"""The run's steers: the seeded held-out split and tokenization in the train and eval span modes."""

import pytest

from localdpo.steers.tokenization import SpanMode
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
    train, held, reports, task_prompts, rounds = prepare_steers(
        config, smol_tokenizer, STEERS[:4], STEERS[8:]
    )
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

    from localdpo.steers.tokenization import tokenize_steer
    from localdpo.tasks import get_task
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


def _rounds(tmp_path, sizes: list[int]) -> list:
    """`round-<r>.jsonl` files in `tmp_path` holding `sizes[r - 1]` steers each, consecutive ids."""
    from localdpo.steers.steer import save_steers

    files, start = [], 0
    for r, size in enumerate(sizes, 1):
        files.append(tmp_path / f"round-{r}.jsonl")
        save_steers(STEERS[start : start + size], files[-1])
        start += size
    return files


def test_round_files_train_in_round_order(tmp_path, smol_tokenizer):
    """Round 2 written first in the list of files still trains second: files in order are rounds 1, 2, ..."""
    from localdpo.trainer.steerdata import load_round_steers

    files = _rounds(tmp_path, [3, 2])
    config = tiny_config(tmp_path / "run", f"data.train_files=[{files[0]},{files[1]}]")
    steers = load_round_steers(config.data)
    assert [(s.id, s.round) for s in steers] == [("s0", 1), ("s1", 1), ("s2", 1), ("s3", 2), ("s4", 2)]
    train, _, _, _, rounds = prepare_steers(config, smol_tokenizer, held=STEERS[8:])
    assert rounds == [3, 2] and [e.steer_id for e in train] == ["s0", "s1", "s2", "s3", "s4"]
    directory = tiny_config(tmp_path / "run", f"data.train_steers={tmp_path}")
    assert load_round_steers(directory.data) == steers  # a directory of round-<r>.jsonl files: the same
    plain = tiny_config(tmp_path / "run", f"data.train_steers={files[0]}")
    assert prepare_steers(plain, smol_tokenizer, held=STEERS[8:])[4] == []  # no round: no order


def test_round_files_that_disagree_are_one_line(tmp_path):
    from localdpo.steers.steer import save_steers
    from localdpo.trainer.steerdata import load_round_steers

    files = _rounds(tmp_path, [2, 2])
    files[1].rename(tmp_path / "round-3.jsonl")
    with pytest.raises(
        ConfigError,
        match=r"holds round-1.jsonl, round-2.jsonl, ... with no gap; found round-1.jsonl, round-3",
    ):
        load_round_steers(tiny_config(tmp_path / "run", f"data.train_steers={tmp_path}").data)
    from dataclasses import replace

    save_steers([replace(STEERS[0], round=2)], tmp_path / "one.jsonl")
    config = tiny_config(tmp_path / "run", f"data.train_files=[{tmp_path / 'one.jsonl'}]")
    with pytest.raises(
        ConfigError, match=r"one.jsonl: steer 1 \(id 's0'\) has round=2, but the file is round 1"
    ):
        load_round_steers(config.data)
    save_steers([replace(STEERS[0], round=1), STEERS[1]], tmp_path / "mixed.jsonl")
    config = tiny_config(tmp_path / "run", f"data.train_steers={tmp_path / 'mixed.jsonl'}")
    with pytest.raises(ConfigError, match="mixed.jsonl: 1 of its 2 steers carry no round"):
        load_round_steers(config.data)
    both = tiny_config(tmp_path / "run", f"data.train_steers={files[0]}", f"data.train_files=[{files[0]}]")
    with pytest.raises(ConfigError, match="data.train_steers and data.train_files both give train steers"):
        load_round_steers(both.data)


def test_steps_that_never_reach_the_last_round_are_refused(tmp_path):
    """Rounds of 4 and 4 steers, 4 a step: 1 step ends at round 1's end, never reaching round 2; 2 steps do."""
    from localdpo.trainer import Trainer

    files = _rounds(tmp_path, [4, 4])
    train_files = f"data.train_files=[{files[0]},{files[1]}]"
    config = tiny_config(tmp_path / "run", train_files, "train.max_steps=1", "data.eval_fraction=0")
    trainer = Trainer(config, eval_steers=STEERS[8:])
    with pytest.raises(
        ConfigError,
        match=r"train.max_steps=1 x 4 steers a step = 4 steers end before the last of the 2 rounds \(rounds before it: 4 steers\), so it is never trained on: raise train.max_steps to at least 2",
    ):
        trainer.setup()
    config = tiny_config(tmp_path / "run2", train_files, "train.max_steps=2")
    assert Trainer(config, eval_steers=STEERS[8:]).setup().round_sizes == [4, 4]
