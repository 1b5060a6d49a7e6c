"""Tasks whose answer is a list: running sums, multiples, words sorted alphabetically."""

from __future__ import annotations

import itertools
import random

from localdpo.tasks.base import Correction, Judgement, Mistake, MistakeKind, Task, TaskPrompt, Verdict
from localdpo.tasks.parsing import NUMBER, WORD, ItemList, find_lists


class ListTask(Task):
    """A task answered by a list of items, checked item by item against `TaskPrompt.answer`."""

    item_pattern: str = NUMBER
    items_end_clause: bool = False
    """Passed to `find_lists(ends_clause=...)`."""

    def normalize(self, item: str) -> str:
        return item

    def format_item(self, expected: str, found: str) -> str:
        """The expected item written the way the model wrote the one it replaces."""
        return expected

    def answer_list(self, prompt: TaskPrompt, output: str, *, complete: bool = True) -> ItemList | None:
        """The list judged as the answer: the first one, skipping a restatement of the input if more follow.

        With `complete=False` a last list that is (a prefix of) the restated input is not judged yet: the
        real answer may still follow it.
        """
        lists = find_lists(output, self.item_pattern, ends_clause=self.items_end_clause)
        echo = [self.normalize(x) for x in prompt.data.get("echo", ())]

        def values(lst: ItemList) -> list[str]:
            return [self.normalize(i.text) for i in lst.items]

        while len(lists) > 1 and values(lists[0]) == echo:
            lists = lists[1:]
        if not lists:
            return None
        if not complete and echo and len(lists) == 1 and values(lists[0]) == echo[: len(lists[0].items)]:
            return None
        return lists[0]

    def check(self, prompt: TaskPrompt, output: str, *, complete: bool = True) -> Judgement:
        found = self.answer_list(prompt, output, complete=complete)
        if found is None:
            return Judgement(Verdict.UNCHECKABLE, reason="no list of at least two items")
        items = list(found.items)
        if not complete and items[-1].end == len(output):
            items.pop()  # may be a number cut in the middle
        expected = prompt.answer
        for i, (item, want) in enumerate(zip(items, expected)):
            if self.normalize(item.text) != self.normalize(want):
                mistake = Mistake(i, item.start, item.end, MistakeKind.WRONG, item.text, want)
                return Judgement(Verdict.WRONG, mistake, items_found=len(items))
        if len(items) > len(expected):
            extra = items[len(expected)]
            start = items[len(expected) - 1].end
            mistake = Mistake(
                len(expected), start, extra.end, MistakeKind.EXTRA, output[start : extra.end], ""
            )
            return Judgement(Verdict.WRONG, mistake, items_found=len(items))
        if len(items) < len(expected):
            if not complete:
                return Judgement(
                    Verdict.UNCHECKABLE, items_found=len(items), reason="cut off before the last item"
                )
            end = items[-1].end
            mistake = Mistake(len(items), end, end, MistakeKind.MISSING, "", expected[len(items)])
            return Judgement(Verdict.WRONG, mistake, items_found=len(items))
        return Judgement(Verdict.CORRECT, items_found=len(items))

    def correct(self, prompt: TaskPrompt, output: str, mistake: Mistake) -> Correction:
        if mistake.kind is MistakeKind.WRONG:
            return Correction(self.format_item(mistake.expected, mistake.found))
        found = self.answer_list(prompt, output)
        if found is None:
            raise ValueError("the output has no answer list: nothing to correct")
        if mistake.kind is MistakeKind.MISSING:
            last = found.items[-1].text
            return Correction(found.separator + self.format_item(mistake.expected, last))
        return Correction("." if found.style in ("inline", "numbered_inline") else "", ends_answer=True)


def _join(values) -> str:
    return ", ".join(str(v) for v in values)


class RunningSum(ListTask):
    name = "running_sum"
    description = "running totals of a list of small numbers"
    max_new_tokens = 64

    def sample(self, rng: random.Random) -> TaskPrompt:
        return self.build([rng.randint(1, 9) for _ in range(rng.randint(4, 6))])

    def build(self, values: list[int]) -> TaskPrompt:
        """The prompt for the running totals of `values`."""
        totals = list(itertools.accumulate(values))
        text = (
            f"Compute the running totals of the list {_join(values)}. "
            "Answer with the list of running totals, separated by commas."
        )
        return TaskPrompt(
            id=f"running_sum/{'-'.join(map(str, values))}",
            task=self.name,
            text=text,
            answer=tuple(str(t) for t in totals),
            data={"values": values, "echo": [str(v) for v in values]},
        )

    def from_id_body(self, body: str) -> TaskPrompt:
        return self.build([int(v) for v in body.split("-")])


class Multiples(ListTask):
    name = "multiples"
    description = "the first n multiples of k"
    max_new_tokens = 80

    def sample(self, rng: random.Random) -> TaskPrompt:
        k = rng.randint(2, 300)
        return self.build(k, rng.randint(5, 8))

    def build(self, k: int, n: int) -> TaskPrompt:
        """The prompt for the first `n` multiples of `k`."""
        return TaskPrompt(
            id=f"multiples/k={k},n={n}",
            task=self.name,
            text=f"List the first {n} multiples of {k}.",
            answer=tuple(str(k * i) for i in range(1, n + 1)),
            data={"k": k, "n": n},
        )

    def from_id_body(self, body: str) -> TaskPrompt:
        k, n = (part.partition("=") for part in body.split(","))
        if (k[0], n[0]) != ("k", "n"):
            raise ValueError(body)
        return self.build(int(k[2]), int(n[2]))


WORDS = (
    "apple bread candle dragon eagle forest garden harbor island jacket kettle lemon mountain needle ocean "
    "pencil quartz river saddle table umbrella valley window yellow zebra anchor button cloud desert engine "
    "feather guitar hammer iron jungle kitten ladder marble number orange pepper rabbit silver tiger velvet "
    "wagon basket cotton dinner finger honey insect monkey nickel onion puzzle rocket summer tunnel"
).split()


class SortWords(ListTask):
    name = "sort_words"
    description = "sort a few words alphabetically"
    item_pattern = WORD
    items_end_clause = True
    max_new_tokens = 64

    def normalize(self, item: str) -> str:
        return item.lower()

    def format_item(self, expected: str, found: str) -> str:
        if found[:1].isupper():
            return expected.upper() if found.isupper() and len(found) > 1 else expected.capitalize()
        return expected

    def sample(self, rng: random.Random) -> TaskPrompt:
        return self.build(rng.sample(WORDS, rng.randint(4, 5)))

    def build(self, words: list[str]) -> TaskPrompt:
        """The prompt asking to sort `words`."""
        return TaskPrompt(
            id=f"sort_words/{'-'.join(words)}",
            task=self.name,
            text=f"Sort these words in alphabetical order: {', '.join(words)}.",
            answer=tuple(sorted(words)),
            data={"words": words, "echo": words},
        )

    def from_id_body(self, body: str) -> TaskPrompt:
        words = body.split("-")
        if not all(word.isalpha() for word in words):
            raise ValueError(body)
        return self.build(words)
