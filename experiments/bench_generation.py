"""Greedy answers as `localdpo compare` makes them: localdpo's decoder (finished rows leave the batch) against
transformers' `generate` with the same stopping rule (the previous implementation), measured in one process.

    python experiments/bench_generation.py [--tasks addition multiples] [--n 120] [--repeats 3]

For each task, the `n` held-out prompts in one batch (the `cpu` preset's `eval_batch_size`), in the two modes
the comparison uses: task evaluation (stop at the first judged mistake) and steer making (3 more tokens).
Prints the median seconds of `--repeats` alternating runs, the ratio, and how many answers are identical.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from localdpo.generation import (
    GenerationConfig,
    _generate_with_transformers,
    _StopRows,
    generate_answers,
    prompt_ids,
)
from localdpo.models.loading import load_model
from localdpo.tasks import get_task, stop_at_first_mistake
from localdpo.tasks.steermaking import STOP_AFTER_TOKENS


@torch.no_grad()
def generate_with_transformers(model, tokenizer, texts, max_new_tokens, should_stop, delay):
    """The baseline: one left-padded batch through `model.generate` (greedy), rows stopped by the same rule,
    answers cut as `generate_answers` did before its own decoder."""
    from transformers import DynamicCache

    encoded = [prompt_ids(tokenizer, t) for t in texts]
    width = max(len(ids) for ids in encoded)
    pad = tokenizer.pad_token_id
    input_ids = torch.full((len(encoded), width), pad, dtype=torch.long)  # (B, T)
    attention_mask = torch.zeros((len(encoded), width), dtype=torch.long)  # (B, T)
    for row, ids in enumerate(encoded):
        input_ids[row, width - len(ids) :] = torch.tensor(ids)
        attention_mask[row, width - len(ids) :] = 1
    stopper = _StopRows(tokenizer, list(range(len(encoded))), width, should_stop, delay)
    rows = _generate_with_transformers(
        model,
        input_ids,
        attention_mask,
        DynamicCache(),
        GenerationConfig(max_new_tokens=max_new_tokens),
        {tokenizer.eos_token_id},
        pad,
        stopper,
    )
    return [(tokenizer.decode(ids, skip_special_tokens=True), complete) for ids, complete in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["addition", "multiples"])
    parser.add_argument("--n", type=int, default=120)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    model, tokenizer = load_model("smollm2-135m-instruct")
    model.eval()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; medians of {args.repeats} runs")
    print("| task | mode | transformers generate (s) | localdpo (s) | ratio | same answers | same text |")
    print("|---|---|---|---|---|---|---|")
    for name in args.tasks:
        task = get_task(name)
        prompts = task.prompts(args.n, 0, "heldout")
        texts = [p.text for p in prompts]
        for mode, delay in (("task evaluation", 0), ("steer making", STOP_AFTER_TOKENS)):
            stop = stop_at_first_mistake(task, prompts)
            times = {"generate": [], "localdpo": []}
            for _ in range(args.repeats):
                start = time.perf_counter()
                base = generate_with_transformers(model, tokenizer, texts, task.max_new_tokens, stop, delay)
                times["generate"].append(time.perf_counter() - start)
                start = time.perf_counter()
                ours = generate_answers(
                    model,
                    tokenizer,
                    texts,
                    GenerationConfig(
                        max_new_tokens=task.max_new_tokens, batch_size=args.n, share_prefix=False
                    ),
                    should_stop=stop,
                    stop_delay=delay,
                    progress=False,
                )
                times["localdpo"].append(time.perf_counter() - start)
            same = sum((a.text, a.complete) == b for a, b in zip(ours, base))
            same_text = sum(a.text == b[0] for a, b in zip(ours, base))
            slow, fast = statistics.median(times["generate"]), statistics.median(times["localdpo"])
            print(
                f"| {name} | {mode} | {slow:.1f} | {fast:.1f} | {slow / fast:.2f}x | {same}/{len(texts)} "
                f"| {same_text}/{len(texts)} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
