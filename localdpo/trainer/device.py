"""Where and in which precision a run computes, and how much memory it peaked at."""

from __future__ import annotations

import torch

from localdpo.trainer.config import ConfigError, Precision


def resolve_device(name: str) -> torch.device:
    """`train.device` as a device: `auto` is CUDA when available, else CPU; asking for absent CUDA is an error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name}: CUDA is not available on this machine")
    return device


def autocast_dtype(precision: Precision | str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of `train.precision` on `device` (None: fp32): `auto` is bf16 on CUDA only."""
    try:
        precision = Precision(precision)
    except ValueError:
        raise ConfigError(
            f"train.precision={precision!r} is not one of {[p.value for p in Precision]}"
        ) from None
    if precision is Precision.BF16:
        return torch.bfloat16
    if precision is Precision.FP32:
        return None
    if precision is Precision.AUTO:
        return torch.bfloat16 if device.type == "cuda" else None
    raise ConfigError(f"train.precision={precision.value!r} has no autocast dtype")


def peak_memory_gb(device: torch.device) -> float:
    """Peak memory so far: allocated CUDA memory on a GPU, else the process's peak resident set."""
    if device.type == "cuda":
        return torch.cuda.max_memory_allocated(device) / 2**30
    import resource
    import sys

    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux, bytes on macOS
    return peak / (2**30 if sys.platform == "darwin" else 2**20)
