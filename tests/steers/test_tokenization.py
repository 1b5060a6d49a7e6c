from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
import torch

from localdpo import Steer, SteerTooLongError, divergent_span, tokenize_steer
from localdpo.steers.steer import load_steers
from localdpo.steers.tokenization import SpanMode, tokenize_steers

EXAMPLE = Steer(
    prompt="Give four examples",
    prefix="1. High-quality example 1\n2. ",
    rejected="Low-quality example 2\n3. Low-quality example 3",
    chosen="High-quality example 2",
    id="example",
)


def tokens(tokenizer, ids, mask):
    return tokenizer.convert_ids_to_tokens(ids[mask].tolist())


# --- divergent_span on plain token lists -------------------------------------------------------------


@pytest.mark.parametrize(
    ("chosen", "rejected", "expected"),
    [
        ("a b X s t", "a b Y Z s t u v", (2, 3, 2, 4)),  # the example: [X] against [Y Z]
        ("a X", "a Y", (1, 2, 1, 2)),  # no common suffix: each span runs to its end
        ("a b", "a b c d", (2, 2, 2, 4)),  # chosen is a prefix of rejected: deletion, chosen span empty
        ("a b c d", "a b", (2, 4, 2, 2)),  # rejected is a prefix of chosen: insertion, rejected span empty
        ("a s t", "a Y s t", (1, 1, 1, 2)),  # deletion of Y, then the correction rejoins
        ("a X s", "a Y s q s", (1, 2, 1, 2)),  # suffix [s] occurs twice in rejected: first occurrence
        ("X a", "Y a", (0, 1, 0, 1)),  # divergence at the very first token
    ],
)
def test_divergent_span_examples(chosen, rejected, expected):
    assert divergent_span(chosen.split(), rejected.split()) == expected


@pytest.mark.parametrize(
    ("chosen", "rejected", "expected"),
    [
        # the rows (digits are single tokens): one coincidental digit never ends a span
        ("2 1 7", "2 7 5 - _ 2", (1, 3, 1, 6)),  # 217 / 275 - 2: [1 7] against [7 5 - _ 2], not [1] / []
        ("1 4 0 9", "1 9 0 1 . nn", (1, 4, 1, 6)),  # 1409 / 1901.: [4 0 9] against [9 0 1 . nn]
        ("1 0 4 0", "1 0 0 0 . This is", (2, 3, 2, 3)),  # 1040 / 1000.: [4] against [0], like for like
        ("4 3", "4 2 3 - _ 3", (1, 2, 1, 6)),  # 43 / 423 - 3: [3] against [2 3 - _ 3], not [] / [2]
        ("very big dog", "big dog runs fast .", (0, 1, 0, 0)),  # a true insertion: [very] alone
        ("1 9 9 + 1", "2 0 1", (0, 5, 0, 3)),  # no agreeing tail at all: both run to their ends
    ],
)
def test_one_agreeing_token_never_empties_a_span(chosen, rejected, expected):
    assert divergent_span(chosen.split(), rejected.split()) == expected


@pytest.mark.parametrize(
    ("chosen", "rejected", "replaced_end", "expected"),
    [
        ("4 3", "4 2 3 - _ 3", 3, (1, 2, 1, 3)),  # 43 / 423 - 3 with 423 known: [3] against [2 3]
        ("3 2 7", "2 7 0 . This", 3, (0, 3, 0, 3)),  # [2 7] rejoins by chance; the mistake is 270
        ("7 2", "7 nl 2 .", 1, (1, 2, 1, 2)),  # 72 / 7\n2.: the mistake 7 is shared; [2] against [nl]
        ("a X s t", "a Y s t u", 2, (1, 2, 1, 2)),  # the rejoin sits right after the mistake
        ("a X s t", "a Y Z s t", 2, (1, 4, 1, 2)),  # ... or it is not a rejoin at all
    ],
)
def test_known_mistake_end_anchors_the_rejected_span(chosen, rejected, replaced_end, expected):
    assert divergent_span(chosen.split(), rejected.split(), replaced_end=replaced_end) == expected


def test_resync_false_runs_to_the_end():
    assert divergent_span("a b X s t".split(), "a b Y Z s t u v".split(), resync=False) == (2, 5, 2, 8)


def test_longest_suffix_wins_over_shorter():
    # chosen tail [9 7 8], rejected tail [5 8 6 7 8]: [7 8] rejoins at 3, though [8] alone occurs at 1
    assert divergent_span([1, 9, 7, 8], [1, 5, 8, 6, 7, 8]) == (1, 2, 1, 4)


def test_identical_sequences_raise():
    with pytest.raises(ValueError, match="identical"):
        divergent_span([1, 2, 3], torch.tensor([1, 2, 3]))


