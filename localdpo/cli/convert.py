"""`localdpo convert IN OUT`: a steer file from TRL preference rows, Step-DPO rows or any `datasets` source."""

from __future__ import annotations

import argparse

from localdpo.storage.writeguard import add_write_mode_arguments

HELP = "convert TRL preference, Step-DPO or any Hugging Face datasets rows to a steer JSONL file"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("source", help="JSONL, JSON, Parquet or CSV file, or a hub dataset id")
    parser.add_argument("out", help="steer JSONL file to write (an existing one is refused)")
    add_write_mode_arguments(parser, what="OUT", steer_file=True)
    parser.add_argument(
        "--format",
        default="auto",
        choices=("auto", "steer", "trl", "step-dpo"),
        help="row format (auto: Step-DPO with initial_reason_steps, steer with prefix, else TRL)",
    )
    parser.add_argument(
        "--map",
        default=None,
        metavar="FIELD=COLUMN,...",
        help="source column of each field, e.g. prompt=question,chosen=good,rejected=bad",
    )
    parser.add_argument("--split", default="train", help="split of a hub dataset (default train)")
    parser.add_argument("--subset", default=None, help="configuration (subset) name of a hub dataset")
    parser.add_argument(
        "--skip-invalid",
        action="store_true",
        help="write the good rows and list the bad ones (default: write none)",
    )


def run(args: argparse.Namespace) -> int:
    import sys

    from localdpo.cli import UsageError
    from localdpo.steers.convert import convert_steers, parse_mapping
    from localdpo.steers.steer import check_steer_output
    from localdpo.storage.writeguard import WriteMode, write_mode_of

    mode = write_mode_of(args)
    check_steer_output(args.out, mode, inputs=(args.source,))  # before a slow source is read
    result = convert_steers(
        args.source,
        args.out,
        row_format=args.format,
        mapping=parse_mapping(args.map),
        split=args.split,
        subset=args.subset,
        skip_invalid=args.skip_invalid,
        mode=mode,
    )
    report = result.report
    for _, message in report.skipped:
        print(f"  bad row: {message}", file=sys.stderr)
    if result.written is None:
        if not result.steers:
            raise UsageError(f"{args.source}: no row converted ({len(report.skipped)} bad); nothing written")
        raise UsageError(
            f"{args.source}: {len(report.skipped)} bad rows (listed above); fix them, or pass --skip-invalid "
            f"to write the other {len(result.steers)}"
        )
    formats: dict[str, int] = {}
    for steer in result.steers:
        formats[steer.meta["source_format"]] = formats.get(steer.meta["source_format"], 0) + 1
    kinds = ", ".join(f"{count} {name}" for name, count in sorted(formats.items()))
    verb = "appended" if mode is WriteMode.APPEND else "wrote"
    print(
        f"{verb} {len(result.steers)} steers ({kinds}) to {result.written}; "
        f"skipped {len(report.skipped)} bad rows"
    )
    return 0
