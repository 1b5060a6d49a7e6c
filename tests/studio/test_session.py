import pytest

from localdpo.studio.errors import StudioError
from localdpo.studio.session import AnswerSession, Sampling, Segment, TaskContext
from localdpo.tasks import get_task


def segment_of(pieces: list[str], start_text: str = "") -> Segment:
    segment = Segment(0, start_text)
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
    steer = session.steer_at(segment, suggestion.cut, suggestion.chosen, False, "m")
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
    steer = session.steer_at(segment, 2, ", the sum.", True, "m")
    assert (steer.prefix, steer.rejected, steer.chosen_complete) == ("So 797 + 953 = 1750", ".", True)


def test_steers_nothing_corrected_or_out_of_range_are_refused(smol_tokenizer):
    session = addition_session(smol_tokenizer)
    segment = segment_of([" 5", "."])
    session.segments = [segment]
    with pytest.raises(StudioError, match="nothing was corrected") as same:
        session.steer_at(segment, 0, "5.", False, "m")
    assert same.value.status == 400
    with pytest.raises(StudioError, match=r"field 'cut': 3 is outside 0..2"):
        session.steer_at(segment, 3, "x", False, "m")
    segment.steered = True
    with pytest.raises(StudioError, match="already steered") as again:
        session.steer_at(segment, 0, "6", False, "m")
    assert again.value.status == 409


def test_a_cut_at_the_end_of_a_finished_answer_rejects_its_end_of_turn(smol_tokenizer):
    """The model ended too early: the steer adds text where it wrote its end-of-turn token."""
    session = addition_session(smol_tokenizer)
    segment = segment_of(["797", " +", " 953", " ="])
    segment.complete = True
    session.segments = [segment]
    steer = session.steer_at(segment, 4, " 1750", False, "m")
    assert (steer.prefix, steer.rejected, steer.rejected_complete, steer.chosen) == (
        "797 + 953 =",
        "",
        True,
        " 1750",
    )
