"""`localdpo.tasks.parsing`: lists found in free text, in the forms SmolLM2-135M-Instruct really writes."""

from localdpo.tasks import get_task
from localdpo.tasks.parsing import NUMBER, WORD, find_lists

SORT = get_task("sort_words")


def test_find_lists_inline_numbered_bullets():
    (inline,) = find_lists("The first 3 multiples of 7 are 7, 14, and 21.", NUMBER)
    assert [i.text for i in inline.items] == ["7", "14", "21"]
    assert inline.style == "inline" and inline.separator == ", "
    text = "Here:\n1. 12\n2. 18\n\n3. 24\nDone"
    (numbered,) = find_lists(text, NUMBER)
    assert [i.text for i in numbered.items] == ["12", "18", "24"]
    assert [text[i.start : i.end] for i in numbered.items] == ["12", "18", "24"]
    assert numbered.separator == "\n4. "
    (bullets,) = find_lists("Sorted:\n- river\n- pencil", WORD)
    assert [i.text for i in bullets.items] == ["river", "pencil"] and bullets.separator == "\n- "


def test_find_lists_ignores_single_numbers_and_decimals():
    assert find_lists("The first 8 multiples of 3 is 15.", NUMBER) == []
    assert find_lists("values 1.5, 2.5", NUMBER) == []


def test_word_runs_followed_by_more_words_are_no_list():
    """Regression: "Alphabetically, the words are: eagle, ..." was judged as the list ["Alphabetically", "the"]."""
    prompt = SORT.build(["eagle", "lemon", "window", "apple"])
    output = "Alphabetically, the words in order are: eagle, lemon, window, apple."
    mistake = SORT.check(prompt, output).mistake
    assert (mistake.item, mistake.found) == (0, "eagle")
    assert [i.text for i in find_lists("3, 2, 5 are the values", NUMBER)[0].items] == ["3", "2", "5"]
