"""Re-read a comparison's per-run records and write its tables under today's statistics.

    python experiments/rereport.py docs/results/fair-cpu --tasks addition multiples --out docs/results/fair-cpu/rereport.md
    python experiments/rereport.py outputs/compare-dose --tasks running_sum --in-progress --out interim.md

The records are the data: a finished comparison's `records.jsonl` (every final run's per-item values), or with
`--in-progress` the `runs/<label>-seed<k>/record.json` a comparison still running (or stopped) has written,
taking only the seeds every variant has finished, so each row has the same seeds. The intervals, verdicts and
the Holm line are computed again by `localdpo.compare.report`, so a rule that changed since the comparison ran
(the seed-level t interval beside the bootstrap) reads the same runs. Nothing is trained or evaluated.
"""

from __future__ import annotations

import argparse
import json
import re
from collections import defaultdict
from pathlib import Path

import numpy as np

from localdpo.compare.pipeline import pooled_records
from localdpo.compare.plots import dose_plots
from localdpo.compare.report import RunRecord, markdown_tables, summarize
from localdpo.compare.results import load_records
from localdpo.storage.fileio import atomic_write_text


def records_of(directory: Path, task: str | None) -> list[RunRecord]:
    """The final runs of one comparison directory as `RunRecord`s (of a comparison in rounds, the last round's,
    as its `results.md` headline reads them)."""
    rows = load_records(directory)
    last = max((row["round"] for row in rows if "round" in row), default=None)
    return [
        RunRecord(
            method=row["method"],
            seed=row["seed"],
            items={key: np.asarray(values, dtype=np.float64) for key, values in row["items"].items()},
            task=task,
        )
        for row in rows
        if row.get("round") == last
    ]


def records_in_progress(directory: Path, task: str | None) -> tuple[list[RunRecord], list[int]]:
    """The finished final runs of a comparison in progress, restricted to the seeds every variant finished,
    with the starting model's row (`base`) from the run that evaluated it; and those seeds."""
    finished: dict[str, dict[int, dict]] = defaultdict(dict)
    for path in sorted(directory.glob("runs/*/record.json")):
        match = re.fullmatch(r"(.+)-seed(\d+)", path.parent.name)
        if match:
            finished[match[1]][int(match[2])] = json.loads(path.read_text(encoding="utf-8"))
    seeds = sorted(set.intersection(*(set(by_seed) for by_seed in finished.values()))) if finished else []
    records, base = [], None
    for label, by_seed in finished.items():
        for seed in seeds:
            record = by_seed[seed]
            items = {key: np.asarray(values, dtype=np.float64) for key, values in record["items"].items()}
            records.append(RunRecord(method=label, seed=seed, items=items, task=task))
        for record in by_seed.values():
            if record.get("initial_items"):
                initial = record["initial_items"]
                base = {key: np.asarray(values, dtype=np.float64) for key, values in initial.items()}
    if base is not None:
        records.insert(0, RunRecord(method="base", seed=0, items=base, task=task))
    return records, seeds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("directory", type=Path, help="a comparison's output directory")
    parser.add_argument(
        "--tasks", nargs="*", default=[], help="its task subdirectories (several tasks: pooled too)"
    )
    parser.add_argument("--baseline", default="sft")
    parser.add_argument(
        "--in-progress", action="store_true", help="read runs/*/record.json of an unfinished comparison"
    )
    parser.add_argument("--out", type=Path, required=True, help="markdown file to write")
    parser.add_argument(
        "--plots", action="store_true", help="also the dose-response plots (dose_<metric>.png) beside --out"
    )
    args = parser.parse_args()
    sections, every = [], []
    for task in args.tasks or [None]:
        directory = args.directory / task if task else args.directory
        if args.in_progress:
            records, seeds = records_in_progress(directory, task)
            name = f"{task or args.directory.name} (in progress: seeds {seeds}, every variant finished)"
        else:
            records, name = records_of(directory, task), task or args.directory.name
        every += records
        sections.append((name, records))
    if len(args.tasks) > 1:
        sections.append(("pooled over " + ", ".join(args.tasks), pooled_records(every)))
    summaries = [(name, summarize(records, baseline=args.baseline)) for name, records in sections]
    text = f"# {args.directory}: the tables re-read under today's statistics\n\n" + "".join(
        f"## {name}\n\n{markdown_tables(rows, baseline=args.baseline)}\n" for name, rows in summaries
    )
    if args.plots:
        for path in dose_plots(summaries[0][1], args.out.parent):
            print(f"wrote {path}")
    atomic_write_text(args.out, text)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
