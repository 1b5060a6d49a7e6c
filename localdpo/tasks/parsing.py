"""Find the answer list in free text the way a small chat model writes it.

SmolLM2-135M-Instruct answers list questions inline (`"... are 3, 6, 9, and 12."`), inline and numbered
(`"1. apple, 2. harbor"`), as numbered lines (`"1. 12\n2. 18"`) or as bullets (`"- river\n- pencil"`). `find_lists` returns every list of at least two
items in the order they start, each item with its character offsets, so a checker can point at one item.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

NUMBER = r"(?<![\w.])-?\d+(?!\.\d)(?![\w])"
"""An integer not glued to a word or a decimal point."""
WORD = r"(?<![\w'-])(?!(?:and|or)\b)[A-Za-z]+(?![\w'-])"
"""A plain alphabetic word."""

_LINE_ITEM = re.compile(r"^[ \t]*(?P<marker>\d+[.)]|[-*\u2022])[ \t]+(?:\*\*)?")
# Between two items of an inline list: a comma (optionally with "and"), or "and" alone; never a newline.
# Items may be double-quoted ('"fungi", "jungle"'): the quotes belong to the separator.
_SEPARATOR = r'"?(?:[ \t]*,[ \t]*(?:and[ \t]+)?|[ \t]+and[ \t]+)"?'
_INLINE_SEPARATOR = re.compile(_SEPARATOR)
# The same, followed by the next item's number: "1. apple, 2. harbor" (only where items are not numbers).
_NUMBERED_INLINE_SEPARATOR = re.compile(_SEPARATOR + r'(?P<number>\d+)(?P<punct>[.)])[ \t]+"?')
# A list item ends a clause: "... are: eagle, lemon." but not "Alphabetically, the words are".
_RUNS_ON = re.compile(r'"?[ \t]+[A-Za-z0-9]')


@dataclass(frozen=True)
class Item:
    """One list item: `text[start:end]` of the output."""

    start: int
    end: int
    text: str


@dataclass(frozen=True)
class ItemList:
    """A list found in an output."""

    items: tuple[Item, ...]
    style: str
    """`"inline"`, `"numbered_inline"`, `"numbered"` or `"bullet"`."""
    separator: str
    """What to write before one more item: `", "` inline, `", 4. "` numbered inline, `"\\n6. "` numbered,
    `"\\n- "` bullets."""

    @property
    def start(self) -> int:
        return self.items[0].start


def _line_lists(text: str, item_re: re.Pattern) -> list[ItemList]:
    """Blocks of consecutive numbered or bulleted lines (blank lines allowed inside a block)."""
    lists: list[ItemList] = []
    block: list[Item] = []
    markers: list[str] = []
    offset = 0

    def close() -> None:
        if len(block) >= 2:
            last = markers[-1]
            if last[0].isdigit():
                number = int(last[:-1]) + 1
                separator, style = f"\n{number}{last[-1]} ", "numbered"
            else:
                separator, style = f"\n{last} ", "bullet"
            lists.append(ItemList(tuple(block), style, separator))
        block.clear()
        markers.clear()

    for line in text.splitlines(keepends=True):
        head = _LINE_ITEM.match(line)
        item = item_re.match(line, head.end()) if head else None
        if item:
            block.append(Item(offset + item.start(), offset + item.end(), item.group(0)))
            markers.append(head.group("marker"))
        elif line.strip():
            close()
        offset += len(line)
    close()
    return lists


def _inline_lists(text: str, item_re: re.Pattern, ends_clause: bool) -> list[ItemList]:
    """Runs of items joined by inline separators (with `ends_clause`, none followed by more words).

    Where an item cannot be a number, a separator may carry the next item's number ("1. apple, 2. harbor").
    """
    numbered_ok = item_re.fullmatch("1") is None
    lists: list[ItemList] = []
    run: list[Item] = []
    separators: list[str] = []

    def close() -> None:
        # Items followed by more words belong to a sentence, not to the list ("Alphabetically, the words").
        while ends_clause and run and _RUNS_ON.match(text, run[-1].end):
            run.pop()
            separators[len(run) - 1 :] = []
        if len(run) >= 2:
            numbered = [_NUMBERED_INLINE_SEPARATOR.fullmatch(s) for s in separators]
            if all(numbered):
                last = numbered[-1]
                quote = '"' if last.group(0).startswith('"') else ""
                separator = f"{quote}, {int(last['number']) + 1}{last['punct']} {quote}"
                lists.append(ItemList(tuple(run), "numbered_inline", separator))
            else:
                lists.append(ItemList(tuple(run), "inline", _common_separator(separators)))

    for match in item_re.finditer(text):
        item = Item(match.start(), match.end(), match.group(0))
        between = text[run[-1].end : item.start] if run else ""
        if run and (
            _INLINE_SEPARATOR.fullmatch(between)
            or (numbered_ok and _NUMBERED_INLINE_SEPARATOR.fullmatch(between))
        ):
            run.append(item)
            separators.append(between)
            continue
        close()
        run, separators = [item], []
    close()
    return lists


def _common_separator(separators: list[str]) -> str:
    plain = [s for s in separators if "and" not in s and not any(c.isdigit() for c in s)]
    return max(set(plain), key=plain.count) if plain else ", "


def find_lists(text: str, item_pattern: str, *, ends_clause: bool = False) -> list[ItemList]:
    """Every list of >= 2 items matching `item_pattern` in `text`, ordered by start offset.

    With `ends_clause`, trailing items of an inline run that are followed by more words are not items
    (word lists: "Alphabetically, the words are ..." is no list). Numbers keep them ("3, 2, 5 are ...").
    Line lists win over inline runs that overlap them (an inline run inside one numbered line is part of
    that line's content, not a second list).
    """
    item_re = re.compile(item_pattern)
    line_lists = _line_lists(text, item_re)
    covered = [(lst.start, lst.items[-1].end) for lst in line_lists]
    inline = [
        lst
        for lst in _inline_lists(text, item_re, ends_clause)
        if not any(start <= lst.items[-1].end and lst.start <= end for start, end in covered)
    ]
    return sorted(line_lists + inline, key=lambda lst: lst.start)
