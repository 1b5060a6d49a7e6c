"""Training-step throughput of localdpo's fast path against TRL 1.16's DPOTrainer, on the same steers.

    python experiments/bench_throughput.py --device cuda --out results.md     # one H100: < 9 minutes
    python experiments/bench_throughput.py --quick --out results_cpu.md       # CPU: 135M, prefix 256, minutes

Every contender trains the same policy on the same synthetic steers (random token ids: a shared
prompt+prefix of 256 / 1024 / 2048 tokens, chosen and rejected tails of 8 to 64 tokens each, the tails
scored: standard DPO on the completion), in the same precision (fp32 on CPU, bf16 weights on CUDA), batch
size and optimizer (AdamW at lr 0: the step costs the same and every contender sees the same weights, so
their first-step losses must agree, which the `loss` column checks; the reference is the policy with 1%
noise on its weights, so the loss is not log 2). One step = forward(s) + sigmoid DPO loss + backward +
optimizer step.

Contenders: TRL's DPOTrainer (gradient checkpointing on, its default, or off; reference model live or
`precompute_ref_log_probs`), timed in-process through the trainer's own collator and `compute_loss`; and
localdpo (`localdpo.packing.pair_token_logps` + `localized_dpo_loss`) with the reference live (a forward of
the reference model each step) or cached (precomputed reference log-probs), packing on/off, span head on/off.
Reported per contender: pairs/s and tokens/s (tokens = both unpacked sides, the same for everyone), median
step time, peak memory, ratio to the fastest TRL contender of the same model and shape (measured in the same
run), model FLOPs utilisation on CUDA (6·N·tokens / step time / peak FLOP/s; the reference forward is not
counted) and, on CUDA, the largest batch that fits (doubling then bisection, OOM caught).

Peak memory, above the loaded policy and reference weights (optimizer state, gradients, activations,
logits): CUDA `torch.cuda.max_memory_allocated` minus what was allocated before the contender; CPU: each
contender runs in its own subprocess and reports the growth of its peak resident set (`ru_maxrss`) from
after model loading to the end of its steps.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}
"""Dense bf16 tensor-core peak FLOP/s by device name fragment (NVIDIA datasheets, no sparsity)."""


@dataclass(frozen=True)
class Contender:
    """One way of running a DPO training step."""

    name: str
    trainer: str
    """"trl" or "localdpo"."""
    reference: str
    """"live": reference forward each step; "cache": reference log-probs precomputed before timing."""
    gradient_checkpointing: bool = False
    packing: bool = False
    span_head: bool = False
    attention: str = "sdpa"
    """Attention implementation of the policy (and reference) for this contender."""


CONTENDERS = [
    Contender("TRL default (GC on, live ref)", "trl", "live", gradient_checkpointing=True),
    Contender("TRL GC off", "trl", "live"),
    Contender("TRL precompute_ref (GC on)", "trl", "cache", gradient_checkpointing=True),
    Contender("TRL precompute_ref, GC off", "trl", "cache"),
    *[
        Contender(
            f"localdpo {ref}{' +pack' if pack else ''}{' +span' if span else ''}",
            "localdpo",
            ref,
            packing=pack,
            span_head=span,
        )
        for ref in ("live", "cache")
        for pack in (False, True)
        for span in (False, True)
    ],
]
FLEX_CONTENDER = Contender(
    "localdpo cache +pack +span (flex)",
    "localdpo",
    "cache",
    packing=True,
    span_head=True,
    attention="flex_attention",
)
VOCAB = 49152
"""Both models' vocabulary (SmolLM2's tokenizer): the synthetic ids are drawn below it."""

SMOLLM2_1_7B = dict(
    vocab_size=49152, hidden_size=2048, intermediate_size=8192, num_hidden_layers=24, num_attention_heads=32,
    num_key_value_heads=32, tie_word_embeddings=True, max_position_embeddings=8192, rope_theta=130000.0,
    rms_norm_eps=1e-5,
)  # fmt: skip
"""SmolLM2-1.7B's shape (its config.json), with random weights."""


