import pytest

from localdpo.studio.errors import StudioError
from localdpo.studio.session import AnswerSession, Sampling, Segment, TaskContext
from localdpo.tasks import get_task


def segment_of(pieces: list[str], start_text: str = "", tokenizer=None) -> Segment:
    segment = Segment(0, start_text, [], tokenizer)
    segment.pieces = list(pieces)
    segment.finished.set()
    return segment


def test_split_keeps_a_words_leading_space_before_the_cut():
    segment = segment_of(["1", ".", " High", "-quality", "\n", " ", "x"])
    assert segment.split(2) == 3  # "1. " | "High-quality"
    assert segment.split(3) == 7  # no space: at the token boundary
    assert segment.split(5) == 16  # a lone space token is cut before, like any other token
    assert segment.split(7) == len(segment.text)
    assert segment.cut_before(3) == 2 and segment.cut_before(2) == 1


def test_split_skips_tokens_that_hold_no_text_yet():
    segment = segment_of(["a", "", " 😀"])
    assert segment.split(1) == segment.split(2) == 2


class _Runner:
    """What AnswerSession needs of a runner to build steers (no generation here)."""

    def __init__(self, tokenizer):
        self.tokenizer = tokenizer
        self.name, self.label, self.round = "m", "m@0123456789ab", 1


def addition_session(tokenizer) -> AnswerSession:
    task = get_task("addition")
    context = TaskContext(task, task.build(797, "+", 953))
    messages = [{"role": "user", "content": context.prompt.text}]
    return AnswerSession("s", messages, Sampling(), context, _Runner(tokenizer))


def test_the_checker_suggests_a_cut_and_its_correction(smol_tokenizer):
    session = addition_session(smol_tokenizer)
    segment = segment_of(["The", " sum", ":", " 797", " +", " 953", " =", " 1768", ".", " Done"])
    session.segments = [segment]
    suggestion = session.suggest(segment, complete=True)
    assert (suggestion.cut, suggestion.chosen, suggestion.found, suggestion.expected) == (
        7,
        "1750",
        "1768",
        "1750",
    )
    steer, warnings = session.steer_at(segment, suggestion.cut, suggestion.chosen, False)
    assert warnings == []
    assert (steer.rejected_by, steer.round) == ("m@0123456789ab", 1)
    assert (steer.prefix, steer.rejected, steer.chosen) == ("The sum: 797 + 953 = ", "1768. Done", "1750")
    assert steer.meta["task"] == "addition" and steer.meta["prompt_id"] == "addition/797+953"


def test_a_mistake_in_text_already_corrected_suggests_nothing(smol_tokenizer):
    session = addition_session(smol_tokenizer)
    segment = segment_of([".", " Done"], start_text="797 + 953 = 1768")
    session.segments = [segment]
    assert session.suggest(segment, complete=True) is None


def test_the_prefix_holds_earlier_corrections(smol_tokenizer):
    session = addition_session(smol_tokenizer)
    segment = segment_of([" =", " 1750", "."], start_text="So 797 + 953")
    session.segments = [segment]
    steer = session.steer_at(segment, 2, ", the sum.", True)[0]
    assert (steer.prefix, steer.rejected, steer.chosen_complete) == ("So 797 + 953 = 1750", ".", True)


def test_steers_nothing_corrected_or_out_of_range_are_refused(smol_tokenizer):
    session = addition_session(smol_tokenizer)
    segment = segment_of([" 5", "."])
    session.segments = [segment]
    with pytest.raises(StudioError, match="nothing was corrected") as same:
        session.steer_at(segment, 0, "5.", False)
    assert same.value.status == 400
    with pytest.raises(StudioError, match=r"field 'cut': 3 is outside 0..2"):
        session.steer_at(segment, 3, "x", False)
    segment.steered = True
    with pytest.raises(StudioError, match="already steered") as again:
        session.steer_at(segment, 0, "6", False)
    assert again.value.status == 409


def test_a_cut_at_the_end_of_a_finished_answer_rejects_its_end_of_turn(smol_tokenizer):
    """The model ended too early: the steer adds text where it wrote its end-of-turn token."""
    session = addition_session(smol_tokenizer)
    segment = segment_of(["797", " +", " 953", " ="])
    segment.complete = True
    session.segments = [segment]
    steer, _ = session.steer_at(segment, 4, " 1750", False)
    assert (steer.prefix, steer.rejected, steer.rejected_complete, steer.chosen) == (
        "797 + 953 =",
        "",
        True,
        " 1750",
    )


def test_a_steer_differing_only_by_end_of_turn_is_warned(smol_tokenizer):
    """The model ended its turn after "797 + 953 = 1750"; a correction of the same text without the end of
    turn would train it not to stop."""
    session = addition_session(smol_tokenizer)
    segment = segment_of(["797", " +", " 953", " =", " 1750"])
    segment.complete = True
    session.segments = [segment]
    steer, warnings = session.steer_at(segment, 4, "1750", False)
    assert (steer.rejected, steer.rejected_complete) == ("1750", True)
    assert warnings == [
        "the correction is what the model wrote without its end of turn: this steer trains the model not to "
        "stop here"
    ]
    segment.complete = False  # stopped there: the same text with an end of turn only teaches stopping
    assert "only trains the model to stop here" in session.steer_at(segment, 4, "1750", True)[1][0]


def test_a_correction_that_is_the_start_of_the_rejected_text_is_warned(smol_tokenizer):
    """`1750` cut before " 1750. Done" corrected to "1750." scores no chosen token (it is what the model wrote)."""
    session = addition_session(smol_tokenizer)
    segment = segment_of(["797", " +", " 953", " =", " 1750", ".", " Done"])
    session.segments = [segment]
    _, warnings = session.steer_at(segment, 4, "1750.", False)
    assert warnings == [
        "the correction is the start of what the model wrote: the steer would only push the model's own "
        "continuation down"
    ]
    assert session.steer_at(segment, 4, "1760.", False)[1] == []


def test_a_character_split_by_the_token_limit_is_never_saved(smol_tokenizer):
    """SmolLM2 writes " 🎉" as two tokens; a limit after the first leaves an incomplete character (U+FFFD when
    decoded): the rejected side ends at the last whole character, and saving it needs a confirmation."""
    ids = smol_tokenizer("Yes 🎉", add_special_tokens=False)["input_ids"]
    assert smol_tokenizer.decode(ids[:-1]) == "Yes \ufffd"
    session = addition_session(smol_tokenizer)
    segment = Segment(0, "", [], smol_tokenizer)
    for token in ids[:-1]:
        segment.push(token)
    segment.settle()
    segment.finished.set()
    session.segments = [segment]
    assert (segment.text, segment.split_tail) == ("Yes ", "\ufffd")
    steer, warnings = session.steer_at(segment, 0, "No", False)
    assert steer.rejected == "Yes " and "\ufffd" not in steer.rejected
    assert warnings == [
        "the model's last token ends in a split character (cut by the stop or the token limit): it is left "
        "out, the rejected side ends at the last whole character"
    ]
