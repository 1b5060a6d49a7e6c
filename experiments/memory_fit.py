"""Peak memory per process: predicted from parameters, gradients, AdamW state and activations; measured on CPU.

    python experiments/memory_fit.py --table                       # docs/trainer.md's table of what fits (arithmetic)
    nice -n 10 python experiments/memory_fit.py --measure --out docs/results/memory-fit/cpu.md   # ~10 GB RAM; 22 min on the shared 2-core machine

The prediction (`predict`), per process, for a model of P parameters, T of them trained, on N processes:
  weights      4·P bytes (the trainer keeps fp32 master weights; bf16 is autocast compute), / N under FSDP
  gradients    4·T, / N under FSDP; DDP adds 4·T for its gradient buckets (`gradient_as_bucket_view` off)
  AdamW        8·T (exp_avg, exp_avg_sq in fp32), / N under FSDP
  live ref.    4·P for full fine-tuning's frozen copy (/ N under FSDP); 0 with the reference cache or LoRA
  FSDP gather  2 decoder layers in flight (the one running, the one prefetched) and the root (embeddings,
               LM head) gathered whole, each in the compute dtype, plus their unsharded fp32 gradients
  activations  per token per decoder layer, what autograd keeps for backward in a transformers Llama block:
               each RMSNorm its input, normalized input and output (2 × 3h), the rotated queries (h), keys and
               values (2·kv), the attention output and its contiguous copy for o_proj (2h), the MLP's gate, SiLU,
               up and product (4i): 9h + 2kv + 4i values in the compute dtype (2 bytes bf16, 4 fp32); not the
               attention kernel's own buffers. With gradient checkpointing only each layer's input (h) plus one
               layer's full set. Span-only LM head: no (T, V) logits.
  baseline     the process before the model exists (torch, transformers, tokenizer): measured, ~0.6 GB on CPU;
               CUDA context and allocator slack on a GPU are not modelled (keep ~10% free).
`--measure` runs the trainer's fast path (packing + span head + `localized_dpo_loss` against cached
reference log-probs, fused AdamW, 2 steps) on random-weight models of the real shapes in fp32 on CPU, one
subprocess each, and compares its peak resident set (`ru_maxrss`) to the prediction.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from dataclasses import dataclass

GB = 1e9


@dataclass(frozen=True)
class Shape:
    """A Llama-style decoder's size (its config.json)."""

    name: str
    params: float
    hidden: int
    layers: int
    intermediate: int
    kv_hidden: int
    """num_key_value_heads × head_dim."""
    vocab: int
    heads: int
    tied: bool


SHAPES = {
    "0.135B": Shape("SmolLM2-135M", 134.5e6, 576, 30, 1536, 192, 49152, 9, True),
    "1.7B": Shape("SmolLM2-1.7B", 1.711e9, 2048, 24, 8192, 2048, 49152, 32, True),
    "8B": Shape("Llama-3.1-8B", 8.03e9, 4096, 32, 14336, 1024, 128256, 32, False),
    "70B": Shape("Llama-3.1-70B", 70.6e9, 8192, 80, 28672, 1024, 128256, 64, False),
}
LORA_RANK = 16
"""`model.lora.r` default, on all seven projections (`model.lora.target_modules` default)."""


def lora_params(shape: Shape, rank: int = LORA_RANK) -> float:
    """Adapter parameters: r·(in + out) for q, k, v, o, gate, up, down of every layer = r·(9h + 2kv + 3i)."""
    h, kv, i = shape.hidden, shape.kv_hidden, shape.intermediate
    return shape.layers * rank * (9 * h + 2 * kv + 3 * i)


def layer_params(shape: Shape) -> float:
    h, kv, i = shape.hidden, shape.kv_hidden, shape.intermediate
    return 2 * h * h + 2 * h * kv + 3 * h * i + 2 * h