def test_token_aligned_search_ignores_byte_misalignment():
    # as 4-byte words, [2, 256] = 02 00 00 00 00 01 00 00: a raw byte search finds token 0 (00 00 00 00)
    # at byte 1, inside the first word; the aligned search finds it at token 2 of the tail
    assert divergent_span([0, 1, 0, 0], [0, 2, 256, 0, 1, 0]) == (1, 3, 1, 3)


# --- tokenize_steer with SmolLM2's byte-level BPE ------------------------------------------------------


def test_boundary_merge_moves_prefix_space_into_span(smol_tokenizer):
    tok = tokenize_steer(EXAMPLE, smol_tokenizer)
    assert tokens(smol_tokenizer, tok.chosen_ids, tok.chosen_mask) == ["ĠHigh"]
    assert tokens(smol_tokenizer, tok.rejected_ids, tok.rejected_mask) == ["ĠLow"]
    # the span starts at the first token whose ids differ: the merged " High", not after "2. "
    assert tok.divergence == tok.chosen_span[0]
    assert smol_tokenizer.decode(tok.chosen_ids[: tok.divergence]).endswith("2.")


def test_to_end_and_completion_modes(smol_tokenizer):
    to_end = tokenize_steer(EXAMPLE, smol_tokenizer, span_mode="to_end")
    assert smol_tokenizer.decode(to_end.chosen_ids[to_end.chosen_mask]) == " High-quality example 2"
    assert (
        smol_tokenizer.decode(to_end.rejected_ids[to_end.rejected_mask])
        == " Low-quality example 2\n3. Low-quality example 3"
    )
    completion = tokenize_steer(EXAMPLE, smol_tokenizer, span_mode=SpanMode.COMPLETION)
    assert (
        smol_tokenizer.decode(completion.chosen_ids[completion.chosen_mask])
        == EXAMPLE.prefix.rstrip() + " " + EXAMPLE.chosen
    )
    assert completion.chosen_span == (completion.chosen_assistant_start, len(completion.chosen_ids))
    assert smol_tokenizer.decode(completion.chosen_ids[: completion.chosen_assistant_start]) == EXAMPLE.prompt


def test_every_mode_keeps_the_same_token_ids(smol_tokenizer):
    modes = [tokenize_steer(EXAMPLE, smol_tokenizer, span_mode=m) for m in SpanMode]
    for other in modes[1:]:
        assert torch.equal(other.chosen_ids, modes[0].chosen_ids)
        assert torch.equal(other.rejected_ids, modes[0].rejected_ids)


def test_common_suffix_is_not_scored(smol_tokenizer):
    steer = Steer(
        prompt="Sum",
        prefix="1 + 1 = ",
        rejected="3, so the answer is odd.",
        chosen="2, so the answer is odd.",
    )
    tok = tokenize_steer(steer, smol_tokenizer)
    assert tokens(smol_tokenizer, tok.chosen_ids, tok.chosen_mask) == ["2"]
    assert tokens(smol_tokenizer, tok.rejected_ids, tok.rejected_mask) == ["3"]


def test_chosen_prefix_of_rejected_scores_only_rejected_run_on(smol_tokenizer):
    steer = Steer(prompt="List", prefix="a, b", rejected=", c, d", chosen=", c")
    tok = tokenize_steer(steer, smol_tokenizer)
    assert tok.chosen_mask.sum() == 0
    assert smol_tokenizer.decode(tok.rejected_ids[tok.rejected_mask]) == ", d"


def test_unicode_span(smol_tokenizer):
    steer = Steer(prompt="Translate", prefix="Le café est ", rejected="froid ☕.", chosen="chaud ☕.")
    tok = tokenize_steer(steer, smol_tokenizer)
    assert smol_tokenizer.decode(tok.chosen_ids[tok.chosen_mask]).strip() == "chaud"
    assert smol_tokenizer.decode(tok.rejected_ids[tok.rejected_mask]).strip() == "froid"


def test_chat_template_prompt_and_eos(smol_tokenizer):
    steer = Steer(
        prompt=[{"role": "user", "content": "Give four examples"}],
        prefix=EXAMPLE.prefix,
        rejected=EXAMPLE.rejected,
        chosen=EXAMPLE.chosen,
        chosen_complete=True,
    )
    tok = tokenize_steer(steer, smol_tokenizer)
    rendered = smol_tokenizer.decode(tok.chosen_ids[: tok.chosen_assistant_start])
    assert (
        rendered.endswith("<|im_start|>assistant\n")
        and "<|im_start|>user\nGive four examples<|im_end|>" in rendered
    )
    assert tok.chosen_ids[-1] == smol_tokenizer.eos_token_id
    assert smol_tokenizer.eos_token_id not in tok.rejected_ids.tolist()[tok.rejected_assistant_start :]
    # chosen ends the answer: the span runs to EOS and includes it
    assert tokens(smol_tokenizer, tok.chosen_ids, tok.chosen_mask)[-1] == "<|im_end|>"


