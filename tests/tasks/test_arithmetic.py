"""`localdpo.tasks.arithmetic`: the addition checker and corrector on hand-written outputs."""

import pytest

from localdpo.tasks import Verdict, get_task

ADD = get_task("addition")


def apply(output, mistake, correction):
    return output[: mistake.start] + correction.text + output[mistake.end :]


def test_addition_prompt_and_answer():
    prompt = ADD.build(874, "+", 404)
    assert prompt.id == "addition/874+404"
    assert prompt.answer == ("1278",)
    assert ADD.build(513, "-", 434).answer == ("79",)


@pytest.mark.parametrize(
    "output",
    [
        "874 + 404 = 1278",
        "To solve this equation, we can use the equation 874 + 404 = 1278.\n\nThis equation represents",
        "The answer is 874 + 404 = 1,278.",
    ],
)
def test_addition_right(output):
    assert ADD.check(ADD.build(874, "+", 404), output).verdict is Verdict.CORRECT


def test_addition_wrong_inside_sentence_points_at_result_and_corrects_it():
    prompt = ADD.build(874, "+", 404)
    output = "To solve this equation, we can use the equation 874 + 404 = 1688.\n\nThis"
    judgement = ADD.check(prompt, output)
    assert judgement.verdict is Verdict.WRONG
    mistake = judgement.mistake
    start = len("To solve this equation, we can use the equation 874 + 404 = ")  # 60
    assert (mistake.start, mistake.end, mistake.found, mistake.item) == (start, start + 4, "1688", 0)
    assert not judgement.first_item_correct
    correction = ADD.correct(prompt, output, mistake)
    assert apply(output, mistake, correction).endswith("874 + 404 = 1278.\n\nThis")


def test_addition_judges_first_equation_with_the_prompt_operands():
    prompt = ADD.build(591, "-", 258)
    judgement = ADD.check(prompt, "First 2 + 2 = 4, then 591 - 258 = 258 + 258 = 591")
    assert judgement.mistake.found == "258" and judgement.mistake.expected == "333"
    assert judgement.mistake.start == len("First 2 + 2 = 4, then 591 - 258 = ")


def test_addition_truncated_and_garbage_are_uncheckable():
    prompt = ADD.build(513, "-", 434)
    cut = "The equation 513 - 434 = 7"
    assert ADD.check(prompt, cut, complete=False).verdict is Verdict.UNCHECKABLE
    assert ADD.check(prompt, cut, complete=True).verdict is Verdict.WRONG  # the model ended there
    for garbage in [
        "To solve this equation, we need to isolate the variable",
        "",
        "513 - 434",
        "434 - 513 = -79",
    ]:
        judgement = ADD.check(prompt, garbage)
        assert judgement.verdict is Verdict.UNCHECKABLE and judgement.mistake is None, garbage
