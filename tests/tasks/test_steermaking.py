from dataclasses import replace

import pytest
import torch

from localdpo import load_steers, save_steers, tokenize_steer
from localdpo.generation import Generation
from localdpo.models.loading import tiny_model
from localdpo.tasks import MistakeKind, get_task
from localdpo.tasks.steermaking import make_steers, steer_from_mistake


@pytest.fixture(scope="module")
def tiny(smol_tokenizer):
    """The tiny model with weights scaled up as in tests/test_generation.py."""
    model, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.mul_(40)
    return model, tokenizer


def test_steer_from_a_wrong_middle_item(smol_tokenizer):
    task = get_task("multiples")
    prompt = task.build(7, 6)
    output = "The first 6 multiples of 7 are 7, 14, 21, 28, 45, 63, 81, and 98."
    mistake = task.check(prompt, output).mistake
    steer = steer_from_mistake(
        task, prompt, Generation(output, True, 40), mistake, smol_tokenizer, meta={"seed": 5}
    )
    assert steer.prefix == "The first 6 multiples of 7 are 7, 14, 21, 28, "
    # the wrong item + 3 tokens: SmolLM2 splits ", 63" into ",", " ", "6", "3"
    assert len(smol_tokenizer(", 63", add_special_tokens=False)["input_ids"]) == 4
    assert steer.rejected == "45, 6"
    assert steer.chosen == "35" and not steer.chosen_complete and not steer.rejected_complete
    assert steer.prompt == [{"role": "user", "content": prompt.text}]
    assert steer.id == "multiples/k=7,n=6#5"
    assert steer.meta["output"] == output and steer.meta["task"] == "multiples"
    assert steer.meta["mistake"]["kind"] == "wrong" and steer.meta["mistake"]["item"] == 4
    assert steer.replaces == 2  # the checker's mistake, "45": the rest of rejected is the run-on
    tokenized = tokenize_steer(steer, smol_tokenizer)
    # the whole wrong item against its fix, though the two agree on their last digit
    assert smol_tokenizer.decode(tokenized.chosen_ids[tokenized.chosen_mask]) == "35"
    assert smol_tokenizer.decode(tokenized.rejected_ids[tokenized.rejected_mask]) == "45"


def test_correction_that_reads_as_a_deletion_is_kept(monkeypatch, smol_tokenizer):
    """Regression: "3, 2, 5" corrected to "3, 5" (rejected "2, 5", chosen "5") read as the deletion of "2, "
    (an empty chosen span) and such steers were reported unusable. With the checker's extent recorded
    (`replaces`: the wrong item "2") the steer scores the item against its fix; without it, one agreeing
    token ("5") never empties a span, so both run to their ends."""
    task = get_task("running_sum")
    prompt = task.build([3, 2, 5, 2, 8])
    output = "The list of running totals is 3, 2, 5, 2, 8."
    mistake = task.check(prompt, output).mistake
    steer = steer_from_mistake(task, prompt, Generation(output, True, 20), mistake, smol_tokenizer)
    assert (steer.rejected, steer.chosen) == ("2, 5", "5")
    tokenized = tokenize_steer(steer, smol_tokenizer)
    assert smol_tokenizer.decode(tokenized.chosen_ids[tokenized.chosen_mask]) == "5"
    assert smol_tokenizer.decode(tokenized.rejected_ids[tokenized.rejected_mask]) == "2"
    unknown = tokenize_steer(replace(steer, replaces=None), smol_tokenizer)
    assert smol_tokenizer.decode(unknown.rejected_ids[unknown.rejected_mask]) == "2, 5"
    monkeypatch.setattr("localdpo.tasks.steermaking.generate_answers", _scripted([(output, True)]))
    monkeypatch.setattr(task, "prompts", lambda n, seed, split: [prompt])
    steers, summary = make_steers(None, smol_tokenizer, task, n=1, seed=0)
    assert summary.steers == 1 and summary.rejected_steers == []


