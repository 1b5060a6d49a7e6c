"""`localdpo make-steers`: steers from a model's own mistakes on checkable tasks."""

from __future__ import annotations

from localdpo.storage.writeguard import add_write_mode_arguments

HELP = "generate answers to task prompts, stop at each first mistake and write the corrections as steers"


def add_arguments(parser) -> None:
    parser.add_argument(
        "--task",
        action="append",
        required=True,
        help="task name (repeatable), 'all', or module:Class / file.py:Class for a task of your own (docs/tasks.md)",
    )
    parser.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="HF id, local dir, smollm2-135m-instruct (default) or tiny",
    )
    parser.add_argument("--n", type=int, default=100, help="prompts per task")
    parser.add_argument("--seed", type=int, default=0, help="prompt sampling and generation seed")
    parser.add_argument("--split", choices=("train", "validation", "heldout"), default="train")
    parser.add_argument("--out", required=True, help="output JSONL file (an existing one is refused)")
    add_write_mode_arguments(parser, what="the --out file", steer_file=True)
    parser.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    parser.add_argument("--top-p", type=float, default=1.0)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's own budget")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument(
        "--stop-after-tokens", type=int, default=3, help="tokens kept in rejected after the mistake"
    )
    parser.add_argument("--full-output", action="store_true", help="let answers run to their end (slower)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy shared CPU)"
    )


def run(args) -> int:
    import torch

    from localdpo.cli import checked_device
    from localdpo.generation import GenerationConfig
    from localdpo.models.loading import load_model
    from localdpo.steers.steer import check_steer_output, write_steers
    from localdpo.storage.writeguard import WriteMode, write_mode_of
    from localdpo.tasks import resolve_tasks
    from localdpo.tasks.steermaking import make_steers, shuffle_steers

    mode = write_mode_of(args)
    check_steer_output(args.out, mode)  # before the model loads: an existing file is refused at once
    tasks = resolve_tasks(args.task)
    device = checked_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, device=device)
    steers, summaries = [], []
    for task in tasks:
        config = GenerationConfig(
            max_new_tokens=args.max_new_tokens or task.max_new_tokens,
            temperature=args.temperature,
            top_p=args.top_p,
            batch_size=args.batch_size,
        )
        made, summary = make_steers(
            model,
            tokenizer,
            task,
            n=args.n,
            seed=args.seed,
            split=args.split,
            generation=config,
            stop_after_tokens=args.stop_after_tokens,
            full_output=args.full_output,
            meta={"model": str(args.model)},
        )
        steers.extend(made)
        summaries.append(summary)
    path = write_steers(shuffle_steers(steers, args.seed), args.out, mode=mode)
    for summary in summaries:
        print(summary.row())
        for line in summary.rejected_steers:
            print(f"  unusable: {line}")
    print(f"{'appended' if mode is WriteMode.APPEND else 'wrote'} {len(steers)} steers to {path}")
    return 0
