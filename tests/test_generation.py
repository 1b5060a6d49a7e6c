"""The generation module: greedy decoding (rows leave the batch as they end) against transformers' own
`generate` and an uncached argmax by hand, stop rules, seeded sampling, the streamed row of the studio, the
chat template and the end-of-turn set."""

import threading
from dataclasses import replace
from types import SimpleNamespace

import pytest
import torch

from localdpo.generation import (
    Generation,
    GenerationConfig,
    Sampling,
    eos_token_ids,
    generate_answers,
    greedy_token_continuations,
    prompt_ids,
    render_chat,
    seeded,
    stream_continuation,
)
from localdpo.models.loading import tiny_model
from localdpo.steers.steer import Steer
from localdpo.steers.tokenization import tokenize_steer
from localdpo.tasks import get_task

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
    a = generate_answers(model, tokenizer, PROMPTS, replace(config, seed=3), progress=False)
    assert torch.equal(torch.rand(2), expected)
    assert a == generate_answers(model, tokenizer, PROMPTS, replace(config, seed=3), progress=False)
    assert a != generate_answers(model, tokenizer, PROMPTS, replace(config, seed=4), progress=False)
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


def test_generation_uses_no_deprecated_transformers_api(tiny, library_warnings):
    """Regression (issue #16): `past_key_values=` made transformers 5.24 warn on every batch of `make compare`."""

    model, tokenizer = tiny
    texts = [p.text for p in get_task("multiples").prompts(3, seed=0)]  # shared prefix: the prefilled cache
    answers = generate_answers(model, tokenizer, texts, GenerationConfig(max_new_tokens=4), progress=False)
    assert len(answers) == 3 and all(a.num_tokens == 4 for a in answers)
    assert library_warnings() == []


def test_prompt_ids_tokenize_the_prompt_as_tokenize_steer_does(smol_tokenizer):
    """The chat-template prompt the model answers is the prompt a steer's sides start with, token for token."""
    steer_ids = tokenize_steer(
        Steer(prompt=[{"role": "user", "content": "hi"}], prefix="", rejected="No", chosen="Yes"),
        smol_tokenizer,
    ).chosen_ids.tolist()
    ids = prompt_ids(smol_tokenizer, "hi")
    assert steer_ids[: len(ids)] == ids
    assert smol_tokenizer.decode(ids).endswith("<|im_start|>user\nhi<|im_end|>\n<|im_start|>assistant\n")


class _PlainTokenizer:
    """A tokenizer without a chat template that writes a BOS (1) when asked to add special tokens."""

    chat_template = None

    def __call__(self, text, add_special_tokens=True):
        return {"input_ids": [1] * add_special_tokens + [ord(c) for c in text]}


def test_without_a_chat_template_the_prompt_is_the_text_with_its_special_tokens():
    assert render_chat(_PlainTokenizer(), "hi") == "hi"
    assert prompt_ids(_PlainTokenizer(), "hi") == [1, 104, 105]


@pytest.mark.parametrize(
    ("config_eos", "tokenizer_eos", "expected"),
    [(2, 2, {2}), ([2, 7], 2, {2, 7}), (None, 2, {2}), ([5], None, {5})],
)
def test_end_of_turn_set_joins_the_generation_config_and_the_tokenizer(config_eos, tokenizer_eos, expected):
    model = SimpleNamespace(generation_config=SimpleNamespace(eos_token_id=config_eos))
    assert eos_token_ids(model, SimpleNamespace(eos_token_id=tokenizer_eos)) == expected


def test_sampling_settings_give_generates_decoding_arguments():
    assert Sampling().generate_kwargs() == {
        "do_sample": False,
        "temperature": None,
        "top_p": None,
        "top_k": None,
    }
    assert Sampling(temperature=0.7, top_p=0.9).generate_kwargs() == {
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": None,
    }
    # a batch of answers is a Sampling with batching; the studio's segments default to longer answers
    config = GenerationConfig(temperature=0.5, seed=3)
    assert isinstance(config, Sampling) and (config.max_new_tokens, Sampling().max_new_tokens) == (96, 256)
    assert (config.batch_size, config.share_prefix) == (32, True)


def test_seeded_draws_from_the_seed_and_restores_the_global_rng():
    torch.manual_seed(1)
    expected_outside = torch.rand(2)
    torch.manual_seed(11)
    expected_inside = torch.rand(2)
    torch.manual_seed(1)
    with seeded(11):
        assert torch.equal(torch.rand(2), expected_inside)
    assert torch.equal(torch.rand(2), expected_outside)


def _stream(model, tokenizer, ids, sampling, *, eos_ids, seed=0, stop=None, max_new_tokens=8):
    from transformers import DynamicCache

    tokens, ended = [], []
    cache = stream_continuation(
        model,
        torch.tensor([ids]),
        DynamicCache(),
        sampling,
        max_new_tokens=max_new_tokens,
        eos_ids=eos_ids,
        pad_id=tokenizer.pad_token_id,
        seed=seed,
        stop=stop or threading.Event(),
        on_token=tokens.append,
        on_end_of_turn=lambda: ended.append(True),
    )
    return tokens, bool(ended), cache


def test_a_streamed_row_is_the_greedy_continuation_and_ends_at_its_end_of_turn(tiny):
    """The studio's decoder: greedy, each token streamed as picked, equals `greedy_token_continuations`; an
    end-of-turn token is not streamed and ends the row; the returned cache holds every column but the last."""
    model, tokenizer = tiny
    ids = prompt_ids(tokenizer, PROMPTS[0])
    ((expected, _),) = greedy_token_continuations(model, [ids], max_new_tokens=8, eos_ids=set(), pad_id=0)
    tokens, ended, cache = _stream(model, tokenizer, ids, Sampling(), eos_ids=set())
    assert (tokens, ended) == (expected, False)
    assert cache.get_seq_length() == len(ids) + len(expected) - 1
    tokens, ended, _ = _stream(model, tokenizer, ids, Sampling(), eos_ids={expected[3]})
    assert (tokens, ended) == (expected[: expected.index(expected[3])], True)


def test_a_streamed_row_stops_when_told_and_samples_from_its_seed(tiny):
    model, tokenizer = tiny
    ids = prompt_ids(tokenizer, PROMPTS[1])
    stop = threading.Event()
    stop.set()  # checked after every step: one token is written
    tokens, ended, _ = _stream(model, tokenizer, ids, Sampling(), eos_ids=set(), stop=stop)
    assert len(tokens) == 1 and not ended
    hot = Sampling(temperature=1.0)
    first = _stream(model, tokenizer, ids, hot, eos_ids=set(), seed=5)[0]
    assert first == _stream(model, tokenizer, ids, hot, eos_ids=set(), seed=5)[0]
    assert first != _stream(model, tokenizer, ids, hot, eos_ids=set(), seed=6)[0]
