"""A task of one's own: spell a word letter by letter, hyphens between the letters (docs/tasks.md).

localdpo tasks --task examples/tasks/spell.py:Spell        # loads and checks it against the protocol
localdpo eval --task examples/tasks/spell.py:Spell --n 30
localdpo make-steers --task examples/tasks/spell.py:Spell --n 80 --out spell_steers.jsonl
localdpo compare --preset cpu --task examples/tasks/spell.py:Spell
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

LETTER = re.compile(r"(?<![A-Za-z])[A-Za-z](?![A-Za-z])")
"""A letter standing alone: no letter right before or after it."""
HYPHEN_GAP = re.compile(r"\s*-\s*")
"""What stands between two letters of one spelling ("g-a-r", "G - A - R")."""


def spelled_letters(output: str) -> list[re.Match]:
    """The first run of two or more lone letters joined by hyphens in `output` (empty when there is none).

    E.g. "Sure: g-a-r-d-n." -> the matches of g, a, r, d, n (the "S" of "Sure" is no lone letter)."""
    run: list[re.Match] = []
    for match in LETTER.finditer(output):
        if run and HYPHEN_GAP.fullmatch(output[run[-1].end() : match.start()]):
            run.append(match)
            continue
        if len(run) >= 2:
            break
        run = [match]
    return run if len(run) >= 2 else []


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
            if found[0].lower() != want:
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
            return Correction("-" + (letter.upper() if written.isupper() else letter))
        return Correction(letter.upper() if mistake.found.isupper() else letter)
