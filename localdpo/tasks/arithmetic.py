"""Multi-digit addition and subtraction, answered as an equation `a + b = c` (often inside a sentence)."""

from __future__ import annotations

import random
import re

from localdpo.tasks.base import Correction, Judgement, Mistake, MistakeKind, Task, TaskPrompt, Verdict

# a (+|-) b = c, c possibly with thousands commas ("1,278"); operators as the model writes them.
_EQUATION = re.compile(
    r"(?<![\w.])(?P<a>-?\d+)\s*(?P<op>[+\-\u2212])\s*(?P<b>-?\d+)\s*(?:=|equals)\s*"
    r"(?P<c>-?\d{1,3}(?:,\d{3})+(?![\d,]\d)|-?\d+)(?!\.\d)"
)

_ID_BODY = re.compile(r"(?P<a>-?\d+)(?P<op>[+-])(?P<b>-?\d+)")
"""The body of an addition prompt id, `a op b` (`addition/12+345`)."""


class Addition(Task):
    name = "addition"
    description = "add or subtract two numbers of up to three digits, written as an equation"
    max_new_tokens = 48

    def sample(self, rng: random.Random) -> TaskPrompt:
        a, b = rng.randint(10, 999), rng.randint(10, 999)
        op = rng.choice("+-")
        if op == "-" and b > a:
            a, b = b, a
        return self.build(a, op, b)

    def build(self, a: int, op: str, b: int) -> TaskPrompt:
        """The prompt asking for `a op b` (`op` is "+" or "-")."""
        if op not in "+-" or len(op) != 1:
            raise ValueError(f"op must be '+' or '-', got {op!r}")
        result = a + b if op == "+" else a - b
        return TaskPrompt(
            id=f"addition/{a}{op}{b}",
            task=self.name,
            text=f"What is {a} {op} {b}? Write the answer as an equation.",
            answer=(str(result),),
            data={"a": a, "b": b, "op": op},
        )

    def from_id_body(self, body: str) -> TaskPrompt:
        match = _ID_BODY.fullmatch(body)
        if match is None:
            raise ValueError(body)
        return self.build(int(match["a"]), match["op"], int(match["b"]))

    def check(self, prompt: TaskPrompt, output: str, *, complete: bool = True) -> Judgement:
        a, b, op = prompt.data["a"], prompt.data["b"], prompt.data["op"]
        for match in _EQUATION.finditer(output):
            found_op = "-" if match["op"] == "\u2212" else match["op"]
            if (int(match["a"]), int(match["b"]), found_op) != (a, b, op):
                continue
            if not complete and match.end("c") == len(output):
                return Judgement(Verdict.UNCHECKABLE, reason="cut off inside the result")
            value = match["c"].replace(",", "")
            if value == prompt.answer[0]:
                return Judgement(Verdict.CORRECT, items_found=1)
            mistake = Mistake(
                0, match.start("c"), match.end("c"), MistakeKind.WRONG, match["c"], prompt.answer[0]
            )
            return Judgement(Verdict.WRONG, mistake, items_found=1)
        return Judgement(Verdict.UNCHECKABLE, reason=f"no equation {a} {op} {b} = ...")

    def correct(self, prompt: TaskPrompt, output: str, mistake: Mistake) -> Correction:
        return Correction(mistake.expected)
