"""`localdpo.tasks.lists`: the list tasks' checkers and correctors on hand-written outputs."""

from localdpo.tasks import MistakeKind, Verdict, get_task
from localdpo.tasks.parsing import NUMBER, WORD, find_lists

RUN = get_task("running_sum")
MUL = get_task("multiples")
SORT = get_task("sort_words")


def apply(output, mistake, correction):
    return output[: mistake.start] + correction.text + output[mistake.end :]


def test_running_sum_prompt():
    prompt = RUN.build([3, 2, 5, 2, 8])
    assert prompt.answer == ("3", "5", "10", "12", "20")
    assert prompt.id == "running_sum/3-2-5-2-8"


def test_running_sum_right_in_every_form():
    prompt = RUN.build([3, 2, 5, 2, 8])
    for output in [
        "3, 5, 10, 12, 20",
        "The list of running totals is 3, 5, 10, 12, and 20.",
        "Running totals:\n1. 3\n2. 5\n3. 10\n4. 12\n5. 20",
        "The running totals of 3, 2, 5, 2, 8 are 3, 5, 10, 12, 20.",  # restated input skipped
    ]:
        assert RUN.check(prompt, output).verdict is Verdict.CORRECT, output


def test_running_sum_echo_of_the_input_is_judged_when_it_is_the_only_list():
    """The model often answers with the input list itself: that is its answer, wrong from item 1."""
    prompt = RUN.build([3, 2, 5, 2, 8])
    output = "The list of running totals is 3, 2, 5, 2, 8."
    judgement = RUN.check(prompt, output)
    assert judgement.verdict is Verdict.WRONG and judgement.first_item_correct
    mistake = judgement.mistake
    assert (mistake.item, mistake.found, mistake.expected, output[mistake.start : mistake.end]) == (
        1,
        "2",
        "5",
        "2",
    )
    assert (
        apply(output, mistake, RUN.correct(prompt, output, mistake))
        == "The list of running totals is 3, 5, 5, 2, 8."
    )


def test_running_sum_wrong_first_and_middle_item():
    prompt = RUN.build([3, 2, 5, 2, 8])
    first = RUN.check(prompt, "4, 5, 10, 12, 20")
    assert first.mistake.item == 0 and not first.first_item_correct
    middle = RUN.check(prompt, "Totals:\n1. 3\n2. 5\n3. 11\n4. 12\n5. 20")
    assert (middle.mistake.item, middle.mistake.found, middle.mistake.start) == (
        2,
        "11",
        len("Totals:\n1. 3\n2. 5\n3. "),
    )


def test_running_sum_truncated_and_garbage():
    prompt = RUN.build([3, 2, 5, 2, 8])
    cut = "The running totals are 3, 5, 10, 1"
    assert RUN.check(prompt, cut, complete=False).verdict is Verdict.UNCHECKABLE
    judgement = RUN.check(prompt, cut, complete=True)
    assert judgement.mistake.item == 3 and judgement.mistake.found == "1"
    for garbage in ["The running sum of the list is 15.", "I cannot do that.", ""]:
        assert RUN.check(prompt, garbage).verdict is Verdict.UNCHECKABLE, garbage


def test_multiples_right_inline_and_numbered():
    prompt = MUL.build(7, 5)
    assert prompt.answer == ("7", "14", "21", "28", "35") and prompt.id == "multiples/k=7,n=5"
    assert (
        MUL.check(prompt, "The first 5 multiples of 7 are 7, 14, 21, 28, and 35.").verdict is Verdict.CORRECT
    )
    assert MUL.check(prompt, "1. 7\n2. 14\n3. 21\n4. 28\n5. 35").verdict is Verdict.CORRECT


def test_multiples_wrong_middle_item_inline():
    prompt = MUL.build(7, 8)
    output = "The first 8 multiples of 7 are 7, 14, 21, 28, 45, 63, 81, and 98."
    judgement = MUL.check(prompt, output)
    mistake = judgement.mistake
    assert (mistake.item, mistake.found, mistake.expected) == (4, "45", "35")
    assert output[: mistake.start].endswith("28, ") and output[mistake.end :].startswith(", 63")
    assert judgement.items_found == 8


def test_multiples_wrong_first_item_numbered():
    prompt = MUL.build(12, 3)
    judgement = MUL.check(prompt, "1. 1\n2. 24\n3. 36")
    assert judgement.mistake.item == 0 and judgement.mistake.found == "1" and judgement.mistake.start == 3


def test_multiples_missing_item_is_inserted_with_the_list_separator():
    prompt = MUL.build(3, 4)
    inline = "They are 3, 6, 9."
    judgement = MUL.check(prompt, inline)
    mistake = judgement.mistake
    assert mistake.kind is MistakeKind.MISSING and mistake.start == mistake.end == len("They are 3, 6, 9")
    assert apply(inline, mistake, MUL.correct(prompt, inline, mistake)) == "They are 3, 6, 9, 12."
    numbered = "1. 3\n2. 6\n3. 9"
    mistake = MUL.check(prompt, numbered).mistake
    assert apply(numbered, mistake, MUL.correct(prompt, numbered, mistake)) == "1. 3\n2. 6\n3. 9\n4. 12"


