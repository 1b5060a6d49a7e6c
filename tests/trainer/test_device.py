"""`localdpo.trainer.device`: which device a run computes on, in which precision, and its peak memory."""

import resource
import sys
from types import SimpleNamespace

import pytest
import torch

from localdpo.trainer.config import ConfigError, Precision
from localdpo.trainer.device import autocast_dtype, peak_memory_gb, resolve_device


def test_auto_is_cuda_only_where_cuda_is(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_device("auto") == torch.device("cuda")
    assert resolve_device("cpu") == torch.device("cpu")


def test_asking_for_absent_cuda_is_a_config_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ConfigError, match="train.device=cuda:1: CUDA is not available"):
        resolve_device("cuda:1")


@pytest.mark.parametrize(
    ("precision", "device", "expected"),
    [
        (Precision.AUTO, "cpu", None),
        (Precision.AUTO, "cuda", torch.bfloat16),
        (Precision.BF16, "cpu", torch.bfloat16),
        (Precision.BF16, "cuda", torch.bfloat16),
        (Precision.FP32, "cpu", None),
        (Precision.FP32, "cuda", None),
        ("bf16", "cpu", torch.bfloat16),  # the config's string values are read the same
    ],
)
def test_autocast_dtype_of_every_precision(precision, device, expected):
    assert autocast_dtype(precision, torch.device(device)) is expected


def test_an_unknown_precision_is_a_config_error_naming_the_choices():
    with pytest.raises(ConfigError, match=r"train.precision='fp16' is not one of \['auto', 'bf16', 'fp32'\]"):
        autocast_dtype("fp16", torch.device("cpu"))


def test_cpu_peak_memory_is_the_peak_resident_set_in_gib(monkeypatch):
    """Linux reports ru_maxrss in KiB: 3 GiB = 3 * 2**20 KiB reads as 3.0."""
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=3 * 2**20))
    assert peak_memory_gb(torch.device("cpu")) == 3.0
    monkeypatch.setattr(sys, "platform", "darwin")  # bytes on macOS
    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=3 * 2**30))
    assert peak_memory_gb(torch.device("cpu")) == 3.0


def test_cuda_peak_memory_is_the_allocated_peak_in_gib(monkeypatch):
    monkeypatch.setattr(torch.cuda, "max_memory_allocated", lambda device: 5 * 2**29)
    assert peak_memory_gb(torch.device("cuda")) == 2.5
