"""A person's own steers split by a hash of each prompt: stable, whole prompts per split, sizes stated, too
few refused with the numbers."""

import pytest

from localdpo.compare.splits import MIN_STEERS, TooFewSteersError, own_steers, prompt_key, steer_split
from localdpo.steers.steer import Steer, save_steers


def _steers(n: int, *, per_prompt: int = 1, chat: bool = False) -> list[Steer]:
    """`n` prompts about capitals, `per_prompt` steers each (different corrections of the same answer)."""
    out = []
    for i in range(n):
        text = f"Which city is the capital of country number {i}?"
        prompt = [{"role": "user", "content": text}] if chat else text
        for j in range(per_prompt):
            out.append(Steer(prompt, "The capital is ", f"Town{j}.", f"City{i}.", id=f"c{i}-{j}"))
    return out


def test_the_key_is_the_prompts_canonical_json():
    message = [{"role": "user", "content": "hi"}]
    assert prompt_key(message) == prompt_key([{"content": "hi", "role": "user"}])  # key order does not matter
    assert prompt_key("hi") != prompt_key(message)  # plain text is another prompt than a chat turn
    assert len(prompt_key("hi")) == 64


def test_the_split_is_fixed_by_the_prompt_alone():
    """The same split on every machine and in any order: pinned here (sha256 of `0:` + the prompt key)."""
    splits = [steer_split(s) for s in _steers(12)]
    assert [steer_split(s) for s in reversed(_steers(12))] == splits[::-1]
    assert splits == [
        "validation", "heldout", "train", "train", "train", "train",
        "train", "heldout", "train", "train", "heldout", "heldout",
    ]  # fmt: skip


def test_every_steer_of_one_prompt_lands_in_one_split_and_sizes_add_up(tmp_path):
    steers = _steers(80, per_prompt=3, chat=True)
    save_steers(steers, tmp_path / "mine.jsonl")
    own = own_steers(str(tmp_path / "mine.jsonl"), validation=True)
    assert list(own.splits) == ["train", "validation", "heldout"] and own.cut == (
        "train",
        "heldout",
        "validation",
    )
    where = {s.id: split for split, items in own.splits.items() for s in items}
    assert len(where) == len(steers) == own.total == 240 and own.prompts == 80
    for i in range(80):
        assert len({where[f"c{i}-{j}"] for j in range(3)}) == 1
    sizes = {split: len(items) for split, items in own.splits.items()}
    assert sizes == {"train": 150, "validation": 39, "heldout": 51}  # 50, 13 and 17 prompts of 80
    assert own.note() == (
        "Steers: `mine.jsonl` (240 steers on 80 prompts) split by a stable hash of each prompt (sha256 of its "
        "canonical JSON, `localdpo.tasks.split_of`; every steer of one prompt in one split), out of 100 points: "
        "below 25 held-out, 25 to 39 validation, the rest train: 150 train, 39 validation, 51 held-out."
    )


def test_without_selection_or_with_a_heldout_file_those_shares_train(tmp_path):
    save_steers(_steers(80), tmp_path / "mine.jsonl")
    plain = own_steers(str(tmp_path / "mine.jsonl"))
    assert {k: len(v) for k, v in plain.splits.items()} == {"train": 58, "heldout": 22}  # 14 validation train
    save_steers(_steers(12, chat=True), tmp_path / "heldout.jsonl")
    given = own_steers(
        str(tmp_path / "mine.jsonl"), heldout_file=str(tmp_path / "heldout.jsonl"), validation=True
    )
    assert {k: len(v) for k, v in given.splits.items()} == {"train": 66, "validation": 14, "heldout": 12}
    assert given.cut == ("train", "validation") and given.files["heldout"].endswith("heldout.jsonl")
    assert "; held-out from `heldout.jsonl`: 66 train, 14 validation, 12 held-out." in given.note()


def test_too_few_steers_are_refused_with_the_numbers(tmp_path):
    save_steers(_steers(20), tmp_path / "few.jsonl")
    with pytest.raises(TooFewSteersError) as caught:
        own_steers(str(tmp_path / "few.jsonl"), validation=True)
    message = str(caught.value)
    assert message.startswith("`few.jsonl` (20 steers on 20 prompts) split by a stable hash")
    assert (
        ": 11 train, 3 validation, 6 held-out; a comparison needs at least 5 validation and 10 held-out steers"
        in message
    )
    assert MIN_STEERS == {"train": 10, "heldout": 10, "validation": 5}
    # many steers on one prompt cannot be split at all: every one lands in the same split
    save_steers(_steers(1, per_prompt=30), tmp_path / "one.jsonl")
    with pytest.raises(
        TooFewSteersError,
        match=r"\(30 steers on 1 prompts\) .*: 30 train, 0 held-out; .* at least 10 held-out steers",
    ):
        own_steers(str(tmp_path / "one.jsonl"))