def test_multiples_extra_items_end_the_answer():
    prompt = MUL.build(3, 3)
    output = "The first 3 multiples of 3 are 3, 6, 9, 12, 15"
    judgement = MUL.check(prompt, output)
    mistake = judgement.mistake
    assert mistake.kind is MistakeKind.EXTRA and mistake.item == 3 and mistake.found == ", 12"
    correction = MUL.correct(prompt, output, mistake)
    assert (
        correction.ends_answer
        and output[: mistake.start] + correction.text == "The first 3 multiples of 3 are 3, 6, 9."
    )


def test_multiples_truncated_and_garbage():
    prompt = MUL.build(9, 8)
    cut = "The first 8 multiples of 9 are 9, 18, 27, 3"
    assert MUL.check(prompt, cut, complete=False).verdict is Verdict.UNCHECKABLE
    assert MUL.check(prompt, "The first 8 multiples of 9 are 9, 18, 27, 36", complete=False).reason
    assert MUL.check(prompt, "Multiples are numbers.").verdict is Verdict.UNCHECKABLE


def test_sort_words_right_any_case_and_form():
    prompt = SORT.build(["dog", "orange", "garden", "table"])
    assert prompt.answer == ("dog", "garden", "orange", "table")
    for output in [
        "dog, garden, orange, table",
        "1. Dog\n2. Garden\n3. Orange\n4. Table",
        "The words are:\n- dog\n- garden\n- orange\n- table",
        "Sort these words: dog, orange, garden, table. Sorted: dog, garden, orange, and table.",
    ]:
        assert SORT.check(prompt, output).verdict is Verdict.CORRECT, output


def test_sort_words_wrong_first_item_keeps_the_models_capitalisation():
    prompt = SORT.build(["dog", "orange", "garden", "table"])
    output = "1. Orange\n2. Dog\n3. Garden\n4. Table"
    mistake = SORT.check(prompt, output).mistake
    assert (mistake.item, mistake.found, mistake.expected) == (0, "Orange", "dog")
    assert SORT.correct(prompt, output, mistake).text == "Dog"


def test_sort_words_wrong_middle_and_missing():
    prompt = SORT.build(["table", "river", "cloud", "pencil", "window"])
    output = "The words are: cloud, pencil, table, river."
    mistake = SORT.check(prompt, output).mistake
    assert (mistake.item, mistake.found, mistake.expected) == (2, "table", "river")
    missing = "The words are: cloud, pencil, river, table."
    mistake = SORT.check(prompt, missing).mistake
    assert mistake.kind is MistakeKind.MISSING
    assert apply(missing, mistake, SORT.correct(prompt, missing, mistake)) == (
        "The words are: cloud, pencil, river, table, window."
    )


def test_sort_words_inline_numbered_and_quoted_lists():
    """SmolLM2 also numbers an inline list ("1. Cloud, 2. Pencil") or quotes its items ('"cloud", "pencil"')."""
    prompt = SORT.build(["table", "river", "cloud", "pencil"])
    right = "Here they are: 1. Cloud, 2. Pencil, 3. River, and 4. Table."
    assert SORT.check(prompt, right).verdict is Verdict.CORRECT
    wrong = "Here they are: 1. Cloud, 2. Pencil, 3. Table, 4. River."
    mistake = SORT.check(prompt, wrong).mistake
    assert (mistake.item, mistake.found, mistake.expected) == (2, "Table", "river")
    assert apply(wrong, mistake, SORT.correct(prompt, wrong, mistake)) == (
        "Here they are: 1. Cloud, 2. Pencil, 3. River, 4. River."
    )
    missing = "1. cloud, 2. pencil, 3. river"
    mistake = SORT.check(prompt, missing).mistake
    assert mistake.kind is MistakeKind.MISSING
    assert (
        apply(missing, mistake, SORT.correct(prompt, missing, mistake))
        == "1. cloud, 2. pencil, 3. river, 4. table"
    )
    (found,) = find_lists("1. cloud, 2. pencil, 3. river", WORD, ends_clause=True)
    assert found.style == "numbered_inline" and found.separator == ", 4. "
    quoted = 'In order: "cloud", "pencil", "river".'
    mistake = SORT.check(prompt, quoted).mistake
    assert mistake.kind is MistakeKind.MISSING
    assert apply(quoted, mistake, SORT.correct(prompt, quoted, mistake)) == (
        'In order: "cloud", "pencil", "river", "table".'
    )
    (found,) = find_lists('1. "cloud", 2. "pencil".', WORD, ends_clause=True)
    assert found.separator == '", 3. "'
    # number lists keep plain inline parsing: their markers would read as items
    assert [[i.text for i in lst.items] for lst in find_lists("1. 3, 2. 6", NUMBER)] == [["3", "2"]]


def test_sort_words_truncated_and_garbage():
    prompt = SORT.build(["table", "river", "cloud", "pencil"])
    assert SORT.check(prompt, "1. cloud\n2. penc", complete=False).verdict is Verdict.UNCHECKABLE
    assert SORT.check(prompt, "The words in order are: 1. garden. 2. zebra.").verdict is Verdict.UNCHECKABLE
    assert SORT.check(prompt, "Alphabetical order is useful.").verdict is Verdict.UNCHECKABLE


def test_partial_restatement_of_the_input_is_not_judged_yet():
    prompt = RUN.build([3, 2, 5, 2, 8])
    assert RUN.check(prompt, "The running totals of 3, 2, 5,", complete=False).verdict is Verdict.UNCHECKABLE
    assert (
        RUN.check(prompt, "The running totals of 3, 2, 5, 2, 8 are 3, 5, 9,", complete=False).mistake.found
        == "9"
    )
