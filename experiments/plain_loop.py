"""Localized DPO in a plain PyTorch loop: `python experiments/plain_loop.py [--steers FILE] [--steps 10]`.

No trainer framework: tokenize the steers, score both sides with `token_logps`, and minimise
`localized_dpo_loss` over the span mask. The reference is a frozen copy of the starting model (none for a
loss that reads no reference: `sft` and `unlikelihood` terms only). Default model: the embedded
SmolLM2-135M-Instruct (CPU is fine: one batch of 4 steers, a few seconds a step). Other losses
(`localdpo.LossType`): `--loss-type dpop --dpop-lambda 50`, or a weighted sum of terms,
`--loss-type sigmoid sft --loss-weights 1 0.5`, or SFT plus unlikelihood of the rejected span,
`--loss-type sft unlikelihood --loss-weights 1 0.3`.
"""

from __future__ import annotations

import argparse
import copy
import sys
from collections.abc import Sequence

import torch

from localdpo import LossType, Steer, load_steers, localized_dpo_loss, token_logps, tokenize_steer
from localdpo.losses import loss_combination, needs_reference
from localdpo.steers.batches import collate_pairs

EXAMPLE_STEERS = [
    Steer(
        prompt="List two fruits:",
        prefix=" 1. Apple\n2.",
        rejected=" Carrot\n3. Pear",
        chosen=" Banana\n3. Pear",
    ),
    Steer(prompt=[{"role": "user", "content": "What is 2+2?"}], prefix="It is", rejected=" 5.", chosen=" 4."),
    Steer(prompt="Capital of France?", prefix="", rejected=" Lyon.", chosen=" Paris.", chosen_complete=True),
    Steer(prompt="Name a colour:", prefix=" Blue", rejected=" and green and red.", chosen="."),
]


def train(
    model,
    tokenizer,
    steers,
    *,
    steps: int = 10,
    lr: float = 1e-5,
    beta: float = 0.1,
    loss_type: str | Sequence[str] = "sigmoid",
    loss_weights: Sequence[float] | None = None,
    dpop_lambda: float = 50.0,
) -> list[float]:
    """Train `model` in place on one batch of `steers` for `steps` AdamW steps; the loss before each step.

    `loss_type`, `loss_weights`, `dpop_lambda`: as `localized_dpo_loss` (one type or a weighted list of terms).
    """
    examples = [tokenize_steer(s, tokenizer, span_mode="divergent") for s in steers]
    batch = collate_pairs(
        examples, pad_token_id=tokenizer.pad_token_id
    )  # {chosen,rejected}_{input_ids,...}: (B, T)

    def side_logps(m, side):  # (B, T): log p(x_t | x_<t), 0 at t = 0
        ids = batch[f"{side}_input_ids"]
        return token_logps(m(input_ids=ids, attention_mask=batch[f"{side}_attention_mask"]).logits, ids)

    ref_chosen = ref_rejected = None  # (B, T) each, when the loss reads a reference
    if needs_reference(loss_type):
        ref_model = copy.deepcopy(model).eval().requires_grad_(False)  # frozen reference = the starting policy
        with torch.no_grad():
            ref_chosen, ref_rejected = side_logps(ref_model, "chosen"), side_logps(ref_model, "rejected")
    optimizer = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        out = localized_dpo_loss(
            side_logps(model, "chosen"), side_logps(model, "rejected"), ref_chosen, ref_rejected,
            batch["chosen_loss_mask"], batch["rejected_loss_mask"], beta=beta, loss_type=loss_type,
            loss_weights=loss_weights, dpop_lambda=dpop_lambda,
        )  # fmt: skip
        optimizer.zero_grad()
        out.loss.backward()
        optimizer.step()
        losses.append(out.loss.item())
    return losses


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", default="smollm2-135m-instruct", help="HF id, local dir, or the embedded name"
    )
    parser.add_argument("--steers", help="steer JSONL file (default: four built-in example steers)")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--lr", type=float, default=1e-5)
    parser.add_argument(
        "--loss-type",
        nargs="+",
        default=["sigmoid"],
        metavar="TYPE",
        help=f"one loss or several terms summed with --loss-weights: {', '.join(t.value for t in LossType)}",
    )
    parser.add_argument(
        "--loss-weights", nargs="+", type=float, metavar="W", help="one per --loss-type (default 1)"
    )
    parser.add_argument("--dpop-lambda", type=float, default=50.0, help="λ of DPO-Positive (dpop)")
    args = parser.parse_args(argv)
    try:
        loss_combination(args.loss_type, args.loss_weights)
    except ValueError as error:
        print(f"plain_loop.py: {error}", file=sys.stderr)
        return 2
    from localdpo.models.loading import load_model

    model, tokenizer = load_model(args.model)
    steers = load_steers(args.steers) if args.steers else EXAMPLE_STEERS
    losses = train(
        model, tokenizer, steers, steps=args.steps, lr=args.lr, loss_type=args.loss_type,
        loss_weights=args.loss_weights, dpop_lambda=args.dpop_lambda,
    )  # fmt: skip
    for step, loss in enumerate(losses):
        print(f"step {step:3d}  loss {loss:.4f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