def make_steers(count: int, prefix_length: int, vocab: int, seed: int):
    """`count` synthetic TokenizedSteer: a random shared head of `prefix_length` ids, tails of 8-64 ids, tails scored."""
    from localdpo.tokenization import SpanMode, TokenizedSteer

    generator = torch.Generator().manual_seed(seed)
    steers = []
    for i in range(count):
        head = torch.randint(0, vocab, (prefix_length,), generator=generator)
        chosen_tail = torch.randint(
            0, vocab, (int(torch.randint(8, 65, (1,), generator=generator)),), generator=generator
        )
        rejected_tail = torch.randint(
            0, vocab, (int(torch.randint(8, 65, (1,), generator=generator)),), generator=generator
        )
        rejected_tail[0] = (chosen_tail[0] + 1) % vocab  # the sides diverge right after the head
        chosen, rejected = torch.cat([head, chosen_tail]), torch.cat([head, rejected_tail])
        chosen_mask = torch.arange(chosen.numel()) >= prefix_length
        rejected_mask = torch.arange(rejected.numel()) >= prefix_length
        steers.append(
            TokenizedSteer(
                chosen,
                rejected,
                chosen_mask,
                rejected_mask,
                prefix_length,
                prefix_length,
                prefix_length,
                SpanMode.COMPLETION,
                steer_id=f"synthetic-{i}",
            )  # fmt: skip
        )
    return steers


def load_models(model_name: str, device: str):
    """`(policy, reference, tokenizer)`: the same weights twice, fp32 on CPU and bf16 on CUDA."""
    from localdpo.embedded import embedded_tokenizer

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = embedded_tokenizer()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model_name == "135m":
        from localdpo.models import load_model

        policy, _ = load_model(dtype=dtype, device=device)
    elif model_name == "1.7b":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(**SMOLLM2_1_7B, pad_token_id=tokenizer.pad_token_id, attn_implementation="sdpa")
        torch.manual_seed(0)
        with torch.device(device):
            policy = LlamaForCausalLM(config).to(dtype)
    else:
        raise ValueError(f"unknown model {model_name!r}: 135m or 1.7b")
    import copy

    reference = copy.deepcopy(policy).eval().requires_grad_(False)
    torch.manual_seed(1)
    with torch.no_grad():
        for parameter in reference.parameters():  # a reference that differs from the policy
            parameter.add_(torch.randn_like(parameter) * parameter.float().std().to(parameter.dtype) * 0.01)
    return policy, reference, tokenizer


def _sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def _trl_step_fn(contender: Contender, policy, reference, tokenizer, steers, device: str, tmp: str):
    """A closure running one TRL training step, and the seconds spent precomputing reference log-probs."""
    from datasets import Dataset
    from trl import DPOConfig, DPOTrainer

    args = DPOConfig(
        output_dir=tmp, bf16=False, use_cpu=device == "cpu", report_to=[], save_strategy="no", max_length=None,
        per_device_train_batch_size=len(steers), gradient_checkpointing=contender.gradient_checkpointing,
        precompute_ref_log_probs=contender.reference == "cache", beta=0.1, disable_dropout=True,
    )  # fmt: skip
    dummy = Dataset.from_list([{"prompt": "a", "chosen": " b", "rejected": " c"}])
    trainer = DPOTrainer(
        policy, ref_model=reference, args=args,
        train_dataset=dummy, processing_class=tokenizer,
    )  # fmt: skip
    rows = [
        {"prompt_ids": s.chosen_ids[: s.divergence].tolist(), "chosen_ids": s.chosen_ids[s.divergence :].tolist(),
         "rejected_ids": s.rejected_ids[s.divergence :].tolist()}
        for s in steers
    ]  # fmt: skip
    precompute_s = 0.0
    if contender.reference == "cache":
        start = time.perf_counter()
        ref_chosen, ref_rejected = trainer.compute_ref_log_probs(
            trainer.ref_model, trainer._prepare_inputs(trainer.data_collator(rows))
        )
        _sync(device)
        precompute_s = time.perf_counter() - start
        for row, c, r in zip(rows, ref_chosen.tolist(), ref_rejected.tolist()):
            row["ref_chosen_logps"], row["ref_rejected_logps"] = c, r

    def step():
        inputs = trainer._prepare_inputs(trainer.data_collator(rows))
        loss = trainer.compute_loss(trainer.model, inputs)
        loss.backward()
        return loss

    return step, precompute_s


