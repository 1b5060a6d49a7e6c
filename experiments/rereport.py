"""Re-read a finished comparison's per-run records and write its tables under today's statistics.

    python experiments/rereport.py docs/results/fair-cpu --tasks addition multiples --out docs/results/fair-cpu/rereport.md

The records (`records.jsonl`: every final run's per-item values) are the data; the intervals, verdicts and the
Holm line are computed again by `localdpo.compare.report`, so a rule that changed since the comparison ran (the
seed-level t interval beside the bootstrap) reads the same runs. Nothing is trained or evaluated.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from localdpo.compare.pipeline import pooled_records
from localdpo.compare.report import RunRecord, markdown_tables, summarize
from localdpo.compare.results import load_records
from localdpo.fileio import atomic_write_text


def records_of(directory: Path, task: str | None) -> list[RunRecord]:
    """The final runs of one comparison directory as `RunRecord`s."""
    return [
        RunRecord(
            method=row["method"],
            seed=row["seed"],
            items={key: np.asarray(values, dtype=np.float64) for key, values in row["items"].items()},
            task=task,
        )
        for row in load_records(directory)
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a comparison's output directory")
    parser.add_argument(
        "--tasks", nargs="*", default=[], help="its task subdirectories (several tasks: pooled too)"
    )
    parser.add_argument("--baseline", default="sft")
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    args = parser.parse_args()
    sections, every = [], []
    for task in args.tasks or [None]:
        records = records_of(args.directory / task if task else args.directory, task)
        every += records
        sections.append((task or args.directory.name, records))
    if len(args.tasks) > 1:
        sections.append(("pooled over " + ", ".join(args.tasks), pooled_records(every)))
    text = f"# {args.directory}: the tables re-read under today's statistics\n\n" + "".join(
        f"## {name}\n\n{markdown_tables(summarize(records, baseline=args.baseline), baseline=args.baseline)}\n"
        for name, records in sections
    )
    atomic_write_text(args.out, text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
