"""`localdpo eval`: task accuracy of a local model directory, written as JSON."""

import json

from localdpo.models import tiny_model


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
