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
    train, held, reports = prepare_steers(config, smol_tokenizer, STEERS[:4], STEERS[8:])
    assert [e.steer_id for e in train] == ["s0", "s1", "s2", "s3"]
    assert [e.steer_id for e in held] == ["s8", "s9"]  # eval.max_steers
    assert {e.span_mode for e in train} == {SpanMode.COMPLETION} and {e.span_mode for e in held} == {SpanMode.DIVERGENT}
    assert set(reports) == {"train", "eval"}
    with pytest.raises(ValueError, match="tokenized with another span mode than divergent"):
        prepare_steers(tiny_config(tmp_path), smol_tokenizer, train, held)
    with pytest.raises(ConfigError, match="data.train_steers is not set"):
        prepare_steers(config, smol_tokenizer)
