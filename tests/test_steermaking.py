from dataclasses import replace

import pytest
import torch

from localdpo import load_steers, save_steers, tokenize_steer
from localdpo.models import tiny_model
from localdpo.steermaking import (
    Generation,
    GenerationConfig,
    generate_answers,
    greedy_token_continuations,
    make_steers,
    render_chat,
    steer_from_mistake,
)
from localdpo.tasks import MistakeKind, get_task

PROMPTS = [
    "What is 2 + 2?",
    "Sort these words in alphabetical order: river, apple, cloud, dog, zebra, mountain.",
]


@pytest.fixture(scope="module")
def tiny(smol_tokenizer):
    """A tiny model with weights scaled up so its greedy answers depend on the prompt (at the default init
    every answer is the same run of newlines, which would make order and batching tests vacuous)."""
    model, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    with torch.no_grad():
        for name, parameter in model.named_parameters():
            if "norm" not in name:
                parameter.mul_(40)
    return model, tokenizer


def test_greedy_answers_are_in_input_order_and_independent_of_batching(tiny):
    """Left padding must not change a greedy answer: one prompt alone = the same prompt batched with a longer one."""
    model, tokenizer = tiny
    config = GenerationConfig(max_new_tokens=12, batch_size=2)
    batched = generate_answers(model, tokenizer, PROMPTS, config, progress=False)
    alone = [
        generate_answers(
            model, tokenizer, [p], GenerationConfig(max_new_tokens=12, batch_size=1), progress=False
        )[0]
        for p in PROMPTS
    ]
    assert batched == alone
    assert batched[0].text != batched[1].text
    assert all(not a.complete and a.num_tokens == 12 for a in batched)  # this model never says EOS


def test_shared_prefix_prefill_changes_no_answer(tiny):
    """Prompts of one task share ~30 tokens (chat template + wording): run once, the answers are the same."""
    model, tokenizer = tiny
    texts = [p.text for p in get_task("multiples").prompts(5, seed=0)] + ["hi"]
    shared = generate_answers(model, tokenizer, texts, GenerationConfig(max_new_tokens=8), progress=False)
    unshared = generate_answers(
        model, tokenizer, texts, GenerationConfig(max_new_tokens=8, share_prefix=False), progress=False
    )
    assert shared == unshared
    assert len({a.text for a in shared}) > 1


def _generate_reference(model, tokenizer, text: str, max_new_tokens: int) -> list[int]:
    """Greedy new tokens of one unpadded prompt by transformers' own `generate`, up to its first EOS."""
    ids = tokenizer(render_chat(tokenizer, text), add_special_tokens=False, return_tensors="pt")["input_ids"]
    eos = model.generation_config.eos_token_id
    out = model.generate(
        ids,
        do_sample=False,
        max_new_tokens=max_new_tokens,
        eos_token_id=eos,
        pad_token_id=tokenizer.eos_token_id,
    )[0, ids.shape[1] :].tolist()
    eos = set(eos if isinstance(eos, list) else [eos])
    return out[: next((j + 1 for j, t in enumerate(out) if t in eos), len(out))]


def test_greedy_answers_equal_transformers_generate_as_rows_finish(tiny, monkeypatch):
    """Rows leave the batch when they end (EOS here): every answer is still the tokens `generate` picks for
    its prompt alone, and no decoding step runs rows that have ended."""
    model, tokenizer = tiny
    texts = [p.text for p in get_task("addition").prompts(6, seed=0)] + PROMPTS
    free = [_generate_reference(model, tokenizer, t, 10) for t in texts]
    # Declare a token that some answers say (not all) an end-of-turn token, so rows end at different steps.
    rows_saying = {t: sum(t in ids[:-1] for ids in free) for ids in free for t in ids[:-1]}
    stop_token = max((t for t, n in rows_saying.items() if n < len(texts)), key=rows_saying.get)
    monkeypatch.setattr(model.generation_config, "eos_token_id", [tokenizer.eos_token_id, stop_token])
    expected = [_generate_reference(model, tokenizer, t, 10) for t in texts]
    ended = [len(ids) < 10 or ids[-1] == stop_token for ids in expected]
    assert 1 < sum(ended) < len(texts)  # some rows end early, others run on
    rows_per_step = []
    forward = model.forward

    def counting_forward(*args, **kwargs):
        rows_per_step.append(kwargs["input_ids"].shape[0])
        return forward(*args, **kwargs)

    monkeypatch.setattr(model, "forward", counting_forward)
    answers = generate_answers(
        model, tokenizer, texts, GenerationConfig(max_new_tokens=10, batch_size=8), progress=False
    )
    for answer, ids in zip(answers, expected):
        complete = ids[-1] in (tokenizer.eos_token_id, stop_token)
        assert answer == Generation(
            tokenizer.decode(ids[: len(ids) - complete], skip_special_tokens=True), complete, len(ids)
        )
    # The prefill of the shared prompt prefix (1 row), then one forward per step over the running rows only.
    running = [sum(len(ids) > step for ids in expected) for step in range(10)]
    assert rows_per_step == [1] + [r for r in running if r]


