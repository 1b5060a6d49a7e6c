"""Training throughput and peak memory with the reference log-prob cache vs a live reference model.

    python experiments/bench_refcache.py                      # embedded SmolLM2-135M, CPU, 6 steps x 2 runs per mode
    python experiments/bench_refcache.py --device cuda --steps 30 --batch-size 8 --steers 64

Each measurement runs in its own subprocess (so peak memory is that mode's alone): `build` fills the cache
once (policy == reference at step 0), then `live` and `cache` alternate for `--repeats` rounds. A step is
the same in both modes, a minimal localized-DPO step (policy forward on both sides, `localized_dpo_loss`,
backward, AdamW); only where the reference log-probs come from differs: a frozen copy of the model run
under `torch.no_grad()` (live), or `ReferenceCache.get` (cache). Prints a markdown table of median step
time, steps/s and peak memory (CPU: peak RSS of the process; CUDA: `torch.cuda.max_memory_allocated`),
with ratios against the live baseline measured in the same run. Also prints the measured cost of a model
fingerprint and the xxHash3 throughput behind it (with the time to hash a 7B model's 14 GB of bf16 bytes).
"""

from __future__ import annotations

import argparse
import json
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

SEVEN_B_BF16_BYTES = 7_000_000_000 * 2  # 7e9 parameters x 2 bytes


def make_steers(n: int):
    """`n` synthetic steers of a few shapes (numeric edit, partial list correction, complete answer)."""
    from localdpo.steers.steer import Steer

    steers = []
    for i in range(n):
        a, b = 12 + 7 * i, 30 + 3 * i
        if i % 3 == 0:
            steers.append(
                Steer(
                    prompt=[{"role": "user", "content": f"What is {a} + {b}? Show the sum."}],
                    prefix=f"Adding the numbers: {a} + {b} = ",
                    rejected=f"{a + b + 10}. So the answer is {a + b + 10}.",
                    chosen=f"{a + b}. So the answer is {a + b}.",
                    id=f"sum-{i}",
                )
            )
        elif i % 3 == 1:
            steers.append(
                Steer(
                    prompt=[
                        {
                            "role": "user",
                            "content": f"List three animals that start with letter {chr(65 + i % 26)}.",
                        }
                    ],
                    prefix="Here are three animals:\n1. ",
                    rejected="Table, which is furniture and not an animal at all.\n2. Cat",
                    chosen="Antelope",
                    id=f"list-{i}",
                )
            )
        else:
            steers.append(
                Steer(
                    prompt=[{"role": "user", "content": f"Give the capital of France ({i})."}],
                    prefix="The capital of France is ",
                    rejected="Lyon, a large city in the south-east.",
                    chosen="Paris.",
                    chosen_complete=True,
                    id=f"capital-{i}",
                )
            )
    return steers


def _peak_memory_mib(device) -> float:
    import torch

    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**20
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def worker(args) -> dict:
    """One measurement in this process: `build`, `live` or `cache`; returns a JSON-able dict."""
    import copy

    import torch

    from localdpo.forward import sequence_token_logps
    from localdpo.losses import localized_dpo_loss
    from localdpo.models.loading import load_model
    from localdpo.reference.cache import ReferenceCache
    from localdpo.reference.fingerprint import model_fingerprint
    from localdpo.steers.batches import CHOSEN_LOSS_MASK, REJECTED_LOSS_MASK, collate_pairs, pad_right
    from localdpo.steers.tokenization import tokenize_steer

    torch.manual_seed(0)
    device = torch.device(args.device)
    model, tokenizer = load_model(args.model, device=device)
    examples = [tokenize_steer(s, tokenizer) for s in make_steers(args.steers)]
    result: dict = {"mode": args.worker}

    if args.worker == "build":
        times = []
        for _ in range(5):
            start = time.perf_counter()
            model_fingerprint(model)
            times.append(time.perf_counter() - start)
        result["fingerprint_s"] = statistics.median(times)
        result["fingerprint_first_s"] = times[0]
        cache = ReferenceCache(
            model, tokenizer, cache_dir=args.cache_dir, batch_size=args.batch_size, progress=False
        )
        start = time.perf_counter()
        cache.precompute(examples)
        result["build_s"] = time.perf_counter() - start
        result["forward_passes"] = cache.stats.forward_passes
        return result

    pad = tokenizer.pad_token_id
    if args.worker == "live":
        reference = copy.deepcopy(model).eval().requires_grad_(False)
    else:
        cache = ReferenceCache(
            model, tokenizer, cache_dir=args.cache_dir, batch_size=args.batch_size, progress=False
        )
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-6)
    step_times = []
    for step in range(args.warmup + args.steps):
        start_index = (step * args.batch_size) % len(examples)
        batch_examples = (examples + examples)[start_index : start_index + args.batch_size]
        start = time.perf_counter()
        batch = {k: v.to(device) for k, v in collate_pairs(batch_examples, pad_token_id=pad).items()}
        if args.worker == "live":
            with torch.no_grad():
                ref_chosen = sequence_token_logps(
                    reference, batch["chosen_input_ids"], batch["chosen_attention_mask"]
                )
                ref_rejected = sequence_token_logps(
                    reference, batch["rejected_input_ids"], batch["rejected_attention_mask"]
                )
        else:
            values = cache.get(batch_examples)
            ref_chosen = pad_right([c for c, _ in values], 0.0, batch["chosen_input_ids"].shape[1]).to(device)
            ref_rejected = pad_right([r for _, r in values], 0.0, batch["rejected_input_ids"].shape[1]).to(
                device
            )
        policy_chosen = sequence_token_logps(model, batch["chosen_input_ids"], batch["chosen_attention_mask"])
        policy_rejected = sequence_token_logps(
            model, batch["rejected_input_ids"], batch["rejected_attention_mask"]
        )
        out = localized_dpo_loss(
            policy_chosen, policy_rejected, ref_chosen, ref_rejected,
            batch[CHOSEN_LOSS_MASK], batch[REJECTED_LOSS_MASK], beta=0.1,
        )  # fmt: skip
        optimizer.zero_grad(set_to_none=True)
        out.loss.backward()
        optimizer.step()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        if step >= args.warmup:
            step_times.append(time.perf_counter() - start)
    result["step_times"] = step_times
    result["peak_mib"] = _peak_memory_mib(device)
    if args.worker == "cache":
        result["forward_passes"] = cache.stats.forward_passes
    return result


