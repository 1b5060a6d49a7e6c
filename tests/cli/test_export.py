"""`localdpo export`: what it prints, and its mistakes as one line with exit status 2."""


def test_export_prints_the_files_the_check_and_how_to_run_it(cli, tmp_path, monkeypatch):
    """The read-back itself is `tests/export/test_exporter.py`'s; here a measured one, as `read_back` returns it."""
    import localdpo.export.gguf
    from localdpo.export.gguf import OutType, RoundTrip

    trip = RoundTrip(OutType.Q8_0, "q", 0.0123, 1.25, True, True, [5, 6, 7], [5, 6, 8])
    monkeypatch.setattr(localdpo.export.gguf, "read_back", lambda *args, **kwargs: trip)
    status, out, err = cli("export", "tiny", tmp_path / "Steered Model", "--outtype", "q8_0")
    assert status == 0, err
    lines = out.splitlines()
    assert lines[0] == f"wrote {tmp_path / 'Steered Model'}/ (GGUF q8_0): Modelfile, README.md, model.gguf"
    assert (
        lines[1]
        == "read back: max |logit difference| 0.0123 (accepted up to 0.125), greedy answer (3 tokens) different"
    )
    assert lines[2] == "note: q8_0 rounding changes the greedy answer to the check prompt; f32 keeps it"
    assert lines[3] == (
        f"run it: ollama create steered-model -f {tmp_path / 'Steered Model' / 'Modelfile'}   or   "
        f"llama-cli -m {tmp_path / 'Steered Model' / 'model.gguf'} -cnv"
    )


def test_an_architecture_it_cannot_write_is_one_line(one_line_error, tmp_path, smol_tokenizer, capsys):
    """Found from config.json, before any weight is loaded."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    source = tmp_path / "qwen"
    config = Qwen2Config(
        vocab_size=49152,
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
    )
    Qwen2ForCausalLM(config).save_pretrained(source)
    smol_tokenizer.save_pretrained(source)
    capsys.readouterr()  # save_pretrained's progress bar
    line = one_line_error("export", source, tmp_path / "out")
    assert line == (
        "localdpo export: GGUF export writes Llama-architecture models (model_type 'llama': SmolLM2 and its "
        "family), not model_type 'qwen2'; export --format hf and convert that with llama.cpp's "
        "convert_hf_to_gguf.py"
    )
    assert not (tmp_path / "out").exists()


def test_an_existing_out_and_a_missing_source_are_one_line(one_line_error, tmp_path):
    (tmp_path / "out").mkdir()
    line = one_line_error("export", "tiny", tmp_path / "out")
    assert (
        line
        == f"localdpo export: {tmp_path / 'out'} exists; pass --overwrite to replace it, or choose another path"
    )
    line = one_line_error("export", tmp_path / "nope", tmp_path / "new")
    assert line.startswith(f"localdpo export: model '{tmp_path / 'nope'}' is neither a local directory")
