"""A person's own steers, without a task: train, validation and held-out splits by a stable hash of each prompt.

One file is split as the tasks split their prompts (`localdpo.tasks.split_of`), keyed by the prompt itself:
`content_hash(steer.prompt)` (sha256 of its canonical JSON, a string or a message list alike), so every steer
of one prompt lands in one split, the same on every machine and in every run, whatever the file's order. Out
of 100 hash points, below 25 is held out, 25 to 39 validation, the rest train. A split given as its own file
(`steers.heldout_file`, `steers.validation_file`) is not cut from the train file: the prompts that would have
gone there train; the validation share trains too when no hyperparameters are selected.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from localdpo.config import ConfigError
from localdpo.reference.fingerprint import content_hash
from localdpo.steers.steer import Prompt, Steer, load_steers
from localdpo.tasks import split_of
from localdpo.tasks.base import HELDOUT_PERCENT, VALIDATION_PERCENT

MIN_STEERS = {"train": 10, "heldout": 10, "validation": 5}
"""Fewest steers a split may hold: below 10 held-out steers one steer moves a held-out metric by more than 10
points, so no interval can separate two methods; below 10 train steers there is little to learn from; 5
validation steers are the least that can rank two grid points by more than a coin's toss."""
SPLIT_NAMES = {"train": "train", "validation": "validation", "heldout": "held-out"}
SHORT_REASONS = {
    "train": "fewer train steers leave little to learn from",
    "validation": "fewer validation steers cannot rank two grid points",
    "heldout": "below 10 held-out steers one steer is more than 10 points of a held-out metric, and no interval "
    "can separate two methods",
}


class TooFewSteersError(ConfigError):
    """A person's steers are too few for a split whose metrics can separate anything; the message counts them."""


def prompt_key(prompt: Prompt) -> str:
    """sha256 of the prompt's canonical JSON (sorted keys, compact): the same prompt, the same key."""
    return content_hash(prompt)


def steer_split(steer: Steer) -> str:
    """`"train"`, `"validation"` or `"heldout"`: `split_of` the steer's `prompt_key`."""
    return split_of(prompt_key(steer.prompt))


@dataclass(frozen=True)
class OwnSteers:
    """A person's steers, split for a comparison, and how."""

    splits: dict[str, list[Steer]]
    """`train`, `heldout` and, when selecting, `validation` -> its steers (in file order)."""
    files: dict[str, str]
    """Split -> the file its steers come from."""
    cut: tuple[str, ...]
    """The splits cut from the train file by the hash (the others come from their own files)."""
    prompts: int
    """Distinct prompts in the train file."""
    total: int
    """Steers in the train file."""

    def note(self) -> str:
        """One sentence for the results: where each split comes from, the rule, and the sizes."""
        sizes = ", ".join(f"{len(steers)} {SPLIT_NAMES[split]}" for split, steers in self.splits.items())
        source = Path(self.files["train"]).name
        own = [
            f"{SPLIT_NAMES[split]} from `{Path(path).name}`"
            for split, path in self.files.items()
            if split != "train" and split not in self.cut
        ]
        if len(self.cut) == 1:
            return (
                f"Steers: `{source}` ({self.total} steers on {self.prompts} prompts) used whole for training"
                + (f"; {', '.join(own)}" if own else "")
                + f": {sizes}."
            )
        return (
            f"Steers: `{source}` ({self.total} steers on {self.prompts} prompts) split by {split_rule(self.cut)}"
            + (f"; {', '.join(own)}" if own else "")
            + f": {sizes}."
        )


def split_rule(cut: tuple[str, ...]) -> str:
    """The rule that cut `cut` from one file, in words."""
    held, valid = HELDOUT_PERCENT, HELDOUT_PERCENT + VALIDATION_PERCENT
    shares = []
    if "heldout" in cut:
        shares.append(f"below {held} held-out")
    if "validation" in cut:
        shares.append(f"{held} to {valid - 1} validation")
    return (
        "a stable hash of each prompt (sha256 of its canonical JSON, `localdpo.tasks.split_of`; every steer of "
        f"one prompt in one split), out of 100 points: {', '.join(shares)}, the rest train"
    )


def own_steers(
    train_file: str,
    *,
    heldout_file: str | None = None,
    validation_file: str | None = None,
    validation: bool = False,
) -> OwnSteers:
    """The splits of a person's steers (see the module docstring); `validation` when hyperparameters are
    selected. `TooFewSteersError` when a split holds fewer than `MIN_STEERS`, with every count."""
    steers = load_steers(train_file)
    given = {"heldout": heldout_file} | ({"validation": validation_file} if validation else {})
    cut = ("train", *(split for split, path in given.items() if not path))
    splits: dict[str, list[Steer]] = {
        split: [] for split in ("train", "heldout", "validation") if split in cut
    }
    for steer in steers:
        split = steer_split(steer)
        splits[split if split in cut else "train"].append(steer)
    for split, path in given.items():
        if path:
            splits[split] = load_steers(path)
    splits = {split: splits[split] for split in ("train", "validation", "heldout") if split in splits}
    files = {"train": str(train_file), **{split: str(path or train_file) for split, path in given.items()}}
    own = OwnSteers(splits, files, cut, len({prompt_key(s.prompt) for s in steers}), len(steers))
    short = [split for split, items in splits.items() if len(items) < MIN_STEERS[split]]
    if short:
        needs = " and ".join(f"{MIN_STEERS[split]} {SPLIT_NAMES[split]}" for split in short)
        why = "; ".join(SHORT_REASONS[split] for split in short)
        hint = (
            ", or give the held-out steers as their own file (--heldout-steers)" if "heldout" in cut else ""
        )
        raise TooFewSteersError(
            f"{own.note().removeprefix('Steers: ').rstrip('.')}; a comparison needs at least {needs} steers "
            f"({why}): bring more steers on more prompts{hint}"
        )
    return own
