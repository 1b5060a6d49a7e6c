"""Training-step throughput of localdpo's fast path against TRL 1.16's DPOTrainer, on the same steers.

    python experiments/bench_throughput.py --quick --out results_cpu.md      # CPU, the headline: < 10 min on 2 cores
    python experiments/bench_throughput.py --device cpu --out results_cpu.md # CPU, 12 contenders x 2 shapes: ~70 min
    python experiments/bench_throughput.py --device cuda --out results.md    # one H100: < 9 minutes (not yet run)
    bash experiments/gpu_check.sh outputs/gpu fsdp_bench                      # one H200, 1024-token prefixes, + FSDP2

Every contender trains the same policy on the same synthetic steers (random token ids: a shared
prompt+prefix of 256 / 1024 / 2048 tokens, chosen and rejected tails of 8 to 64 tokens each, the tails
scored: standard DPO on the completion), in the same precision (fp32 on CPU, bf16 weights on CUDA), batch
size and optimizer (AdamW at lr 0: the step costs the same and every contender sees the same weights, so
their first-step losses must agree, which the `loss` column checks; the reference is the policy with 1%
noise on its weights, so the loss is not log 2). One step = forward(s) + sigmoid DPO loss + backward +
optimizer step.

Contenders: TRL's DPOTrainer (gradient checkpointing on, its default, or off; reference model live or
`precompute_ref_log_probs`), timed in-process through the trainer's own collator and `compute_loss`; and
localdpo (`localdpo.forward.pair_logps` + `localized_dpo_loss`) with the reference live (a forward of
the reference model each step) or cached (precomputed reference log-probs), packing on/off, span head on/off.
They run in the order of `CONTENDERS`: each TRL configuration followed by the localdpo contenders that handle
the reference the same way, so a ratio compares contenders measured minutes apart. `--quick` runs the three
`HEADLINE` contenders: TRL's fastest configuration and localdpo's fast path with a cached and a live reference.
`--fsdp` adds the fast path through the trainer's FSDP2 sharding on one device (`FSDP_CONTENDER`).

Reported per contender: pairs/s and tokens/s (tokens = both unpacked sides, the same for everyone), median
step time, peak memory, ratio to the fastest TRL contender of the same model and shape (measured in the same
round), model FLOPs utilisation on CUDA (6·N·tokens / step time / peak FLOP/s; the reference forward is not
counted) and, on CUDA, the largest batch that fits (doubling then bisection, OOM caught).

Peak memory, above the loaded policy and reference weights (optimizer state, gradients, activations,
logits): CUDA `torch.cuda.max_memory_allocated` minus what was allocated before the contender; CPU: each
contender runs in its own subprocess and reports the growth of its peak resident set (`ru_maxrss`) from
after model loading to the end of its steps.

Sizing the run (CPU). One subprocess per contender and round (a *visit*: load, reference precompute, one
warm-up step, timed steps), one torch thread each (`--threads`, see `CPU_THREADS`). The first visit's first
timed step is measured before anything else is decided: from it `plan_run` picks the timed steps per visit and the number of rounds that fit the budget (`--budget-min`:
9 for `--quick`, none otherwise) and prints the plan and its estimate; when not even one round of one timed
step fits, it says so, names what to run instead, and stops (exit status 1). Rounds alternate the order
(ABC, CBA, ...); after each, another starts only when the round just measured fits the time left. The budget
never cuts a contender short: every contender listed gets a result in every round run, and a status
`timeout` means a visit ran past several times its estimate (a hang), never the budget. On CUDA the
contenders run in one process and the budget (default 8 minutes) stops new work from starting
(`not run (time budget)`).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import resource
import shlex
import statistics
import subprocess
import sys
import threading
import time
from dataclasses import asdict, dataclass

import torch

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("WANDB_MODE", "offline")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L40S": 362e12}
"""Dense bf16 tensor-core peak FLOP/s by device name fragment, from NVIDIA's datasheets, which list the figure
"with sparsity" (H100 SXM and H200: 1,979 TFLOPS BF16 Tensor Core, footnoted "with sparsity"; the H200
datasheet's SXM column), halved for dense math: 989 TFLOP/s; A100: 312 dense; L40S: 362.05 dense."""
QUICK_BUDGET_MIN = 9.0
"""`--quick`'s default budget: the whole command, model loads included, stays under 10 minutes."""
CPU_THREADS = 1
"""Default torch threads per contender on CPU. Two threads wait on each other whenever another job holds a core:
`--quick --threads 2` on the shared 2-core machine (load average 2.3-2.8, 2026-11-30) timed localdpo's cached
path at 33 s a step and its live path, which does more work, at 4.6 s (11x TRL); with one thread, under a
load average of 2.9-4.0, the cached path's ratio to TRL stayed within 2.82-3.11x over three rounds.
`--threads 2` on an idle machine."""
HANG_FACTOR = 4.0
"""A visit running past this many times its planned estimate (plus a minute) is killed as hung: `timeout`."""


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
    fsdp: bool = False
    """Train an FSDP2-sharded copy of the policy in a one-process group, as `train.distributed=fsdp` does
    (`localdpo.trainer.fsdp`): on one device, what sharding's hooks and gathers cost."""


def _localdpo(reference: str, pack: bool, span: bool) -> Contender:
    name = f"localdpo {reference}{' +pack' if pack else ''}{' +span' if span else ''}"
    return Contender(name, "localdpo", reference, packing=pack, span_head=span)


CONTENDERS = [
    Contender("TRL precompute_ref, GC off", "trl", "cache"),
    *[_localdpo("cache", pack, span) for pack, span in ((True, True), (True, False), (False, True), (False, False))],
    Contender("TRL GC off", "trl", "live"),
    *[_localdpo("live", pack, span) for pack, span in ((True, True), (True, False), (False, True), (False, False))],
    Contender("TRL precompute_ref (GC on)", "trl", "cache", gradient_checkpointing=True),
    Contender("TRL default (GC on, live ref)", "trl", "live", gradient_checkpointing=True),
]  # fmt: skip
"""Run and table order: TRL's fastest configuration (cached reference, gradient checkpointing off) first, the
localdpo contenders with a cached reference after it (the full fast path first), then TRL and localdpo with a
live reference, then TRL's two gradient-checkpointing configurations (slower, leaner)."""
HEADLINE = ("TRL precompute_ref, GC off", "localdpo cache +pack +span", "localdpo live +pack +span")
"""`--quick`'s contenders: the README's claim is the two localdpo fast paths against TRL's fastest."""
FLEX_CONTENDER = Contender(
    "localdpo cache +pack +span (flex)",
    "localdpo",
    "cache",
    packing=True,
    span_head=True,
    attention="flex_attention",
)

FSDP_CONTENDER = Contender(
    "localdpo cache +pack +span (FSDP2)",
    "localdpo",
    "cache",
    packing=True,
    span_head=True,
    fsdp=True,
)
"""`--fsdp`: the trainer's FSDP2 path on one device (the cost of sharding where nothing is saved)."""


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
    from localdpo.steers.tokenization import SpanMode, TokenizedSteer

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
    """`(policy, reference, tokenizer)`: the same weights twice (the reference with 1% noise), fp32 on CPU, bf16 on CUDA."""
    from localdpo.models.embedded import embedded_tokenizer

    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    tokenizer = embedded_tokenizer()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    if model_name in ("135m", "tiny"):
        from localdpo.models.loading import DEFAULT_MODEL, TINY_MODEL, load_model

        policy, _ = load_model(
            TINY_MODEL if model_name == "tiny" else DEFAULT_MODEL, dtype=dtype, device=device
        )
    elif model_name == "1.7b":
        from transformers import LlamaConfig, LlamaForCausalLM

        config = LlamaConfig(**SMOLLM2_1_7B, pad_token_id=tokenizer.pad_token_id, attn_implementation="sdpa")
        torch.manual_seed(0)
        with torch.device(device):
            policy = LlamaForCausalLM(config).to(dtype)
    else:
        raise ValueError(
            f"unknown model {model_name!r}: 135m, 1.7b or tiny (a random 2-layer model, for tests)"
        )
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


def sharded_copy(policy, contender: Contender, tokenizer, device: str):
    """A `PolicyForward` over a copy of `policy`, sharded by FSDP2 on a one-process group (the trainer's
    `train.distributed=fsdp` path on one device); the weights keep their dtype (no mixed-precision casts)."""
    import copy

    from localdpo.trainer.distributed import init_distributed
    from localdpo.trainer.fsdp import device_mesh, shard_forward
    from localdpo.trainer.modeling import PolicyForward

    init_distributed(device, always=True)
    forward = PolicyForward(
        copy.deepcopy(policy), packing=contender.packing, span_head=contender.span_head,
        pad_token_id=tokenizer.pad_token_id,
    )  # fmt: skip
    shard_forward(forward, forward.model, mesh=device_mesh(torch.device(device), 1), autocast_dtype=None)
    return forward


def _localdpo_step_fn(contender: Contender, policy, reference, tokenizer, steers, device: str):
    """A closure running one localdpo step, and the reference precompute seconds; `policy` may be a sharded
    `PolicyForward` (`sharded_copy`), which runs the same fast path through its own forward."""
    from localdpo.forward import FastPaths, pair_logps
    from localdpo.losses import localized_dpo_loss
    from localdpo.steers.batches import CHOSEN_LOSS_MASK, REJECTED_LOSS_MASK, collate_pairs

    pad = tokenizer.pad_token_id
    reference_paths = FastPaths.for_model(reference, packing=contender.packing, span_head=contender.span_head)
    policy_paths = (
        None if contender.fsdp else FastPaths.for_model(policy, packing=contender.packing, span_head=contender.span_head)
    )
    precompute_s = 0.0
    cached = None
    if contender.reference == "cache":
        start = time.perf_counter()
        with torch.no_grad():
            cached = pair_logps(reference, collate_pairs(steers, pad_token_id=pad), reference_paths, pad_token_id=pad)
        _sync(device)
        precompute_s = time.perf_counter() - start

    def step():
        batch = collate_pairs(steers, pad_token_id=tokenizer.pad_token_id)
        if cached is None:
            with torch.no_grad():
                ref_chosen, ref_rejected = pair_logps(reference, batch, reference_paths, pad_token_id=pad)
        else:
            ref_chosen, ref_rejected = cached
        if contender.fsdp:
            chosen, rejected = policy(batch)  # (B, Tc), (B, Tr) on the device
        else:
            chosen, rejected = pair_logps(policy, batch, policy_paths, pad_token_id=pad)  # (B, Tc), (B, Tr)
        chosen_mask = batch[CHOSEN_LOSS_MASK].to(chosen.device).bool()  # (B, Tc)
        rejected_mask = batch[REJECTED_LOSS_MASK].to(chosen.device).bool()  # (B, Tr)
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
    on_step=None,
) -> dict:
    """Step times, precompute time, first loss and peak memory of `steps` timed steps after `warmup`.

    `on_step(seconds)` is called after every step, the warm-up steps included (the CPU worker streams them).
    """
    for model in (policy, reference):
        model.set_attn_implementation(contender.attention)
    if contender.gradient_checkpointing:
        policy.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    else:
        policy.gradient_checkpointing_disable()
    policy.train()
    # the sharded copy (made before the memory baseline) is what an FSDP contender trains
    trained = sharded_copy(policy, contender, tokenizer, device) if contender.fsdp else policy
    optimizer = torch.optim.AdamW(trained.parameters(), lr=0.0)
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
            step, precompute_s = _localdpo_step_fn(contender, trained, reference, tokenizer, steers, device)
        times, losses = [], []
        for i in range(warmup + steps):
            _sync(device)
            start = time.perf_counter()
            losses.append(step().detach())
            optimizer.step()
            optimizer.zero_grad(set_to_none=True)
            _sync(device)
            seconds = time.perf_counter() - start
            if on_step is not None:
                on_step(seconds)
            if i >= warmup:
                times.append(seconds)
        if device == "cuda":
            peak_mib = (torch.cuda.max_memory_allocated() - cuda_before) / 2**20
        else:
            peak_mib = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before) / 1024
        return {
            "step_times": times,
            "precompute_s": precompute_s,
            "peak_mib": peak_mib,
            "loss": float(losses[0]),
            "status": "ok",
        }
    except torch.OutOfMemoryError:
        return {"status": "OOM"}
    finally:
        del optimizer, trained
        policy.zero_grad(set_to_none=True)
        policy.gradient_checkpointing_disable()
        gc.collect()
        if device == "cuda":
            torch.cuda.empty_cache()


