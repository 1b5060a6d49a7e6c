"""`localdpo compare`: SFT, localized DPO (with and without an SFT term) and DPO on the same steers."""

from __future__ import annotations

import argparse
import sys

HELP = "compare localized DPO, SFT and DPO on the same steers (several seeds, results table and plots)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from localdpo.compare.config import preset_names

    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--preset",
        default=None,
        help=f"{', '.join(preset_names())} (default cpu): localdpo/compare/presets/NAME.yaml",
    )
    source.add_argument("--config", default=None, help="a comparison YAML file")
    parser.add_argument(
        "--out",
        default=None,
        help="output directory (default outputs/compare-<name>); one holding this comparison stopped part-way "
        "resumes it",
    )
    parser.add_argument(
        "--restart",
        action="store_true",
        help="start over: first remove the runs, steers and tables an earlier comparison left in the output "
        "directory (without it, the same command resumes that comparison)",
    )
    parser.add_argument(
        "--steers",
        default=None,
        help="your steers (JSONL): without --task, the comparison is on them alone, split into train, validation "
        "and held-out by a hash of each prompt (unless --heldout-steers gives the held-out ones), measured "
        "without a checker; with --task, the train steers instead of making them",
    )
    parser.add_argument(
        "--heldout-steers", default=None, help="held-out steers JSONL instead of cutting or making them"
    )
    parser.add_argument(
        "--task",
        default=None,
        help="the task checking the answers: a built-in name (localdpo tasks) or module:Class / file.py:Class for "
        "your own (docs/tasks.md); default: the preset's, or none with --steers",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="steer in N rounds: after round 1, each variant x seed is steered again on its own model's mistakes "
        "on fresh prompts and trained on, N-1 times (rounds.count=N; 1: one round, rounds=null)",
    )
    parser.add_argument("--variants", default=None, help="comma-separated subset of the config's variants")
    parser.add_argument(
        "--with-sft-full", action="store_true", help="also run sft_full (SFT on the whole sequence)"
    )
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 on a machine shared with other jobs)"
    )
    parser.add_argument(
        "overrides", nargs="*", help="key=value overrides, e.g. seeds=[0,1] run.train.max_steps=20"
    )


def run(args: argparse.Namespace) -> int:
    from localdpo.compare.config import load_compare_config, preset_path
    from localdpo.compare.pipeline import run_comparison
    from localdpo.config import ConfigError

    if args.threads:
        import torch

        torch.set_num_threads(args.threads)
    overrides = list(args.overrides)
    if args.out:
        overrides.append(f"out_dir={args.out}")
    if args.task:
        overrides.append(f"task={args.task}")
    if args.rounds is not None:
        overrides.append("rounds=null" if args.rounds == 1 else f"rounds.count={args.rounds}")
    task_given = any(item.startswith("task=") for item in overrides)
    if not args.config and (task_given or args.steers):
        # a preset's steer files belong to its own task: never to another task or to the person's steers
        if args.steers and not task_given:
            overrides.append("task=null")
        for key in ("train_file", "heldout_file", "validation_file"):
            if not any(item.startswith(f"steers.{key}=") for item in overrides):
                overrides.append(f"steers.{key}=null")
    if args.steers:
        overrides.append(f"steers.train_file={args.steers}")
    if args.heldout_steers:
        overrides.append(f"steers.heldout_file={args.heldout_steers}")
    try:
        config = load_compare_config(args.config or preset_path(args.preset or "cpu"), overrides)
    except ConfigError as error:  # a mistake in the config or an override: one line, exit status 2
        print(f"localdpo compare: {error}", file=sys.stderr)
        return 2
    if args.with_sft_full:
        config.variants.setdefault("sft_full", ["method=sft_full"])
    variants = args.variants.split(",") if args.variants else None
    try:
        result = run_comparison(config, variants=variants, restart=args.restart)
    except KeyboardInterrupt:
        print(
            "\nlocaldpo compare: interrupted; the same command resumes it (finished runs are kept)",
            file=sys.stderr,
        )
        return 130  # 128 + SIGINT, as a shell reports it
    print(f"\nresults: {result.results_md}\n         {result.results_csv}")
    print("plots:   " + "\n         ".join(str(p) for p in result.plots))
    print(
        f"runs:    {result.out_dir / 'runs'} (W&B: {result.out_dir / 'runs'}/*/wandb, group compare-{config.name})"
    )
    return 0