def _localdpo_step_fn(contender: Contender, policy, reference, tokenizer, steers, device: str):
    from localdpo.data import collate_pairs
    from localdpo.losses import localized_dpo_loss
    from localdpo.packing import pair_token_logps

    options = dict(
        packing=contender.packing, span_head=contender.span_head, pad_token_id=tokenizer.pad_token_id
    )
    precompute_s = 0.0
    cached = None
    if contender.reference == "cache":
        start = time.perf_counter()
        with torch.no_grad():
            cached = pair_token_logps(reference, steers, **options)[:2]
        _sync(device)
        precompute_s = time.perf_counter() - start

    def step():
        batch = collate_pairs(steers, pad_token_id=tokenizer.pad_token_id)
        if cached is None:
            with torch.no_grad():
                ref_chosen, ref_rejected, _, _ = pair_token_logps(reference, batch, **options)
        else:
            ref_chosen, ref_rejected = cached
        chosen, rejected, chosen_mask, rejected_mask = pair_token_logps(policy, batch, **options)
        loss = localized_dpo_loss(
            chosen, rejected, ref_chosen, ref_rejected, chosen_mask, rejected_mask, beta=0.1
        ).loss
        loss.backward()
        return loss

    return step, precompute_s


def run_contender(
    contender: Contender,
    policy,
    reference,
    tokenizer,
    steers,
    *,
    device: str,
    warmup: int,
    steps: int,
    tmp: str,
) -> dict:
    """Median step time, precompute time and peak memory of `steps` timed steps after `warmup`."""
    for model in (policy, reference):
        model.set_attn_implementation(contender.attention)
    if contender.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        policy.gradient_checkpointing_disable()
    policy.train()
    optimizer = torch.optim.AdamW(policy.parameters(), lr=0.0)
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device == "cuda":
        gc.collect()
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    cuda_before = torch.cuda.memory_allocated() if device == "cuda" else 0
    try:
        if contender.trainer == "trl":
            step, precompute_s = _trl_step_fn(contender, policy, reference, tokenizer, steers, device, tmp)
        else:
            step, precompute_s = _localdpo_step_fn(contender, policy, reference, tokenizer, steers, device)
        times, losses = [], []
        for i in range(warmup + steps):
            _sync(device)
            start = time.perf_counter()
            losses.append(step().detach())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            if i >= warmup:
                times.append(time.perf_counter() - start)
        if device == "cuda":
            peak_mib = (torch.cuda.max_memory_allocated() - cuda_before) / 2**20
        else:
            peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        return {
            "step_s": statistics.median(times),
            "precompute_s": precompute_s,
            "peak_mib": peak_mib,
            "loss": float(losses[0]),
            "status": "ok",
        }
    except torch.OutOfMemoryError:
        return {"status": "OOM"}
    finally:
        del optimizer
        policy.zero_grad(set_to_none=True)
        policy.gradient_checkpointing_disable()
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()


def worker(spec: dict) -> dict:
    """Run one contender in this process (used per contender on CPU so ru_maxrss is its own)."""
    torch.manual_seed(0)
    policy, reference, tokenizer = load_models(spec["model"], spec["device"])
    steers = make_steers(spec["batch"], spec["prefix"], VOCAB, seed=spec["prefix"])
    return run_contender(
        Contender(**spec["contender"]), policy, reference, tokenizer, steers, device=spec["device"],
        warmup=spec["warmup"], steps=spec["steps"], tmp=spec["tmp"],
    )  # fmt: skip


def in_subprocess(spec: dict, timeout: float) -> dict:
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    try:
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout)
    except subprocess.TimeoutExpired:
        return {"status": f"timeout ({timeout:.0f} s)"}
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        tail = (done.stderr or done.stdout).strip().splitlines()[-1:] or ["?"]
        return {"status": f"failed: {tail[0][:120]}"}
    return json.loads(lines[-1][len("RESULT ") :])