def worker(spec: dict) -> dict:
    """Run one contender in this process (one per visit on CPU, so ru_maxrss is its own); prints `STEP s` lines."""
    torch.manual_seed(0)
    if spec.get("threads"):
        torch.set_num_threads(spec["threads"])
    policy, reference, tokenizer = load_models(spec["model"], spec["device"])
    steers = make_steers(spec["batch"], spec["prefix"], VOCAB, seed=spec["prefix"])
    return run_contender(
        Contender(**spec["contender"]), policy, reference, tokenizer, steers, device=spec["device"],
        warmup=spec["warmup"], steps=spec["steps"], tmp=spec["tmp"],
        on_step=lambda seconds: print(f"STEP {seconds:.6f}", flush=True),
    )  # fmt: skip


def in_subprocess(spec: dict, *, timeout: float | None, on_first_timed_step=None) -> dict:
    """One visit: `worker(spec)` in a fresh process, its step lines read as they come.

    `on_first_timed_step(step_s, fixed_s)` is called when the first timed step ends, with its seconds and the
    seconds before it (process start, model loading, reference precompute, warm-up steps); when it returns
    False the visit is stopped: `{"status": "stopped"}`. A visit still running after `timeout` seconds is
    killed as hung: `{"status": "timeout (N s)"}`.
    """
    command = [sys.executable, os.path.abspath(__file__), "--worker", json.dumps(spec)]
    started = time.monotonic()
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    timed_out = threading.Event()

    def kill_hung() -> None:
        timed_out.set()
        process.kill()

    timer = threading.Timer(timeout, kill_hung) if timeout else None
    if timer is not None:
        timer.start()
    result, last_line, stopped, steps_seen = None, "?", False, 0
    try:
        for line in process.stdout:  # stderr is merged: a pipe left unread could fill and stall the worker
            if line.startswith("STEP "):
                steps_seen += 1
                if steps_seen == spec["warmup"] + 1 and on_first_timed_step is not None:
                    step_s = float(line.split()[1])
                    if on_first_timed_step(step_s, time.monotonic() - started - step_s) is False:
                        stopped = True
                        process.kill()
            elif line.startswith("RESULT "):
                result = json.loads(line[len("RESULT ") :])
            elif line.strip():
                last_line = line.strip()
        process.wait()
    finally:
        if timer is not None:
            timer.cancel()
    if stopped:
        return {"status": "stopped"}
    if timed_out.is_set() and result is None:
        return {"status": f"timeout ({timeout:.0f} s)"}
    if process.returncode != 0 or result is None:
        return {"status": f"failed: {last_line[:120]}"}
    return result


