"""A task of one's own: spell a word letter by letter, hyphens between the letters (docs/tasks.md).

localdpo tasks --task examples/tasks/spell.py:Spell        # loads and checks it against the protocol
localdpo eval --task examples/tasks/spell.py:Spell --n 30
localdpo make-steers --task examples/tasks/spell.py:Spell --n 80 --out spell_steers.jsonl
localdpo compare --preset cpu --task examples/tasks/spell.py:Spell steers.train_prompts=90 steers.heldout_prompts=33
"""

import random
import re

from localdpo.tasks import Correction, Judgement, Mistake, MistakeKind, Task, TaskPrompt, Verdict

WORDS = (
    "anchor apple autumn badger basket beacon bottle branch bridge bucket butter button cabin camera candle "
    "canyon carpet carrot castle cellar cherry chimney circle closet clover cobweb coffee collar copper "
    "cotton cradle crayon cricket dinner doctor donkey dragon drawer engine fabric falcon farmer feather "
    "fiddle finger flower forest fossil garden garlic ginger glacier goblet gravel guitar hammer harbor "
    "helmet hollow honey insect island jacket jigsaw jungle kennel kettle kitten ladder lantern lemon lizard "
    "locket magnet maple marble market meadow mitten mirror monkey mustard needle nickel number oyster "
    "orange paddle palace parrot peanut pebble pencil pepper pickle pillow pirate planet pocket potato "
    "pumpkin puzzle rabbit radish ribbon river rocket saddle salmon sandal school shadow shovel silver "
    "singer spider spring squirrel statue summer sunset sweater table teapot thunder ticket tiger timber "
    "tomato tunnel turnip turtle valley velvet violin wagon walnut walrus window winter wizard yellow zipper"
).split()

HYPHENATED = re.compile(r"[A-Za-z]+(?:\s*-\s*[A-Za-z]+)+")
"""Letters or chunks of letters joined by hyphens ("g-a-r", "G - A - R", "Ga-R-D", "step-by-step")."""
CHUNK = re.compile(r"[A-Za-z]+")


def spelled_letters(output: str) -> list[re.Match]:
    """The items of the first spelling in `output`: the chunks of the first hyphen-joined run that holds a
    lone letter (so "step-by-step" is prose, not a spelling); empty when there is none.

    E.g. "Sure: g-a-r-d-n." -> g, a, r, d, n; "Garden: Ga-R-D-E-N" -> Ga, R, D, E, N (the first item is
    wrong: two letters where one belongs)."""
    for run in HYPHENATED.finditer(output):
        chunks = list(CHUNK.finditer(output, run.start(), run.end()))
        if any(len(chunk[0]) == 1 for chunk in chunks):
            return chunks
    return []


class Spell(Task):
    name = "spell"
    description = "spell a word letter by letter, separated by hyphens"
    max_new_tokens = 48

    def sample(self, rng: random.Random) -> TaskPrompt:
        return self.build(rng.choice(WORDS))

    def build(self, word: str) -> TaskPrompt:
        """The prompt asking to spell `word`; its id decides its split (train, validation or held-out)."""
        return TaskPrompt(
            id=f"spell/{word}",
            task=self.name,
            text=f"Spell the word '{word}' letter by letter, with a hyphen between the letters.",
            answer=tuple(word),
            data={"word": word},
        )

    def from_id_body(self, body: str) -> TaskPrompt:
        if not body.isalpha():
            raise ValueError(body)
        return self.build(body)

    def check(self, prompt: TaskPrompt, output: str, *, complete: bool = True) -> Judgement:
        letters = spelled_letters(output)
        if not letters:
            return Judgement(Verdict.UNCHECKABLE, reason="no letters joined by hyphens")
        if not complete and letters[-1].end() == len(output):
            letters.pop()  # the last letter may be the start of a word still being written
        expected = prompt.answer
        for i, (found, want) in enumerate(zip(letters, expected)):
            if found[0].lower() != want:  # a wrong letter, or several letters where one belongs
                mistake = Mistake(i, found.start(), found.end(), MistakeKind.WRONG, found[0], want)
                return Judgement(Verdict.WRONG, mistake, items_found=len(letters))
        if len(letters) > len(expected):  # a letter too many: the answer should have ended before it
            start, end = letters[len(expected) - 1].end(), letters[len(expected)].end()
            mistake = Mistake(len(expected), start, end, MistakeKind.EXTRA, output[start:end], "")
            return Judgement(Verdict.WRONG, mistake, items_found=len(letters))
        if len(letters) < len(expected):
            if not complete:
                return Judgement(Verdict.UNCHECKABLE, items_found=len(letters), reason="cut off")
            end = letters[-1].end()
            mistake = Mistake(len(letters), end, end, MistakeKind.MISSING, "", expected[len(letters)])
            return Judgement(Verdict.WRONG, mistake, items_found=len(letters))
        return Judgement(Verdict.CORRECT, items_found=len(letters))

    def correct(self, prompt: TaskPrompt, output: str, mistake: Mistake) -> Correction:
        if mistake.kind is MistakeKind.EXTRA:
            return Correction("", ends_answer=True)
        letter = mistake.expected
        if mistake.kind is MistakeKind.MISSING:
            written = spelled_letters(output)[-1][0]
            return Correction("-" + (letter.upper() if written[:1].isupper() else letter))
        return Correction(letter.upper() if mistake.found[:1].isupper() else letter)
