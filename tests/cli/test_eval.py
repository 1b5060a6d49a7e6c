"""`localdpo eval`: task accuracy of a local model directory, written as JSON."""

import json

import pytest

from localdpo.models.loading import tiny_model


def test_unknown_task_is_one_line_before_loading_a_model(one_line_error):
    line = one_line_error("eval", "--task", "nope", "--model", "someone/typo")
    assert line.startswith("localdpo eval: unknown task 'nope'; known tasks: addition")


@pytest.mark.parametrize("model", ["someone/typo", "./missing-model-dir"])
def test_model_not_found_is_one_line(one_line_error, model):
    line = one_line_error("eval", "--task", "addition", "--model", model, "--n", "1")
    assert line.startswith(
        f"localdpo eval: model {model!r} is neither a local directory nor a cached hub model ("
    )
    assert "'tiny'" in line


def test_tiny_model_runs(cli):
    status, out, _ = cli("eval", "--task", "addition", "--model", "tiny", "--n", "2", "--max-new-tokens", "2")
    assert status == 0
    assert out.splitlines()[1].split()[:2] == ["addition", "2"]


def test_bad_device_is_one_line(one_line_error):
    line = one_line_error("eval", "--task", "addition", "--model", "tiny", "--device", "nonsense")
    assert line.startswith("localdpo eval: --device nonsense: ")
    import torch

    if not torch.cuda.is_available():
        line = one_line_error("eval", "--task", "addition", "--model", "tiny", "--device", "cuda")
        assert line == "localdpo eval: --device cuda: CUDA is not available on this machine; use --device cpu"


def test_eval_cli_on_a_local_model_dir_writes_json(tmp_path, smol_tokenizer, capsys):
    from localdpo.cli import main

    model, tokenizer = tiny_model(seed=0, tokenizer=smol_tokenizer)
    model.save_pretrained(tmp_path / "model")
    tokenizer.save_pretrained(tmp_path / "model")
    out = tmp_path / "eval.json"
    argv = [
        "eval",
        "--task",
        "multiples",
        "--model",
        str(tmp_path / "model"),
        "--n",
        "2",
        "--max-new-tokens",
        "4",
    ]
    assert main(argv + ["--out", str(out), "--threads", "1"]) == 0
    report = json.loads(out.read_text())
    assert report["model"] == str(tmp_path / "model") and report["results"]["multiples"]["n"] == 2
    assert "multiples" in capsys.readouterr().out