@dataclass(frozen=True)
class Plan:
    """How many timed steps each visit runs and how many rounds, with the estimated wall time."""

    steps: int
    rounds: int
    seconds: float


def plan_run(
    step_s: float,
    fixed_s: float,
    visits_per_round: float,
    *,
    step_choices,
    round_choices,
    budget_s: float | None,
) -> Plan | None:
    """The plan with the most timed steps per contender (rounds · steps) whose estimate fits `budget_s`, more
    rounds first on a tie (alternation is what makes the ratios robust to load); None when none fits.

    Estimate = rounds · visits_per_round · (fixed_s + steps · step_s), from the first visit, TRL's fastest
    configuration: `fixed_s` its seconds before its first timed step (start, load, precompute, warm-up) and
    `step_s` that step. localdpo's contenders step faster, so the estimate errs long for `--quick`.
    `visits_per_round` counts a visit at another shape by its tokens relative to the measured one. With no
    budget: the largest choices.
    """
    plans = [
        Plan(steps, rounds, rounds * visits_per_round * (fixed_s + steps * step_s))
        for rounds in round_choices
        for steps in step_choices
    ]
    fitting = [plan for plan in plans if budget_s is None or plan.seconds <= budget_s]
    return max(fitting, key=lambda plan: (plan.rounds * plan.steps, plan.rounds), default=None)


