"""experiments/plain_loop.py: the plain PyTorch example trains (tiny random Llama, CPU)."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from localdpo.models import tiny_model

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "plain_loop.py"


@pytest.fixture(scope="module")
def plain_loop():
    spec = importlib.util.spec_from_file_location("plain_loop", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny(tokenizer):
    """The tiny SmolLM2-shaped random model (`localdpo.models.tiny_model`); weights depend only on the seed."""
    return tiny_model(seed=0, tokenizer=tokenizer)[0]


def test_example_loop_lowers_the_loss(plain_loop, smol_tokenizer):
    model = _tiny(smol_tokenizer)
    start = {k: v.clone() for k, v in model.state_dict().items()}
    losses = plain_loop.train(model, smol_tokenizer, plain_loop.EXAMPLE_STEERS, steps=5, lr=1e-3)
    assert len(losses) == 5
    assert losses[0] == pytest.approx(
        math.log(2), abs=1e-6
    )  # policy == reference before the first step: h = 0
    assert losses[-1] < losses[0] - 0.01
    assert all(b < a for a, b in zip(losses, losses[1:]))
    assert any(not torch.equal(start[k], v) for k, v in model.state_dict().items())


def test_script_runs_from_the_command_line(plain_loop, smol_tokenizer, tmp_path, capsys):
    _tiny(smol_tokenizer).save_pretrained(tmp_path)
    smol_tokenizer.save_pretrained(tmp_path)
    assert plain_loop.main(["--model", str(tmp_path), "--steps", "2", "--lr", "1e-3"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert [line.split()[:2] for line in lines] == [["step", "0"], ["step", "1"]]
    assert float(lines[0].split()[-1]) == pytest.approx(math.log(2), abs=1e-4)
