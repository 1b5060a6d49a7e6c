"""`localdpo show STEERS.jsonl`: each steer with the tokens the trainer will score, and the rows it drops."""

from __future__ import annotations

import argparse

from localdpo.storage.writeguard import add_write_mode_arguments

HELP = "show each steer's prompt, prefix and both sides with the scored tokens marked, and the rows skipped"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("steers", help="steer JSONL file")
    parser.add_argument(
        "--span-mode",
        default="divergent",
        choices=("divergent", "to_end", "completion"),
        help="which tokens are scored: divergent (localized DPO, SFT), completion (standard DPO), to_end",
    )
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="whose tokenizer: HF id, local dir, smollm2-135m-instruct (default) or tiny",
    )
    parser.add_argument(
        "--max-length",
        type=int,
        default=None,
        help="the training max_length: steers that do not fit are refused",
    )
    parser.add_argument("--html", default=None, metavar="FILE", help="also write the preview as an HTML page")
    add_write_mode_arguments(parser, what="the --html FILE", steer_file=False)
    parser.add_argument(
        "--color",
        choices=("auto", "always", "never"),
        default="auto",
        help="ANSI colour for scored tokens (auto: when stdout is a terminal; else [+ +] / [- -] markers)",
    )


def run(args: argparse.Namespace) -> int:
    import sys
    from pathlib import Path

    from localdpo.cli import UsageError
    from localdpo.models.loading import load_tokenizer
    from localdpo.steers.preview import preview_steers, render_html, render_text
    from localdpo.storage.fileio import atomic_write_text
    from localdpo.storage.writeguard import check_output, claimed_output, write_mode_of

    if args.max_length is not None and args.max_length < 1:
        raise UsageError(f"--max-length {args.max_length}: must be >= 1")
    if not Path(args.steers).is_file():
        raise UsageError(f"steer file not found: {args.steers}")
    if args.html and not Path(args.html).parent.is_dir():
        raise UsageError(f"--html {args.html}: directory {Path(args.html).parent} does not exist")
    if args.html:
        check_output(args.html, write_mode_of(args), inputs=(args.steers,))
    tokenizer = load_tokenizer(args.model)
    preview = preview_steers(args.steers, tokenizer, span_mode=args.span_mode, max_length=args.max_length)
    color = args.color == "always" or (args.color == "auto" and sys.stdout.isatty())
    sys.stdout.write(render_text(preview, tokenizer, color=color))
    if args.html:
        html = render_html(preview, tokenizer)
        with claimed_output(args.html, write_mode_of(args), inputs=(args.steers,)) as path:
            atomic_write_text(path, html)
        print(f"wrote {args.html}")
    return 0