def combine_visits(visits: list[dict]) -> dict:
    """One table row's values from a contender's visits (one per round): medians over rounds.

    `step_s` is the median over rounds of each visit's median step; `losses_agree` whether every visit's
    first-step loss is the same to 1e-6 (the weights and steers are).
    """
    failed = next((visit for visit in visits if visit["status"] != "ok"), None)
    if failed is not None:
        return {"status": failed["status"], "rounds": len(visits), "visits": visits}
    losses = [visit["loss"] for visit in visits]
    return {
        "status": "ok",
        "rounds": len(visits),
        "step_s": statistics.median(statistics.median(visit["step_times"]) for visit in visits),
        "round_step_s": [statistics.median(visit["step_times"]) for visit in visits],
        "precompute_s": statistics.median(visit["precompute_s"] for visit in visits),
        "peak_mib": statistics.median(visit["peak_mib"] for visit in visits),
        "loss": losses[0],
        "losses_agree": max(losses) - min(losses) <= 1e-6,
        "visits": visits,
    }


def ratios_to_fastest_trl(row: dict, group: list[dict]) -> list[float]:
    """Per round: the fastest TRL contender's step time in that round / this contender's (pairs/s ratio).

    Shape: one value per round in which this contender and at least one TRL contender have a time.
    """
    if row["status"] != "ok":
        return []
    trl = [r["round_step_s"] for r in group if r["trainer"] == "trl" and r["status"] == "ok"]
    return [
        min(times[i] for times in trl if i < len(times)) / own
        for i, own in enumerate(row["round_step_s"])
        if any(i < len(times) for times in trl)
    ]


