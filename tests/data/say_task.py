"""A task the random `tiny` model gets wrong at its first token: say a number. For tests of steering in rounds
(`localdpo.compare.rounds`), where every round needs mistakes to steer."""

import random

from localdpo.tasks import Correction, Judgement, Mistake, MistakeKind, Task, TaskPrompt, Verdict


class Say(Task):
    name = "say"
    description = "say a three-digit number"
    max_new_tokens = 6

    def sample(self, rng: random.Random) -> TaskPrompt:
        return self.build(rng.randint(100, 999))

    def build(self, n: int) -> TaskPrompt:
        return TaskPrompt(f"say/{n}", self.name, f"Say {n}.", (str(n),), {"n": n})

    def from_id_body(self, body: str) -> TaskPrompt:
        return self.build(int(body))

    def check(self, prompt: TaskPrompt, output: str, *, complete: bool = True) -> Judgement:
        """Right when the answer starts with the number; else wrong at its first word, or the whole answer when
        it is blank (an empty answer, or a cut-off one that is still a start of the number, cannot be judged)."""
        expected = prompt.answer[0]
        if output.startswith(expected):
            return Judgement(Verdict.CORRECT, items_found=1)
        if not output or (not complete and expected.startswith(output)):
            return Judgement(Verdict.UNCHECKABLE, reason="nothing said yet")
        words = output.split()
        end = output.index(words[0]) + len(words[0]) if words else len(output)
        return Judgement(
            Verdict.WRONG, Mistake(0, 0, end, MistakeKind.WRONG, output[:end], expected), items_found=1
        )

    def correct(self, prompt: TaskPrompt, output: str, mistake: Mistake) -> Correction:
        return Correction(mistake.expected)