def activation_bytes(shape: Shape, tokens: int, dtype_bytes: int, *, checkpointing: bool = False) -> float:
    """What autograd keeps for backward over `tokens` forwarded tokens (see the module docstring)."""
    h, kv, i = shape.hidden, shape.kv_hidden, shape.intermediate
    per_layer = 9 * h + 2 * kv + 4 * i  # elements per token
    if checkpointing:
        return tokens * (shape.layers * h + per_layer) * dtype_bytes
    return tokens * shape.layers * per_layer * dtype_bytes


def predict(
    shape: Shape,
    *,
    lora: bool,
    strategy: str,
    world: int,
    tokens: int,
    compute_bytes: int,
    live_reference: bool = False,
    checkpointing: bool = False,
) -> dict[str, float]:
    """Bytes per process by component (and `total`), for `strategy` `ddp` or `fsdp` over `world` processes."""
    params = shape.params
    trained = lora_params(shape) if lora else params
    shard = world if strategy == "fsdp" else 1
    parts = {
        "weights": 4 * params / shard,
        "gradients": 4 * trained / shard + (4 * trained if strategy == "ddp" and world > 1 else 0),
        "adamw": 8 * trained / shard,
        "reference": 4 * params / shard if live_reference and not lora else 0.0,
        "gather": 0.0,
        "activations": activation_bytes(shape, tokens, compute_bytes, checkpointing=checkpointing),
    }
    if strategy == "fsdp" and world > 1:
        root = shape.vocab * shape.hidden * (1 if shape.tied else 2)
        grad_bytes = 0 if lora else 4
        parts["gather"] = (2 * layer_params(shape) + root) * (compute_bytes + grad_bytes)
    parts["total"] = sum(parts.values())
    return parts


# ------------------------------------------------------------------ the table of what fits

TABLE_TOKENS = 8 * (1024 + 64 + 64)
"""Tokens forwarded per process per micro-batch in the table: 8 pairs, each a 1024-token shared prompt+prefix
packed once and two 64-token tails (`train.batch_size=8`, bench_throughput's GPU shape)."""
GPUS = {"80 GB": 80e9, "141 GB": 141e9}
WORLD = 8


EXTRA_ROWS = [("70B", False, 32), ("70B", True, 16)]
"""Rows past one 8-GPU node: 70B full fine-tuning sharded over 4 nodes, LoRA over 2."""


def fits_table() -> str:
    """docs/trainer.md's table: GB per GPU, bf16 compute, reference cache, 8 GPUs (and `EXTRA_ROWS`),
    gradient checkpointing (GC) off and on."""
    header = ["model", "training", "strategy, GPUs", "weights+grads+AdamW GB", "activations GB (GC off / on)",
              "total GB (GC off)", "total GB (GC on)", *[f"fits {g}" for g in GPUS]]  # fmt: skip
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    rows = [
        (size, lora, strategy, WORLD)
        for size in SHAPES
        for lora in (False, True)
        for strategy in ("ddp", "fsdp")
    ]
    rows += [(size, lora, "fsdp", world) for size, lora, world in EXTRA_ROWS]
    for size, lora, strategy, world in rows:
        shape = SHAPES[size]
        off, on = (
                    predict(shape, lora=lora, strategy=strategy, world=world, tokens=TABLE_TOKENS,
                            compute_bytes=2, checkpointing=gc)
                    for gc in (False, True)
                )  # fmt: skip
        state = off["weights"] + off["gradients"] + off["adamw"] + off["gather"]
        fits = []
        for capacity in GPUS.values():
            usable = 0.9 * capacity
            fits.append("yes" if off["total"] <= usable else "with GC" if on["total"] <= usable else "no")
        lines.append("| " + " | ".join([
                    size, "LoRA r=16" if lora else "full", f"{'DDP' if strategy == 'ddp' else 'FSDP2'}, {world}",
                    f"{state / GB:.1f}", f"{off['activations'] / GB:.1f} / {on['activations'] / GB:.1f}",
                    f"{off['total'] / GB:.1f}", f"{on['total'] / GB:.1f}", *fits,
                ]) + " |")  # fmt: skip
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ measured on CPU

