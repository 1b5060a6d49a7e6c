"""experiments/plain_loop.py: the plain PyTorch example trains (tiny random Llama, CPU)."""

import importlib.util
import math
from pathlib import Path

import pytest
import torch

from localdpo.models.loading import tiny_model

SCRIPT = Path(__file__).resolve().parents[1] / "experiments" / "plain_loop.py"


@pytest.fixture(scope="module")
def plain_loop():
    spec = importlib.util.spec_from_file_location("plain_loop", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _tiny(tokenizer):
    """The tiny SmolLM2-shaped random model (`localdpo.models.loading.tiny_model`); weights depend only on the seed."""
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


def test_cal_dpo_and_a_combination_train(plain_loop, smol_tokenizer):
    losses = plain_loop.train(
        _tiny(smol_tokenizer),
        smol_tokenizer,
        plain_loop.EXAMPLE_STEERS,
        steps=3,
        lr=1e-3,
        loss_type="cal_dpo",
    )
    # Δc = Δr = 0 before the first step: log 2 + (0 - 1/(2β))² + (0 + 1/(2β))² with β = 0.1
    assert losses[0] == pytest.approx(math.log(2) + 2 * 5.0**2, abs=1e-5)
    assert losses[-1] < losses[0] - 0.1
    first = {
        weight: plain_loop.train(
            _tiny(smol_tokenizer), smol_tokenizer, plain_loop.EXAMPLE_STEERS, steps=1,
            loss_type=["sigmoid", "sft"], loss_weights=[1.0, weight],
        )[0]
        for weight in (0.5, 1.0)
    }  # fmt: skip
    # log 2 + w · NLL of the chosen spans: the weight scales the SFT term only
    assert first[0.5] > math.log(2) + 0.1
    assert first[1.0] - math.log(2) == pytest.approx(2 * (first[0.5] - math.log(2)), abs=1e-5)


def test_script_takes_the_loss_type(plain_loop, smol_tokenizer, tmp_path, capsys):
    _tiny(smol_tokenizer).save_pretrained(tmp_path)
    smol_tokenizer.save_pretrained(tmp_path)
    model = ["--model", str(tmp_path)]
    assert plain_loop.main([*model, "--steps", "1", "--loss-type", "dpop", "--dpop-lambda", "5"]) == 0
    line = capsys.readouterr().out.strip()
    assert line.split()[:2] == ["step", "0"]
    assert float(line.split()[-1]) == pytest.approx(math.log(2), abs=1e-4)  # h = 0 and no penalty at Δc = 0
    assert plain_loop.main([*model, "--loss-type", "sigmoid", "sft", "--loss-weights", "1"]) == 2
    assert capsys.readouterr().err.strip() == (
        "plain_loop.py: loss_weights has 1 values for 2 loss types ['sigmoid', 'sft']"
    )


def test_sft_plus_unlikelihood_trains_without_a_reference(plain_loop, smol_tokenizer, monkeypatch):
    """`--loss-type sft unlikelihood`: no frozen copy is made (no term reads a reference) and the loss falls;
    the unlikelihood weight adds its (small, p ≈ 1/V on a random model) share on top of the SFT term."""
    from types import SimpleNamespace

    no_copy = SimpleNamespace(deepcopy=lambda *a, **k: pytest.fail("a reference copy was made"))
    monkeypatch.setattr(plain_loop, "copy", no_copy)
    runs = {
        weight: plain_loop.train(
            _tiny(smol_tokenizer), smol_tokenizer, plain_loop.EXAMPLE_STEERS, steps=3, lr=1e-3,
            loss_type=["sft", "unlikelihood"], loss_weights=[1.0, weight],
        )
        for weight in (0.3, 3.0)
    }  # fmt: skip
    assert runs[0.3][-1] < runs[0.3][0] - 0.1
    assert 0 < runs[3.0][0] - runs[0.3][0] < 1e-2