def test_steer_for_a_missing_item_at_the_end_rejects_the_end_of_turn(smol_tokenizer):
    task = get_task("sort_words")
    prompt = task.build(["dog", "apple", "cloud"])
    output = "apple, cloud"
    mistake = task.check(prompt, output).mistake
    assert mistake.kind is MistakeKind.MISSING
    steer = steer_from_mistake(task, prompt, Generation(output, True, 4), mistake, smol_tokenizer)
    assert (steer.prefix, steer.rejected, steer.chosen) == ("apple, cloud", "", ", dog")
    assert steer.rejected_complete  # the model ended its turn there: EOS is the rejected token
    tokenized = tokenize_steer(steer, smol_tokenizer)
    assert tokenized.rejected_ids[tokenized.rejected_mask].tolist() == [smol_tokenizer.eos_token_id]


def test_steer_for_extra_items_ends_the_answer(smol_tokenizer):
    task = get_task("multiples")
    prompt = task.build(3, 2)
    output = "They are 3, 6, 9, 12."
    mistake = task.check(prompt, output).mistake
    steer = steer_from_mistake(task, prompt, Generation(output, True, 12), mistake, smol_tokenizer)
    assert steer.prefix == "They are 3, 6" and steer.chosen == "." and steer.chosen_complete
    assert steer.rejected.startswith(", 9")


def _scripted(outputs):
    """A stand-in for generate_answers returning fixed answers (checks the counting, not the model)."""

    def fake(model, tokenizer, texts, config, **kwargs):
        assert len(texts) == len(outputs)
        return [Generation(text, complete, 20) for text, complete in outputs]

    return fake


def test_make_steers_counts_every_outcome(monkeypatch, smol_tokenizer):
    task = get_task("running_sum")
    prompts = task.prompts(5, seed=0, split="train")
    right = ", ".join(prompts[0].answer)
    wrong = "The list of running totals is " + ", ".join(str(v) for v in prompts[1].data["values"]) + "."
    outputs = [(right, True), (wrong, True), ("I cannot.", True), (wrong, True), ("The totals are", False)]
    monkeypatch.setattr("localdpo.tasks.steermaking.generate_answers", _scripted(outputs))
    steers, summary = make_steers(None, smol_tokenizer, task, n=5, seed=0)
    assert (summary.tried, summary.correct, summary.uncheckable, summary.steers) == (5, 1, 2, 2)
    assert summary.wrong == 2 and summary.rejected_steers == []
    assert [s.meta["prompt_id"] for s in steers] == [prompts[1].id, prompts[3].id]
    assert all(s.meta["split"] == "train" and s.meta["seed"] == 0 for s in steers)
    for steer in steers:
        tokenized = tokenize_steer(steer, smol_tokenizer)
        assert tokenized.chosen_mask.any() or tokenized.rejected_mask.any()


def test_make_steers_with_tiny_model_runs_end_to_end(tiny, tmp_path):
    model, tokenizer = tiny
    steers, summary = make_steers(model, tokenizer, "addition", n=3, seed=0, progress=False)
    assert summary.tried == 3 and summary.uncheckable == 3 and steers == []  # random weights: no equations
    assert save_steers(steers, tmp_path / "s.jsonl").read_text() == ""


@pytest.mark.embedded
def test_embedded_model_makes_real_steers_that_load_back(tmp_path):
    """SmolLM2-135M restates the input as its running totals: wrong from item 1, a steer per answer."""
    from localdpo.models.loading import load_model
    from localdpo.tasks import split_of

    model, tokenizer = load_model()
    steers, summary = make_steers(model, tokenizer, "running_sum", n=8, seed=0, progress=False)
    assert summary.tried == 8 and summary.steers >= 5, summary.row()
    path = save_steers(steers, tmp_path / "steers.jsonl")
    loaded = load_steers(path)
    assert loaded == steers
    for steer in loaded:
        assert split_of(steer.meta["prompt_id"]) == "train"
        assert steer.meta["output"].startswith(steer.prefix + steer.rejected)
        tokenized = tokenize_steer(steer, tokenizer)
        assert tokenized.chosen_mask.any() or tokenized.rejected_mask.any()