def largest_batch(
    contender, policy, reference, tokenizer, prefix, *, device, tmp, deadline, start_batch, cap=256
):
    """The largest batch (pairs) one step of `contender` fits in GPU memory: doubling, then bisection."""

    def fits(batch: int) -> bool:
        steers = make_steers(batch, prefix, VOCAB, seed=prefix)
        return (
            run_contender(
                contender, policy, reference, tokenizer, steers, device=device, warmup=0, steps=1, tmp=tmp
            )["status"]
            == "ok"
        )

    low, high = 0, None
    batch = start_batch
    while batch <= cap and time.monotonic() < deadline:
        if fits(batch):
            low, batch = batch, batch * 2
        else:
            high = batch
            break
    if low == 0:
        return "OOM" if high else "n/a"
    high = high or min(batch, cap + 1)
    while high - low > max(1, low // 8) and time.monotonic() < deadline:
        middle = (low + high) // 2
        low, high = (middle, high) if fits(middle) else (low, middle)
    return f"{low}" if high <= cap else f">={low}"


def _free(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def peak_flops(device: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if device != "cuda":
        return None
    name = torch.cuda.get_device_name()
    return next((flops for key, flops in PEAK_BF16_FLOPS.items() if key in name), None)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", choices=["cpu", "cuda"]
    )
    parser.add_argument("--quick", action="store_true", help="CPU-sized run: 135M, prefix 256, batch 2")
    parser.add_argument("--models", nargs="+", default=None, help="135m and/or 1.7b (default: both on CUDA)")
    parser.add_argument("--prefix-lengths", nargs="+", type=int, default=None)
    parser.add_argument(
        "--batch", type=int, default=None, help="pairs per step (default 8 on CUDA, 2 on CPU)"
    )
    parser.add_argument("--warmup", type=int, default=None)
    parser.add_argument("--steps", type=int, default=None)
    parser.add_argument("--budget-min", type=float, default=8.0, help="stop starting new work after this")
    parser.add_argument(
        "--max-batch-prefix", type=int, default=1024, help="shape of the largest-batch search (CUDA)"
    )
    parser.add_argument("--no-max-batch", action="store_true")
    parser.add_argument("--flex", action="store_true", help="also time packing with FlexAttention (CUDA)")
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="override the device's peak bf16 TFLOP/s"
    )
    parser.add_argument(
        "--only", nargs="+", default=None, help="run contenders whose name contains one of these"
    )
    parser.add_argument(
        "--out", default=None, help="write the markdown table here (and the raw rows to OUT.json)"
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    quick = args.quick or not cuda
    models = args.models or (["135m"] if quick else ["135m", "1.7b"])
    prefixes = args.prefix_lengths or (
        [256] if args.quick else [256, 1024] if not cuda else [256, 1024, 2048]
    )
    batch = args.batch or (8 if cuda else 2)
    warmup = args.warmup if args.warmup is not None else 1
    steps = args.steps or 3
    deadline = time.monotonic() + 60 * args.budget_min
    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), "localdpo-bench")
    contenders = CONTENDERS + ([FLEX_CONTENDER] if cuda and args.flex else [])
    if args.only:
        contenders = [c for c in contenders if any(part in c.name for part in args.only)]
    flops = peak_flops(args.device, args.peak_tflops)
    machine = torch.cuda.get_device_name() if cuda else f"CPU, {os.cpu_count()} cores"
    machine += f", torch {torch.__version__}, load average at start {os.getloadavg()[0]:.1f}"
    print(f"# bench_throughput on {machine}: models {models}, prefixes {prefixes}, batch {batch}, "
          f"{warmup} warmup + {steps} timed steps", flush=True)  # fmt: skip

    rows = []
    for model_name in models:  # phase 1: throughput of every contender
        shared = load_models(model_name, args.device) if cuda else None
        params = sum(p.numel() for p in shared[0].parameters()) if shared else None
        for prefix in prefixes:
            steers = make_steers(batch, prefix, VOCAB, seed=prefix)
            tokens = sum(s.chosen_ids.numel() + s.rejected_ids.numel() for s in steers)
            for contender in contenders:
                if time.monotonic() > deadline:
                    result = {"status": "not run (time budget)"}
                elif cuda:
                    result = run_contender(
                        contender, *shared, steers, device="cuda", warmup=warmup, steps=steps, tmp=tmp
                    )
                else:
                    spec = dict(model=model_name, device="cpu", batch=batch, prefix=prefix, contender=asdict(contender),
                                warmup=warmup, steps=steps, tmp=tmp)  # fmt: skip
                    result = in_subprocess(spec, timeout=max(30.0, deadline - time.monotonic()))
                row = dict(model=model_name, prefix=prefix, contender=contender.name, trainer=contender.trainer,
                           tokens=tokens, params=params, **result)  # fmt: skip
                rows.append(row)
                ok = row["status"] == "ok"
                shown = f"{row['step_s']:.3f} s/step, peak {row['peak_mib']:.0f} MiB" if ok else row["status"]
                print(f"  {model_name} prefix {prefix:5d}  {contender.name:38s} {shown}", flush=True)
        del shared
        _free(cuda)
    if cuda and not args.no_max_batch and args.max_batch_prefix in prefixes:
        for model_name in reversed(models):  # phase 2, with the time left: the larger model first
            shared = load_models(model_name, args.device)
            for contender in contenders:
                fit = "not run (time budget)"
                if time.monotonic() < deadline:
                    fit = largest_batch(contender, *shared, args.max_batch_prefix, device="cuda", tmp=tmp,
                                        deadline=deadline, start_batch=batch)  # fmt: skip
                for row in rows:
                    if (row["model"], row["prefix"], row["contender"]) == (
                        model_name,
                        args.max_batch_prefix,
                        contender.name,
                    ):
                        row["max_batch"] = fit
                print(
                    f"  {model_name} prefix {args.max_batch_prefix:5d}  {contender.name:38s} largest batch {fit}",
                    flush=True,
                )
            del shared
            _free(cuda)
    table = render(rows, batch=batch, machine=machine, flops=flops, cuda=cuda, warmup=warmup, steps=steps)
    print(table)
    if args.out:
        with open(args.out + ".tmp", "w") as handle:
            handle.write(table)
        os.replace(args.out + ".tmp", args.out)
        with open(args.out + ".json.tmp", "w") as handle:
            json.dump(
                {"machine": machine, "batch": batch, "warmup": warmup, "steps": steps, "rows": rows},
                handle,
                indent=1,
            )
        os.replace(args.out + ".json.tmp", args.out + ".json")
    return 0