def _free(cuda: bool) -> None:
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


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
    parser.add_argument(
        "--quick",
        action="store_true",
        help="the headline on CPU: 135M, prefix 256, batch 2, 3 contenders, < 10 min",
    )
    parser.add_argument("--models", nargs="+", default=None, help="135m and/or 1.7b (default: both on CUDA)")
    parser.add_argument("--prefix-lengths", nargs="+", type=int, default=None)
    parser.add_argument(
        "--batch", type=int, default=None, help="pairs per step (default 8 on CUDA, 2 on CPU)"
    )
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps per visit (default: planned, at most 3)"
    )
    parser.add_argument(
        "--rounds",
        type=int,
        default=None,
        help="rounds on CPU (default: planned, at most 3 with --quick, else 1)",
    )
    parser.add_argument(
        "--budget-min", type=float, default=None,
        help=f"time budget in minutes (default {QUICK_BUDGET_MIN:g} with --quick, 8 on CUDA, none otherwise)",
    )  # fmt: skip
    parser.add_argument(
        "--max-batch-prefix", type=int, default=1024, help="shape of the largest-batch search (CUDA)"
    )
    parser.add_argument("--no-max-batch", action="store_true")
    parser.add_argument("--flex", action="store_true", help="also time packing with FlexAttention (CUDA)")
    parser.add_argument(
        "--fsdp", action="store_true", help="also time the trainer's FSDP2 path on one device (one-process group)"
    )
    parser.add_argument(
        "--peak-tflops", type=float, default=None, help="override the device's peak bf16 TFLOP/s"
    )
    parser.add_argument(
        "--only", nargs="+", default=None, help="run contenders whose name contains one of these"
    )
    parser.add_argument(
        "--out", default=None, help="write the markdown table here (and the raw rows to OUT.json)"
    )
    parser.add_argument(
        "--threads",
        type=int,
        default=CPU_THREADS,
        help="torch CPU threads per contender (CPU; default 1: steadier on a machine other jobs share)",
    )
    parser.add_argument("--worker", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        print("RESULT " + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0

    started = time.monotonic()
    cuda = args.device == "cuda"
    if cuda and not torch.cuda.is_available():
        parser.error("--device cuda but torch.cuda.is_available() is False")
    models = args.models or (["135m", "1.7b"] if cuda and not args.quick else ["135m"])
    prefixes = args.prefix_lengths or (
        [256] if args.quick else [256, 1024] if not cuda else [256, 1024, 2048]
    )
    batch = args.batch or (8 if cuda else 2)
    budget_min = args.budget_min or (QUICK_BUDGET_MIN if args.quick else 8.0 if cuda else None)
    tmp = os.path.join(os.environ.get("TMPDIR", "/tmp"), "localdpo-bench")
    contenders = CONTENDERS + ([FLEX_CONTENDER] if cuda and args.flex else []) + ([FSDP_CONTENDER] if args.fsdp else [])
    if args.only:
        contenders = [c for c in contenders if any(part in c.name for part in args.only)]
    elif args.quick:
        contenders = [c for c in contenders if c.name in HEADLINE or c.fsdp]
    if not contenders:
        parser.error(f"--only {' '.join(args.only)}: no contender's name contains any of these")
    machine = torch.cuda.get_device_name() if cuda else f"CPU, {os.cpu_count()} cores"
    if not cuda:
        machine += f", {args.threads} torch thread(s) per contender"
    machine += f", torch {torch.__version__}"
    load_start = os.getloadavg()[0]
    print(f"# bench_throughput on {machine} (load average {load_start:.1f}): models {models}, prefixes {prefixes}, "
          f"batch {batch}, {len(contenders)} contenders, budget {f'{budget_min:g} min' if budget_min else 'none'}",
          flush=True)  # fmt: skip

    shapes = [(model, prefix) for model in models for prefix in prefixes]
    if cuda:
        rows, plan = run_on_cuda(args, models, prefixes, contenders, batch, budget_min, tmp), None
    else:
        outcome = run_on_cpu(args, shapes, contenders, batch, budget_min, tmp)
        if outcome is None:
            return 1
        rows, plan = outcome
    wall_min = (time.monotonic() - started) / 60
    run = dict(machine=machine, batch=batch, warmup=args.warmup, steps=plan.steps if plan else args.steps or 3,
               rounds=max((row.get("rounds", 0) for row in rows), default=0), wall_min=wall_min,
               load_start=load_start, load_end=os.getloadavg()[0], budget_min=budget_min,
               date=time.strftime("%Y-%m-%d"),
               command=shlex.join(["python", "experiments/bench_throughput.py", *(sys.argv[1:] if argv is None else argv)]))  # fmt: skip
    table = render(rows, run, flops=peak_flops(args.device, args.peak_tflops), cuda=cuda)
    print(table)
    if args.out:
        atomic_write(args.out, table)
        atomic_write(args.out + ".json", json.dumps(dict(run, rows=rows), indent=1))
    return 0


def atomic_write(path: str, text: str) -> None:
    with open(path + ".tmp", "w") as handle:
        handle.write(text)
    os.replace(path + ".tmp", path)


def _shape_tokens(prefix: int, batch: int) -> int:
    """Tokens of one step at this shape: both unpacked sides of every pair."""
    return sum(
        s.chosen_ids.numel() + s.rejected_ids.numel() for s in make_steers(batch, prefix, VOCAB, seed=prefix)
    )


def _shown(result: dict) -> str:
    if result["status"] != "ok":
        return result["status"]
    step_s = statistics.median(result["step_times"])
    return f"{step_s:.3f} s/step, peak {result['peak_mib']:.0f} MiB, loss {result['loss']:.5f}"


def run_on_cpu(args, shapes, contenders, batch, budget_min, tmp):
    """Every contender at every shape in rounds of subprocess visits, planned from the first visit's first
    timed step; `(rows, plan)`, or None when the run will not fit the budget (said on stdout) or the first
    visit failed."""
    started = time.monotonic()
    budget_s = 60 * budget_min if budget_min else None
    step_choices = (args.steps,) if args.steps else range(1, 4)
    round_choices = (args.rounds,) if args.rounds else range(1, 4) if args.quick else (1,)
    adaptive = budget_s is not None and not args.rounds
    tokens = {shape: _shape_tokens(shape[1], batch) for shape in shapes}
    weight = {shape: count / tokens[shapes[0]] for shape, count in tokens.items()}
    visits_per_round = len(contenders) * sum(weight.values())
    plan, measured = None, {}

    def visit_s(shape) -> float:
        """A visit's estimate at `shape`: the first visit's fixed seconds and timed steps, scaled by tokens."""
        return (measured["fixed_s"] + plan.steps * measured["step_s"]) * weight[shape]

    def on_first_timed_step(step_s: float, fixed_s: float) -> bool:
        nonlocal plan
        measured.update(step_s=step_s, fixed_s=fixed_s)
        left_s = None if budget_s is None else budget_s - (time.monotonic() - started - fixed_s - step_s)
        plan = plan_run(step_s, fixed_s, visits_per_round, step_choices=step_choices, round_choices=round_choices,
                        budget_s=left_s)  # fmt: skip
        basis = f"first timed step {step_s:.1f} s, {fixed_s:.0f} s to start, load, precompute and warm up"
        if plan is None:
            least = plan_run(step_s, fixed_s, visits_per_round, step_choices=(min(step_choices),),
                             round_choices=(min(round_choices),), budget_s=None)  # fmt: skip
            need = math.ceil(least.seconds / 60) + 1
            instead = (f"--budget-min {need}" if args.quick or args.only
                       else f"--quick (the headline contenders), --only NAME..., or --budget-min {need}")  # fmt: skip
            load, cores = os.getloadavg()[0], os.cpu_count() or 1
            if args.threads > 1 and load > cores - 0.5:
                # torch's threads wait on each other when other jobs hold the cores: one thread is often faster
                instead += (
                    f"; the machine is busy (load average {load:.1f} on {cores} cores): try --threads 1 first"
                )
            print(f"bench_throughput: will not fit: {len(contenders)} contenders x {len(shapes)} shape(s) with "
                  f"{min(step_choices)} timed step need about {least.seconds / 60:.0f} min on this machine now "
                  f"({basis}); the budget is {budget_min:g} min. Run instead with {instead}.", flush=True)  # fmt: skip
            return False
        print(f"plan: {plan.rounds} round(s) x {len(contenders)} contenders x {len(shapes)} shape(s), "
              f"{args.warmup} warm-up + {plan.steps} timed step(s) per visit: about {plan.seconds / 60:.1f} min "
              f"({basis}; the estimate errs long)", flush=True)  # fmt: skip
        return True

    rows = []
    for index, shape in enumerate(shapes):
        model, prefix = shape
        visits = {contender.name: [] for contender in contenders}
        round_walls = []
        while True:
            round_start = time.monotonic()
            order = contenders if len(round_walls) % 2 == 0 else contenders[::-1]
            for contender in order:
                probe = plan is None
                spec = dict(model=model, device="cpu", batch=batch, prefix=prefix, contender=asdict(contender),
                            warmup=args.warmup, steps=max(step_choices) if probe else plan.steps, tmp=tmp,
                            threads=args.threads)  # fmt: skip
                if plan is not None:
                    hang_s = HANG_FACTOR * visit_s(shape) + 60
                else:  # the first visit is not cut by the budget: its first timed step gives the plan or the refusal
                    hang_s = max(budget_s, 600.0) if budget_s else None
                result = in_subprocess(
                    spec, timeout=hang_s, on_first_timed_step=on_first_timed_step if probe else None
                )
                if result["status"] == "stopped":
                    return None
                if plan is None:
                    print(f"bench_throughput: the first visit ({contender.name}) did not reach a timed step: "
                          f"{result['status']}", flush=True)  # fmt: skip
                    return None
                if result["status"] == "ok":
                    result["step_times"] = result["step_times"][: plan.steps]
                visits[contender.name].append(result)
                print(f"  {model} prefix {prefix:5d}  round {len(round_walls) + 1}  {contender.name:28s} "
                      f"{_shown(result)}", flush=True)  # fmt: skip
            round_walls.append(time.monotonic() - round_start)
            if len(round_walls) >= max(round_choices):
                break
            if not adaptive:
                if len(round_walls) >= plan.rounds:
                    break
                continue
            later_s = len(contenders) * sum(visit_s(s) for s in shapes[index + 1 :])
            if time.monotonic() - started + max(round_walls) + later_s > budget_s:
                break
        for contender in contenders:
            rows.append(dict(model=model, prefix=prefix, contender=contender.name, trainer=contender.trainer,
                             tokens=tokens[shape], params=None, **combine_visits(visits[contender.name])))  # fmt: skip
    return rows, plan


def run_on_cuda(args, models, prefixes, contenders, batch, budget_min, tmp):
    """Every contender in this process on shared models, then (with the time left) the largest batch each fits."""
    deadline = time.monotonic() + 60 * budget_min
    steps = args.steps or 3
    rows = []
    for model_name in models:  # phase 1: throughput of every contender
        shared = load_models(model_name, "cuda")
        params = sum(p.numel() for p in shared[0].parameters())
        for prefix in prefixes:
            steers = make_steers(batch, prefix, VOCAB, seed=prefix)
            tokens = _shape_tokens(prefix, batch)
            for contender in contenders:
                if time.monotonic() > deadline:
                    result = {"status": "not run (time budget)"}
                else:
                    result = run_contender(contender, *shared, steers, device="cuda", warmup=args.warmup,
                                           steps=steps, tmp=tmp)  # fmt: skip
                rows.append(dict(model=model_name, prefix=prefix, contender=contender.name, trainer=contender.trainer,
                                 tokens=tokens, params=params, **combine_visits([result])))  # fmt: skip
                print(f"  {model_name} prefix {prefix:5d}  {contender.name:34s} {_shown(result)}", flush=True)
        del shared
        _free(True)
    if not args.no_max_batch and args.max_batch_prefix in prefixes:
        for model_name in reversed(models):  # phase 2, with the time left: the larger model first
            shared = load_models(model_name, "cuda")
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
                    f"  {model_name} prefix {args.max_batch_prefix:5d}  {contender.name:34s} largest batch {fit}",
                    flush=True,
                )
            del shared
            _free(True)
    return rows


def render(rows, run: dict, *, flops, cuda) -> str:
    """The markdown table: one row per contender and shape; ratios are medians over rounds (range when > 1)."""
    memory = "peak MiB above weights" + ("" if cuda else " (RSS)")
    header = ["model", "prefix", "contender", "pairs/s", "tokens/s", "step s (median)", "ref precompute s",
              "loss (step 1)", memory, "vs fastest TRL", "peak vs fastest TRL"]  # fmt: skip
    if cuda:
        header += ["MFU", "largest batch"]
    rounds = run["rounds"]
    order = "alternating order" if rounds > 1 else "one visit each"
    lines = [
        f"{run['date']}. Machine: {run['machine']}; load average {run['load_start']:.1f} at start, {run['load_end']:.1f} at end. "
        f"Command: `{run['command']}`, {run['wall_min']:.1f} min wall time. Batch {run['batch']} pairs; "
        f"{rounds} round(s) ({order}) of {run['warmup']} warm-up + {run['steps']} timed step(s) per contender; "
        "step time: median over rounds of each round's median; `vs fastest TRL`: median over rounds of the "
        "fastest TRL contender's step time in that round over this contender's (range over rounds). Tokens = "
        "both unpacked sides (prompt+prefix+tail, twice), the same for every contender.",
        "",
        "| " + " | ".join(header) + " |",
        "|" + "---|" * len(header),
    ]  # fmt: skip
    for row in rows:
        group = [r for r in rows if r["model"] == row["model"] and r["prefix"] == row["prefix"]]
        trl_ok = [r for r in group if r["trainer"] == "trl" and r["status"] == "ok"]
        fastest_trl = min(trl_ok, key=lambda r: r["step_s"], default=None)
        if row["status"] != "ok":
            cells = [row["model"], str(row["prefix"]), row["contender"], row["status"]] + [""] * (
                len(header) - 4
            )
            if cuda:
                cells[-1] = str(row.get("max_batch", ""))
            lines.append("| " + " | ".join(cells) + " |")
            continue
        pairs_s = run["batch"] / row["step_s"]
        ratios = ratios_to_fastest_trl(row, group)
        ratio = f"{statistics.median(ratios):.2f}x" if ratios else "n/a"
        if len(ratios) > 1:
            ratio += f" ({min(ratios):.2f}-{max(ratios):.2f})"
        loss = f"{row['loss']:.5f}" + ("" if row["losses_agree"] else " (differs across rounds)")
        cells = [
            row["model"], str(row["prefix"]), row["contender"], f"{pairs_s:.3g}", f"{row['tokens'] / row['step_s']:.3g}",
            f"{row['step_s']:.3f}", f"{row['precompute_s']:.2f}" if row["precompute_s"] else "-", loss,
            f"{row['peak_mib']:.0f}", ratio,
            f"{row['peak_mib'] / fastest_trl['peak_mib']:.2f}x" if fastest_trl and fastest_trl["peak_mib"] > 0 else "n/a",
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
