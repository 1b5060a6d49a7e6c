"""experiments/memory_fit.py: the arithmetic behind docs/trainer.md's table of what fits, checked by hand."""

import importlib.util
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "memory_fit.py"


@pytest.fixture(scope="module")
def fit():
    spec = importlib.util.spec_from_file_location("memory_fit", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses resolve their annotations through it
    spec.loader.exec_module(module)
    return module


def test_the_135m_shape_adds_up_to_smollm2_135m(fit):
    """30 layers x (2·576² + 2·576·192 + 3·576·1536 + 2·576 = 3,540,096) + 49,152·576 tied embeddings + 576
    (final norm) = 134,515,008 parameters, SmolLM2-135M's count."""
    shape = fit.SHAPES["0.135B"]
    assert fit.layer_params(shape) == 3_540_096
    assert shape.layers * fit.layer_params(shape) + shape.vocab * shape.hidden + shape.hidden == 134_515_008


def test_lora_and_activation_counts_by_hand(fit):
    """LoRA r=16: 30 x 16 x (9·576 + 2·192 + 3·1536) = 4,884,480 (peft counted 4.9M on the measured run).
    Activations of one token in fp32: 30 x (9·576 + 2·192 + 4·1536 = 11,712) x 4 bytes = 1,405,440."""
    shape = fit.SHAPES["0.135B"]
    assert fit.lora_params(shape) == 4_884_480
    assert fit.activation_bytes(shape, 1, 4) == 1_405_440
    # with checkpointing: the 30 layer inputs (576 each) plus one layer's full set
    assert fit.activation_bytes(shape, 1, 4, checkpointing=True) == (30 * 576 + 11_712) * 4


def test_ddp_holds_16_bytes_per_parameter_plus_buckets_and_fsdp_divides_them(fit):
    shape = fit.SHAPES["1.7B"]
    p = shape.params
    one = fit.predict(shape, lora=False, strategy="ddp", world=1, tokens=0, compute_bytes=2)
    assert one["total"] == pytest.approx(16 * p)  # weights 4 + grads 4 + AdamW 8, no buckets alone
    ddp = fit.predict(shape, lora=False, strategy="ddp", world=8, tokens=0, compute_bytes=2)
    assert ddp["total"] == pytest.approx(20 * p)  # + DDP's gradient buckets
    fsdp = fit.predict(shape, lora=False, strategy="fsdp", world=8, tokens=0, compute_bytes=2)
    gather = (2 * fit.layer_params(shape) + shape.vocab * shape.hidden) * (2 + 4)
    assert fsdp["total"] == pytest.approx(16 * p / 8 + gather)
    live = fit.predict(shape, lora=False, strategy="fsdp", world=8, tokens=0, compute_bytes=2, live_reference=True)
    assert live["total"] - fsdp["total"] == pytest.approx(4 * p / 8)