def render(rows, *, batch, machine, flops, cuda, warmup, steps) -> str:
    memory = "peak MiB above weights" + ("" if cuda else " (RSS)")
    header = [
        "model",
        "prefix",
        "contender",
        "pairs/s",
        "tokens/s",
        "step s (median)",
        "ref precompute s",
        "loss (step 1)",
        memory,
        "vs fastest TRL",
    ]
    if cuda:
        header += ["MFU", "largest batch"]
    lines = [
        f"Machine: {machine}. Batch {batch} pairs, {warmup} warmup + {steps} timed steps, median. "
        "Tokens = both unpacked sides (prompt+prefix+tail, twice), the same for every contender.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]
    for row in rows:
        group = [r for r in rows if r["model"] == row["model"] and r["prefix"] == row["prefix"]]
        trl_best = max(
            (batch / r["step_s"] for r in group if r["trainer"] == "trl" and r["status"] == "ok"),
            default=None,
        )
        if row["status"] != "ok":
            cells = [row["model"], str(row["prefix"]), row["contender"], row["status"]] + [""] * (
                len(header) - 4
            )
            if cuda:
                cells[-1] = str(row.get("max_batch", ""))
            lines.append("| " + " | ".join(cells) + " |")
            continue
        pairs_s = batch / row["step_s"]
        cells = [
            row["model"], str(row["prefix"]), row["contender"], f"{pairs_s:.3g}", f"{row['tokens'] / row['step_s']:.3g}",
            f"{row['step_s']:.3f}", f"{row['precompute_s']:.2f}" if row["precompute_s"] else "-", f"{row['loss']:.5f}", f"{row['peak_mib']:.0f}",
            f"{pairs_s / trl_best:.2f}x" if trl_best else "n/a",
        ]  # fmt: skip
        if cuda:
            mfu = (
                6 * row["params"] * row["tokens"] / row["step_s"] / flops if flops and row["params"] else None
            )
            cells += [f"{100 * mfu:.1f}%" if mfu is not None else "n/a", str(row.get("max_batch", "-"))]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    sys.exit(main())