def test_last_message_from_assistant_is_rejected(smol_tokenizer):
    steer = Steer(prompt=[{"role": "assistant", "content": "x"}], prefix="", rejected="a", chosen="b")
    with pytest.raises(ValueError, match="put that text in `prefix`"):
        tokenize_steer(steer, smol_tokenizer)


def test_identical_after_tokenization_raises(smol_tokenizer):
    # complete flags differ on the steer, but both sides end with the same EOS text
    steer = Steer(prompt="p", prefix="", rejected="a<|im_end|>", chosen="a", chosen_complete=True)
    with pytest.raises(ValueError, match="same ids"):
        tokenize_steer(steer, smol_tokenizer)


def test_over_long_steer_is_an_error_never_cut_through_its_span(smol_tokenizer):
    full = tokenize_steer(EXAMPLE, smol_tokenizer)
    with pytest.raises(SteerTooLongError, match="'example'.*max_length=5"):
        tokenize_steer(EXAMPLE, smol_tokenizer, max_length=5)
    # the tokens after each divergent span (" -quality example 2...") are unscored: cutting them is lossless
    fits = full.chosen_span[1]
    assert full.rejected_span[1] == fits
    cut = tokenize_steer(EXAMPLE, smol_tokenizer, max_length=fits)
    assert len(cut.rejected_ids) == len(cut.chosen_ids) == fits
    assert cut.truncated == {"chosen": len(full.chosen_ids) - fits, "rejected": len(full.rejected_ids) - fits}
    assert torch.equal(cut.rejected_mask, full.rejected_mask[:fits])
    with pytest.raises(SteerTooLongError):
        tokenize_steer(EXAMPLE, smol_tokenizer, max_length=fits, span_mode="to_end")


def test_tokenize_steers_counts_skips(smol_tokenizer):
    short = Steer(prompt="p", prefix="", rejected="a", chosen="b", id="short")
    with pytest.warns(UserWarning, match="skipped 1 too long"):
        out, report = tokenize_steers([EXAMPLE, short], smol_tokenizer, max_length=6, on_too_long="skip")
    assert [t.steer_id for t in out] == ["short"]
    assert report.skipped[0][0] == "example"


# --- the span rule on the package's own steers ----------------------------------------------------------

REAL_STEERS = Path(__file__).parents[1] / "data" / "smollm2_task_steers.jsonl"
"""750 steers `localdpo make-steers` made from SmolLM2-135M-Instruct's greedy mistakes (addition,
running_sum, multiples; train and held-out splits, 160/120 prompts, seed 0), each with its checker's mistake."""


def _span_counts(steers, tokenizer) -> Counter:
    counts = Counter()
    for steer in steers:
        tok = tokenize_steer(steer, tokenizer)
        counts["empty chosen"] += tok.chosen_mask.sum().item() == 0
        counts["empty rejected"] += tok.rejected_mask.sum().item() == 0
    return counts


def test_real_substitutions_never_get_an_empty_span(smol_tokenizer):
    """Every steer here replaces a wrong item (kind `wrong`). With the mistake's extent recorded, as
    `make-steers` records it, no span is empty; from the tokens alone (a steer made elsewhere), two of 750
    keep an empty rejected span: `327` against `270. This is` and `1212` against `2122. This is`, where two
    and three digits agree by chance, which no rule on tokens alone can tell from an insertion. The old rule
    (one agreeing token enough) emptied 44 rejected and 41 chosen spans of these 750."""
    steers = load_steers(REAL_STEERS)
    assert len(steers) == 750 and {s.meta["mistake"]["kind"] for s in steers} == {"wrong"}
    recorded = [replace(s, replaces=s.meta["mistake"]["end"] - s.meta["mistake"]["start"]) for s in steers]
    assert _span_counts(recorded, smol_tokenizer) == Counter({"empty chosen": 0, "empty rejected": 0})
    assert _span_counts(steers, smol_tokenizer) == Counter({"empty chosen": 0, "empty rejected": 2})


def test_recorded_mistake_leaves_the_run_on_unscored(smol_tokenizer):
    steer = Steer(
        prompt=[{"role": "user", "content": "What is 950 + 459? Write the answer as an equation."}],
        prefix="950 + 459 = ",
        rejected="1901.\n\n",
        chosen="1409",
        replaces=4,
    )
    tok = tokenize_steer(steer, smol_tokenizer)
    assert smol_tokenizer.decode(tok.chosen_ids[tok.chosen_mask]) == "409"
    assert smol_tokenizer.decode(tok.rejected_ids[tok.rejected_mask]) == "901"
    unknown = tokenize_steer(replace(steer, replaces=None), smol_tokenizer)
    assert smol_tokenizer.decode(unknown.rejected_ids[unknown.rejected_mask]) == "901.\n\n"
