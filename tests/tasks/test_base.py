"""`localdpo.tasks` (base, registry): prompts, splits, the registry and the CLI listing."""

import pytest

from localdpo.tasks import SPLITS, TASKS, Verdict, get_task, resolve_tasks, split_of

MUL = get_task("multiples")


def test_registry():
    assert set(TASKS) >= {"addition", "running_sum", "multiples", "sort_words"}
    assert [t.name for t in resolve_tasks("all")] == list(TASKS)
    assert [t.name for t in resolve_tasks(["multiples", "addition", "multiples"])] == [
        "multiples",
        "addition",
    ]
    with pytest.raises(KeyError, match="known tasks"):
        get_task("nope")


@pytest.mark.parametrize("name", list(TASKS))
def test_prompts_are_seeded_distinct_and_in_their_split(name):
    task = TASKS[name]
    a = task.prompts(40, seed=3, split="heldout")
    assert a == task.prompts(40, seed=3, split="heldout")
    assert a != task.prompts(40, seed=4, split="heldout")
    assert len({p.id for p in a}) == 40
    assert all(split_of(p.id) == "heldout" for p in a)
    for prompt in a:  # the stored answer is what the checker accepts
        assert task.check(prompt, ", ".join(prompt.answer)).verdict is Verdict.CORRECT or name == "addition"


@pytest.mark.parametrize("name", list(TASKS))
def test_no_heldout_prompt_in_training_prompts_of_any_seed(name):
    task = TASKS[name]
    heldout = {p.id for seed in range(3) for p in task.prompts(150, seed=seed, split="heldout")}
    train = {p.id for seed in range(3) for p in task.prompts(150, seed=seed, split="train")}
    assert heldout and train and not heldout & train


def test_split_is_a_stable_hash():
    assert split_of("multiples/k=7,n=5") == split_of("multiples/k=7,n=5")
    fractions = [split_of(f"x/{i}") for i in range(4000)].count("heldout") / 4000
    assert 0.22 < fractions < 0.28
    assert [split_of(f"x/{i}", 1) for i in range(50)] != [split_of(f"x/{i}", 0) for i in range(50)]


def test_multiples_prompt_space_holds_200_heldout_prompts():
    assert len(MUL.prompts(200, seed=0, split="heldout")) == 200
    with pytest.raises(ValueError):
        MUL.prompts(5000, seed=0, split="heldout")
    with pytest.raises(ValueError, match="split"):
        MUL.prompts(1, seed=0, split="test")


def test_three_splits_are_disjoint_and_the_heldout_split_did_not_move():
    """Validation takes 15 of the train share's 75 hash points; held-out keeps exactly its old points (< 25),
    so held-out results from before the validation split stay comparable."""
    import hashlib

    task = get_task("addition")
    by_split = {split: {p.id for p in task.prompts(150, seed=0, split=split)} for split in SPLITS}
    assert all(len(ids) == 150 for ids in by_split.values())
    for a, b in (("train", "validation"), ("train", "heldout"), ("validation", "heldout")):
        assert not by_split[a] & by_split[b], (a, b)
    for i in range(3000):
        old_heldout = int.from_bytes(hashlib.sha256(f"0:x/{i}".encode()).digest()[:8], "big") % 100 < 25
        assert (split_of(f"x/{i}") == "heldout") == old_heldout
    shares = [split_of(f"x/{i}") for i in range(4000)]
    assert 0.12 < shares.count("validation") / 4000 < 0.18


@pytest.mark.parametrize("name", list(TASKS))
def test_a_prompt_is_rebuilt_from_its_id(name):
    """A steer records only its prompt's id (`meta["prompt_id"]`): the id alone gives the same prompt back,
    answer and checker inputs included, so the steer's answer can be checked again."""
    task = TASKS[name]
    for split in SPLITS:
        for prompt in task.prompts(30, seed=5, split=split):
            assert task.from_id(prompt.id) == prompt


@pytest.mark.parametrize(
    "name, prompt_id",
    [
        ("addition", "multiples/k=7,n=8"),  # another task's id
        ("addition", "addition/12*3"),
        ("addition", "addition/012+3"),  # not the canonical id of 12 + 3
        ("multiples", "multiples/n=8,k=7"),
        ("running_sum", "running_sum/1-x-3"),
        ("sort_words", "sort_words/"),
        ("sort_words", "addition"),
    ],
)
def test_an_id_of_no_prompt_of_the_task_is_refused(name, prompt_id):
    with pytest.raises(ValueError, match="is not a prompt id of task"):
        TASKS[name].from_id(prompt_id)
