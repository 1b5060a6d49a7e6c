"""`localdpo cache build|info|verify|clear`: the reference-model log-prob cache on disk."""

from __future__ import annotations

import argparse

HELP = "Reference log-prob cache: build it for a steer file, show it, verify every shard, clear it."

_DTYPES = ("float32", "bfloat16", "float16")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    commands = parser.add_subparsers(dest="cache_command", required=True, metavar="ACTION")

    build = commands.add_parser("build", help="compute the reference log-probs of every steer in a file")
    build.add_argument("--steers", required=True, help="steer JSONL file")
    build.add_argument(
        "--model", default=None, help="HF model id, local directory, smollm2-135m-instruct (default) or tiny"
    )
    build.add_argument(
        "--span-mode",
        default="divergent",
        choices=("divergent", "to_end", "completion"),
        help="only decides which steers fit --max-length: the cache holds whole sides, valid for every mode",
    )
    build.add_argument(
        "--max-length", type=int, default=None, help="truncation setting used in training (part of the key)"
    )
    build.add_argument(
        "--dtype", default="float32", choices=_DTYPES, help="compute dtype of the reference forward"
    )
    build.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    build.add_argument("--batch-size", type=int, default=8, help="examples per forward (two sequences each)")
    build.add_argument(
        "--skip-too-long", action="store_true", help="skip (and list) steers longer than --max-length"
    )
    build.add_argument("--no-progress", action="store_true")

    commands.add_parser("info", help="list cached contexts (model/tokenizer fingerprints), entries and sizes")

    verify = commands.add_parser("verify", help="check every shard's sha256, size, entries and keys")
    verify.add_argument(
        "--remove-damaged", action="store_true", help="delete damaged shards (they are recomputed on use)"
    )

    commands.add_parser("clear", help="delete every cached context under the cache directory")

    for sub in commands.choices.values():
        sub.add_argument(
            "--cache-dir",
            default=None,
            help="cache directory (default: $LOCALDPO_REFCACHE or <cache root>/refcache)",
        )


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.1f} {unit}" if unit != "B" else f"{int(size)} B"
        size /= 1024
    return f"{size:.1f} GiB"


def _build(args) -> int:
    import time

    import torch

    from localdpo.cli import checked_device
    from localdpo.models.loading import DEFAULT_MODEL, load_model
    from localdpo.reference.cache import ReferenceCache
    from localdpo.steers.steer import load_steers
    from localdpo.steers.tokenization import tokenize_steers

    steers = load_steers(args.steers)  # a bad file fails before the model loads
    device = checked_device(args.device)
    # The model is loaded in the compute dtype: train with the same dtype, or the fingerprints differ.
    model, tokenizer = load_model(
        args.model or DEFAULT_MODEL, dtype=getattr(torch, args.dtype), device=device
    )
    examples, report = tokenize_steers(
        steers,
        tokenizer,
        max_length=args.max_length,
        span_mode=args.span_mode,
        on_too_long="skip" if args.skip_too_long else "error",
    )
    cache = ReferenceCache(
        model,
        tokenizer,
        dtype=getattr(torch, args.dtype),
        max_length=args.max_length,
        cache_dir=args.cache_dir,
        batch_size=args.batch_size,
        device=device,
        progress=not args.no_progress,
    )
    start = time.perf_counter()
    cache.precompute(examples)
    seconds = time.perf_counter() - start
    stats = cache.stats
    print(
        f"steers: {len(steers)} read, {report.tokenized} tokenized, {len(report.skipped)} skipped as too long"
    )
    print(
        f"cached already: {stats.hits}   computed: {stats.computed_examples} examples in {stats.forward_passes} "
        f"forward passes ({seconds:.1f} s)   damaged shards replaced: {stats.damaged_shards}"
    )
    print(f"model fingerprint: {cache.model_fingerprint}")
    print(f"cache: {cache.store.directory}")
    return 0


def _info(args) -> int:
    from localdpo.reference.store import default_cache_dir, store_summary

    cache_dir = default_cache_dir(args.cache_dir)
    summary = store_summary(cache_dir)
    print(f"reference cache: {cache_dir}")
    if not summary.contexts:
        print("  empty")
    for context in summary.contexts:
        c = context["context"]
        print(f"- {context['directory']}")
        print(
            f"    model {c.get('model_class')} {c.get('model_name') or ''} fingerprint {str(c.get('model'))[:16]}"
        )
        print(
            f"    tokenizer {str(c.get('tokenizer'))[:16]}  dtype {c.get('dtype')}  max_length {c.get('max_length')}"
        )
        print(f"    {context['shards']} shards, {context['entries']} sequences, {_human(context['bytes'])}")
    if summary.orphan_shards:
        print(
            f"  {len(summary.orphan_shards)} shards without index (never read; `cache verify --remove-damaged` deletes them)"
        )
    if summary.temp_files:
        print(f"  {len(summary.temp_files)} temporary files (writes in progress, or left by killed builds)")
    return 0


def _verify(args) -> int:
    from localdpo.reference.store import default_cache_dir, store_summary, verify_store

    cache_dir = default_cache_dir(args.cache_dir)
    intact, damaged = verify_store(cache_dir, remove_damaged=args.remove_damaged)
    orphans = store_summary(cache_dir).orphan_shards
    if args.remove_damaged:
        for path in orphans:
            path.unlink(missing_ok=True)
    entries = sum(check.entries for check in intact)
    print(f"{cache_dir}: {len(intact)} shards intact ({entries} sequences), {len(damaged)} damaged")
    for check in damaged:
        action = "removed" if args.remove_damaged else "damaged"
        print(f"  {action}: {check.shard_path}: {check.problem}")
    for path in orphans:
        print(f"  {'removed' if args.remove_damaged else 'orphan'} (no index): {path}")
    return 1 if damaged and not args.remove_damaged else 0


def _clear(args) -> int:
    from localdpo.reference.store import clear_store, default_cache_dir

    cache_dir = default_cache_dir(args.cache_dir)
    removed = clear_store(cache_dir)
    print(f"{cache_dir}: removed {removed} cached contexts")
    return 0


def run(args) -> int:
    return {"build": _build, "info": _info, "verify": _verify, "clear": _clear}[args.cache_command](args)