MEASURED = [
    # (size, lora, pairs, prefix, tail): short sequences keep each row to minutes on a shared CPU
    ("0.135B", False, 2, 64, 16),
    ("0.135B", True, 2, 64, 16),
    ("1.7B", True, 1, 16, 8),
]
"""The 1.7B shape is measured with LoRA only: full fine-tuning needs 4+4+8 = 16 bytes x 1.7B = 27 GB, more
than the project's 23 GB CPU machine has."""
MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": str(1 << 20)}
"""glibc keeps freed memory for reuse and raises its mmap threshold after each large free, so a process's peak
RSS can exceed its peak of live tensors by whatever the allocator kept (measured: SmolLM2-135M LoRA, 768
tokens, 3.65 GB peak RSS where the tensors explain ~2 GB). A fixed 1 MiB threshold makes every tensor above
1 MiB its own mapping, returned at free: the measured peak is then the tensors' peak (plus small objects)."""


def worker(spec: dict) -> dict:
    """Train 2 steps of the fast path on a random model of `spec`'s shape; peak RSS and its parts."""
    import torch

    torch.set_num_threads(1)
    from transformers import LlamaConfig, LlamaForCausalLM

    from localdpo.losses import localized_dpo_loss
    from localdpo.steers.batches import CHOSEN_LOSS_MASK, REJECTED_LOSS_MASK, collate_pairs
    from localdpo.trainer.modeling import PolicyForward
    from localdpo.trainer.optim import build_optimizer

    baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    shape = SHAPES[spec["size"]]
    config = LlamaConfig(
        vocab_size=shape.vocab, hidden_size=shape.hidden, intermediate_size=shape.intermediate,
        num_hidden_layers=shape.layers, num_attention_heads=shape.heads,
        num_key_value_heads=shape.kv_hidden // (shape.hidden // shape.heads), tie_word_embeddings=shape.tied,
        attn_implementation="sdpa",
    )  # fmt: skip
    torch.manual_seed(0)
    model = LlamaForCausalLM(config)
    params = sum(p.numel() for p in model.parameters())
    if spec["lora"]:
        from peft import LoraConfig, get_peft_model

        targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
        model = get_peft_model(model, LoraConfig(r=LORA_RANK, lora_alpha=32, target_modules=targets))
    model.train()
    forward = PolicyForward(model, packing=True, span_head=True, pad_token_id=0)
    steers = synthetic_steers(spec["pairs"], spec["prefix"], spec["tail"], shape.vocab)
    batch = collate_pairs(steers, pad_token_id=0)
    tokens = sum(spec["prefix"] + 2 * spec["tail"] for _ in steers)  # packed: the prefix once
    with torch.no_grad():
        ref_chosen, ref_rejected = (t.detach() for t in forward(batch))
    trainable = [p for p in model.parameters() if p.requires_grad]
    from localdpo.trainer.config import OptimConfig

    optimizer, _ = build_optimizer(trainable, OptimConfig(lr=1e-5), max_steps=2, device=torch.device("cpu"))
    times = []
    for _ in range(2):
        start = time.perf_counter()
        chosen, rejected = forward(batch)
        loss = localized_dpo_loss(
            chosen, rejected, ref_chosen, ref_rejected, batch[CHOSEN_LOSS_MASK].bool(),
            batch[REJECTED_LOSS_MASK].bool(), beta=0.1,
        ).loss  # fmt: skip
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return dict(spec, params=params, trained=sum(p.numel() for p in trainable), tokens=tokens,
                baseline=baseline, peak=peak, step_s=times)  # fmt: skip


