"""AdamW and the learning-rate schedule: linear warmup, then cosine decay."""

import math

import pytest
import torch

from localdpo.trainer.config import OptimConfig
from localdpo.trainer.optim import build_optimizer, lr_factor


def test_warmup_then_cosine_decay():
    """warmup 2 of 10 steps: 0.5, 1.0, then cos decay over 8 steps; half-way (step 6) 0.5 · (1 + cos π/2) = 0.5."""
    assert [lr_factor(s, warmup_steps=2, max_steps=10, min_lr_ratio=0.0) for s in (0, 1)] == [0.5, 1.0]
    assert lr_factor(2, warmup_steps=2, max_steps=10, min_lr_ratio=0.0) == 1.0
    assert lr_factor(6, warmup_steps=2, max_steps=10, min_lr_ratio=0.0) == pytest.approx(0.5)
    assert lr_factor(10, warmup_steps=2, max_steps=10, min_lr_ratio=0.1) == pytest.approx(0.1)
    assert lr_factor(50, warmup_steps=0, max_steps=10, min_lr_ratio=0.1) == pytest.approx(0.1)  # stays at the floor


def test_optimizer_takes_the_config_and_its_scheduler_follows_lr_factor():
    weight = torch.nn.Parameter(torch.ones(3))
    config = OptimConfig(lr=0.1, weight_decay=0.01, adam_beta1=0.8, adam_beta2=0.9, adam_eps=1e-6, warmup_steps=1)
    optimizer, scheduler = build_optimizer([weight], config, max_steps=3, device=torch.device("cpu"))
    group = optimizer.param_groups[0]
    assert (group["betas"], group["eps"], group["weight_decay"]) == ((0.8, 0.9), 1e-6, 0.01)
    rates = []
    for _ in range(3):
        rates.append(scheduler.get_last_lr()[0])
        weight.grad = torch.ones(3)
        optimizer.step()
        scheduler.step()
    # step 0: warmup 1/1; steps 1, 2: cosine over the 2 remaining steps: 1, 0.5 · (1 + cos π/2) = 0.5
    assert rates == pytest.approx([0.1, 0.1, 0.1 * 0.5 * (1 + math.cos(math.pi / 2))])