def hash_throughput() -> dict:
    """Measured xxHash3-128 throughput on a 1 GB buffer, and the time to hash 14 GB (the buffer 14 times)."""
    import numpy as np
    import xxhash

    buffer = np.random.default_rng(0).integers(0, 255, size=10**9, dtype=np.uint8)
    times = []
    for _ in range(3):
        start = time.perf_counter()
        xxhash.xxh3_128(buffer).hexdigest()
        times.append(time.perf_counter() - start)
    hasher = xxhash.xxh3_128()
    start = time.perf_counter()
    for _ in range(SEVEN_B_BF16_BYTES // 10**9):
        hasher.update(buffer)
    seven_b = time.perf_counter() - start
    return {"gb_per_s": 1 / statistics.median(times), "seven_b_s": seven_b}


def _run_worker(args, mode: str) -> dict:
    command = [sys.executable, __file__, "--worker", mode, "--cache-dir", args.cache_dir]
    for name in ("model", "device", "steps", "warmup", "batch_size", "steers"):
        command += [f"--{name.replace('_', '-')}", str(getattr(args, name))]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"worker {mode} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2-135m-instruct")
    parser.add_argument("--device", default="cpu")
    # CPU defaults: a 135M step on 2 shared cores takes seconds, so 2 runs x 6 timed steps per mode.
    parser.add_argument("--steps", type=int, default=6, help="timed steps per run (after --warmup)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--batch-size", type=int, default=2, help="steers per step")
    parser.add_argument("--steers", type=int, default=12)
    parser.add_argument("--repeats", type=int, default=2, help="live/cache rounds, alternating order")
    parser.add_argument("--worker", choices=("build", "live", "cache"), help=argparse.SUPPRESS)
    parser.add_argument("--cache-dir", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(args)))
        return 0

    import torch

    owned = args.cache_dir is None
    args.cache_dir = args.cache_dir or tempfile.mkdtemp(prefix="bench-refcache-")
    try:
        build = _run_worker(args, "build")
        runs = {"live": [], "cache": []}
        for repeat in range(args.repeats):
            for mode in ("live", "cache") if repeat % 2 == 0 else ("cache", "live"):
                runs[mode].append(_run_worker(args, mode))
    finally:
        if owned:
            shutil.rmtree(args.cache_dir, ignore_errors=True)
    hashing = hash_throughput()

    print(f"machine: {platform.machine()}, {torch.get_num_threads()} torch threads, device {args.device}, "
          f"torch {torch.__version__}; model {args.model}; {args.steers} steers, batch {args.batch_size}, "
          f"{args.steps} timed steps x {args.repeats} runs per mode (after {args.warmup} warm-up steps)")  # fmt: skip
    print(f"cache build: {build['build_s']:.2f} s for {args.steers} steers ({build['forward_passes']} forward passes); "
          f"model fingerprint: {build['fingerprint_s']:.3f} s median of 5 (first {build['fingerprint_first_s']:.3f} s)")  # fmt: skip
    print(f"xxHash3-128: {hashing['gb_per_s']:.1f} GB/s; hashing 14.0 GB (7B parameters in bf16) from CPU memory: "
          f"{hashing['seven_b_s']:.2f} s (a GPU model adds its device-to-host copy, not measured here)\n")  # fmt: skip
    live_median = statistics.median(t for run in runs["live"] for t in run["step_times"])
    live_peak = statistics.median(run["peak_mib"] for run in runs["live"])
    memory = "peak RSS" if args.device == "cpu" else "peak allocated"
    print(f"| reference | median step (s) | steps/s | speed vs live | {memory} (MiB) | memory vs live |")
    print("|---|---|---|---|---|---|")
    for mode in ("live", "cache"):
        median = statistics.median(t for run in runs[mode] for t in run["step_times"])
        peak = statistics.median(run["peak_mib"] for run in runs[mode])
        print(f"| {mode} | {median:.3f} | {1 / median:.2f} | {live_median / median:.2f}x | {peak:.0f} | "
              f"{peak / live_peak:.2f}x |")  # fmt: skip
    assert all(run["forward_passes"] == 0 for run in runs["cache"]), (
        "the cache runs computed reference log-probs"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