def test_token_continuations_are_the_uncached_greedy_tokens_of_each_row(tiny, library_warnings):
    """`greedy_token_continuations` (the one decoder: drift set, steer metrics, answers): rows of different
    lengths, batched with left padding and a shared prefix, continue exactly as one row alone without a cache
    would; a row given `should_stop` ends where it says, its last token kept. Regression (issue #16): no
    deprecated transformers API (the drift set's own loop passed `past_key_values`)."""
    model, tokenizer = tiny
    rows = [
        tokenizer(render_chat(tokenizer, text), add_special_tokens=False)["input_ids"] for text in PROMPTS
    ]
    rows.append(rows[0] + rows[1][-5:])  # a longer row sharing the first's prefix
    expected = []
    with torch.no_grad():
        for ids in rows:
            full = list(ids)
            for _ in range(6):
                full.append(int(model(input_ids=torch.tensor([full])).logits[0, -1].argmax()))
            expected.append(full[len(ids) :])
    assert len({tuple(e) for e in expected}) == 3
    written = greedy_token_continuations(
        model, rows, max_new_tokens=6, eos_ids=set(), pad_id=tokenizer.pad_token_id, batch_size=2
    )
    assert written == [(e, False) for e in expected]
    stopped = greedy_token_continuations(
        model,
        rows,
        max_new_tokens=6,
        eos_ids=set(),
        pad_id=tokenizer.pad_token_id,
        should_stop=lambda i, new: i == 1 and len(new) == 2,
    )
    assert stopped == [(expected[0], False), (expected[1][:2], False), (expected[2], False)]
    # an end-of-turn token ends its row and is not returned
    eos = expected[2][3]
    ended = greedy_token_continuations(model, rows[2:], max_new_tokens=6, eos_ids={eos}, pad_id=0)
    assert ended == [(expected[2][: expected[2].index(eos)], True)]
    assert library_warnings() == []


def test_an_answer_that_ends_while_a_stop_is_pending_is_complete(tiny, monkeypatch):
    """A row told to stop a few tokens later that says end-of-turn first has ended its answer: complete, its
    tokens up to the end-of-turn, whatever the other rows of its batch still do."""
    model, tokenizer = tiny
    texts = [p.text for p in get_task("addition").prompts(6, seed=0)] + PROMPTS
    free = [_generate_reference(model, tokenizer, t, 10) for t in texts]
    row, end = next((i, ids.index(t)) for i, ids in enumerate(free) for t in ids[2:6] if ids.count(t) == 1)
    stop_token = free[row][end]
    monkeypatch.setattr(model.generation_config, "eos_token_id", [tokenizer.eos_token_id, stop_token])
    trigger_at = (
        end - 1
    )  # the stop is asked for 1 token before the end-of-turn, to take effect 5 tokens later

    trigger_text = tokenizer.decode(free[row][:trigger_at], skip_special_tokens=True)

    def should_stop(index, text):
        return index == row and text.startswith(trigger_text)

    answers = generate_answers(
        model,
        tokenizer,
        texts,
        GenerationConfig(max_new_tokens=10, batch_size=8),
        should_stop=should_stop,
        stop_delay=5,
        progress=False,
    )
    assert answers[row].complete and answers[row].num_tokens == end + 1
    assert answers[row].text == tokenizer.decode(free[row][:end], skip_special_tokens=True)


def test_sampling_is_seeded_and_leaves_the_global_rng_alone(tiny):
    model, tokenizer = tiny
    config = GenerationConfig(max_new_tokens=10, temperature=1.0, top_p=1.0)
    torch.manual_seed(7)
    expected = torch.rand(2)
    torch.manual_seed(7)
    a = generate_answers(model, tokenizer, PROMPTS, config, seed=3, progress=False)
    assert torch.equal(torch.rand(2), expected)
    assert a == generate_answers(model, tokenizer, PROMPTS, config, seed=3, progress=False)
    assert a != generate_answers(model, tokenizer, PROMPTS, config, seed=4, progress=False)
    assert not model.training


def test_stopped_answers_are_prefixes_of_full_answers(tiny):
    """Stopping a row early keeps exactly its first tokens, and marks it incomplete (not an EOS ending)."""
    model, tokenizer = tiny
    full = generate_answers(model, tokenizer, PROMPTS, GenerationConfig(max_new_tokens=16), progress=False)
    calls = []

    def should_stop(index, text):
        calls.append(index)
        return index == 1 and len(tokenizer(text, add_special_tokens=False)["input_ids"]) >= 3

    stopped = generate_answers(
        model,
        tokenizer,
        PROMPTS,
        GenerationConfig(max_new_tokens=16),
        should_stop=should_stop,
        stop_delay=2,
        progress=False,
    )
    assert stopped[0] == full[0]
    assert full[1].text.startswith(stopped[1].text) and stopped[1].text != full[1].text
    assert not stopped[1].complete and stopped[1].num_tokens == 5  # triggered after 3 tokens, 2 more kept
    assert set(calls) == {0, 1}


def test_render_chat_uses_the_template(smol_tokenizer):
    text = render_chat(smol_tokenizer, "hi")
    assert text.endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


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
    monkeypatch.setattr("localdpo.steermaking.generate_answers", _scripted([(output, True)]))
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
    monkeypatch.setattr("localdpo.steermaking.generate_answers", _scripted(outputs))
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
    from localdpo.models import load_model
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


def test_generation_uses_no_deprecated_transformers_api(tiny, library_warnings):
    """Regression (issue #16): `past_key_values=` made transformers 5.24 warn on every batch of `make compare`."""

    model, tokenizer = tiny
    texts = [p.text for p in get_task("multiples").prompts(3, seed=0)]  # shared prefix: the prefilled cache
    answers = generate_answers(model, tokenizer, texts, GenerationConfig(max_new_tokens=4), progress=False)
    assert len(answers) == 3 and all(a.num_tokens == 4 for a in answers)
    assert library_warnings() == []