def synthetic_steers(count: int, prefix: int, tail: int, vocab: int):
    """`count` TokenizedSteer: a random shared `prefix`, two random `tail`-token tails, the tails scored."""
    import torch

    from localdpo.steers.tokenization import SpanMode, TokenizedSteer

    generator = torch.Generator().manual_seed(0)
    steers = []
    for i in range(count):
        head = torch.randint(0, vocab, (prefix,), generator=generator)
        chosen_tail, rejected_tail = torch.randint(0, vocab, (2, tail), generator=generator)
        rejected_tail[0] = (chosen_tail[0] + 1) % vocab
        chosen, rejected = torch.cat([head, chosen_tail]), torch.cat([head, rejected_tail])
        mask = torch.arange(prefix + tail) >= prefix
        steers.append(TokenizedSteer(chosen, rejected, mask, mask.clone(), prefix, prefix, prefix,
                                     SpanMode.COMPLETION, steer_id=f"m{i}"))  # fmt: skip
    return steers


def measure_table() -> str:
    lines = [
        "| model (random weights) | training | tokens / step | measured peak RSS GB | baseline GB | "
        "predicted GB (baseline + weights + grads + AdamW + activations, fp32) | measured / predicted | step s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    specs = [dict(size=size, lora=lora, pairs=pairs, prefix=prefix, tail=tail)
             for size, lora, pairs, prefix, tail in MEASURED]  # fmt: skip
    env = dict(os.environ, **MALLOC_ENV)

    def start(spec):
        return subprocess.Popen([sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)  # fmt: skip

    # every row at once, each its own process (so its own ru_maxrss): ~10 GB together, the 1.7B one ~8 GB
    workers = [start(spec) for spec in specs]
    results = [process.communicate() + (process.returncode,) for process in workers]
    for spec, (stdout, stderr, returncode) in zip(specs, results):
        if returncode != 0:
            raise SystemExit(f"worker {spec} failed:\n{stderr[-3000:]}")
        row = json.loads(stdout.strip().splitlines()[-1])
        size, lora, pairs, prefix, tail = (spec[k] for k in ("size", "lora", "pairs", "prefix", "tail"))
        parts = predict(
            SHAPES[size], lora=lora, strategy="ddp", world=1, tokens=row["tokens"], compute_bytes=4
        )
        predicted = row["baseline"] + parts["total"]
        lines.append("| " + " | ".join([
            f"{size} ({row['params'] / 1e6:.0f}M)", f"LoRA r={LORA_RANK} ({row['trained'] / 1e6:.1f}M trained)"
            if lora else "full", f"{row['tokens']} ({pairs} pairs, prefix {prefix}, tails {tail})",
            f"{row['peak'] / GB:.2f}", f"{row['baseline'] / GB:.2f}", f"{predicted / GB:.2f}",
            f"{row['peak'] / predicted:.2f}", " / ".join(f"{s:.1f}" for s in row["step_s"]),
        ]) + " |", )  # fmt: skip
        print(lines[-1], flush=True)
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", action="store_true", help="print the table of what fits (arithmetic only)")
    parser.add_argument(
        "--measure", action="store_true", help="measure peak RSS on CPU against the prediction"
    )
    parser.add_argument("--out", default=None, help="also write the measured table (markdown) here")
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print(json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    if args.table or not args.measure:
        print(fits_table())
    if args.measure:
        started = time.monotonic()
        table = measure_table()
        header = (
            f"{time.strftime('%Y-%m-%d')}. `nice -n 10 python experiments/memory_fit.py --measure`, CPU ({os.cpu_count()} "
            f"cores, shared: load average {os.getloadavg()[0]:.1f} at the end), fp32, one torch thread, "
            f"{(time.monotonic() - started) / 60:.1f} min. Peak RSS: `resource.getrusage(RUSAGE_SELF).ru_maxrss` "
            "of a fresh process per row after 2 optimizer steps (packing + span head, cached reference "
            "log-probs, fused AdamW), run with MALLOC_MMAP_THRESHOLD_=1048576 (see `MALLOC_ENV`); baseline: the "
            "same before the model exists.\n\n"
        )  # fmt: skip
        print(table)
        if args.out:
            from localdpo.storage.fileio import atomic_write_text

            os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
            atomic_write_text(args.out, header + table)
    return 0


if __name__ == "__main__":
    sys.exit(main())
