"""AdamW, its learning-rate schedule (linear warmup, then cosine decay) and gradient clipping."""

from __future__ import annotations

import math

import torch

from localdpo.trainer.config import OptimConfig


def lr_factor(step: int, *, warmup_steps: int, max_steps: int, min_lr_ratio: float) -> float:
    """Learning-rate multiplier: linear warmup to 1, then cosine decay to `min_lr_ratio` at `max_steps`."""
    if warmup_steps and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, max_steps - warmup_steps)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))


def build_optimizer(
    params: list[torch.Tensor], optim: OptimConfig, *, max_steps: int, device: torch.device
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """`(optimizer, scheduler)`: AdamW over `params` and the `lr_factor` schedule.

    The fused kernel runs on CPU and CUDA for floating-point parameters: one pass over each tensor instead
    of a dozen elementwise ops (135M fp32 parameters on 2 CPU cores: 0.06 s a step against 0.31 s).
    """
    fused = device.type in ("cpu", "cuda") and all(p.is_floating_point() for p in params)
    optimizer = torch.optim.AdamW(
        params,
        lr=optim.lr,
        betas=(optim.adam_beta1, optim.adam_beta2),
        eps=optim.adam_eps,
        weight_decay=optim.weight_decay,
        fused=fused or None,
        foreach=None if fused else device.type == "cuda",
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer,
        lambda step: lr_factor(
            step, warmup_steps=optim.warmup_steps, max_steps=max_steps, min_lr_ratio=optim.min_lr_ratio
        ),
    )
    return optimizer, scheduler


def clip_gradients(params: list[torch.Tensor], max_norm: float) -> float:
    """The global gradient norm of `params` as a float (for logging), gradients scaled in place to `max_norm`
    when above it (`torch.nn.utils.clip_grad_norm_`). With FSDP's sharded parameters (DTensors) the norm is
    over every shard of every process: a DTensor, made whole here."""
    norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
    if hasattr(norm, "full_tensor"):
        norm = norm.full_tensor()
    return float(norm)
