"""`localdpo eval`: greedy accuracy on held-out task prompts."""

from __future__ import annotations

from localdpo.storage.writeguard import add_write_mode_arguments

HELP = "greedy accuracy of a model (name, path or checkpoint dir) on held-out prompts of checkable tasks"


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
        help="HF id, local dir, checkpoint dir, smollm2-135m-instruct (default) or tiny",
    )
    parser.add_argument("--n", type=int, default=200, help="held-out prompts per task")
    parser.add_argument("--seed", type=int, default=0, help="prompt sampling seed")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--max-new-tokens", type=int, default=None, help="default: the task's own budget")
    parser.add_argument(
        "--records", action="store_true", help="keep every answer and its verdict in the JSON"
    )
    parser.add_argument("--out", default=None, help="JSON file for the results (an existing one is refused)")
    add_write_mode_arguments(parser, what="the --out file", steer_file=False)
    parser.add_argument("--device", default="cpu")
    parser.add_argument(
        "--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy shared CPU)"
    )


def run(args) -> int:
    import json

    import torch

    from localdpo.cli import checked_device
    from localdpo.models.loading import load_model
    from localdpo.storage.fileio import atomic_write_text
    from localdpo.storage.writeguard import check_output, claimed_output, write_mode_of
    from localdpo.tasks import resolve_tasks
    from localdpo.tasks.evaluation import evaluate_task

    tasks = resolve_tasks(args.task)  # an unknown name fails before the model loads
    if args.out:
        check_output(args.out, write_mode_of(args))  # so does an existing --out file
    device = checked_device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    model, tokenizer = load_model(args.model, device=device)
    results = {}
    print(f"{'task':<12} {'n':>5} {'accuracy':>9} {'format':>7} {'item1':>6} {'mistake@':>9} {'seconds':>8}")
    for task in tasks:
        result = evaluate_task(
            model,
            tokenizer,
            task,
            n=args.n,
            seed=args.seed,
            batch_size=args.batch_size,
            max_new_tokens=args.max_new_tokens,
            records=args.records,
            progress=True,
        )
        results[task.name] = result
        position = result["mean_first_mistake_position"]
        print(
            f"{task.name:<12} {result['n']:>5} {result['accuracy']:>9.3f} {result['format_kept']:>7.3f} "
            f"{result['first_item_accuracy']:>6.3f} {'-' if position is None else f'{position:.2f}':>9} "
            f"{result['seconds']:>8.1f}"
        )
    if args.out:
        report = {"model": str(args.model), "seed": args.seed, "split": "heldout", "results": results}
        with claimed_output(args.out, write_mode_of(args)) as path:
            atomic_write_text(path, json.dumps(report, indent=1))
        print(f"wrote {args.out}")
    return 0
