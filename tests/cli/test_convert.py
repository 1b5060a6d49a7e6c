import json

from localdpo.steers.steer import load_steers


def test_convert_writes_and_summarizes(cli, tmp_path):
    source = tmp_path / "trl.jsonl"
    source.write_text(json.dumps({"prompt": "2 + 2?", "chosen": "It is 4.", "rejected": "It is 5."}) + "\n")
    status, out, _ = cli("convert", source, tmp_path / "steers.jsonl")
    assert status == 0
    assert out == f"wrote 1 steers (1 trl) to {tmp_path / 'steers.jsonl'}; skipped 0 bad rows\n"
    assert load_steers(tmp_path / "steers.jsonl")[0].prefix == "It is "


def test_bad_rows_are_listed_then_one_error_line(cli, tmp_path):
    source = tmp_path / "mixed.jsonl"
    good = json.dumps({"prompt": "p", "chosen": "a", "rejected": "b"})
    source.write_text(f"{good}\n{{oops\n" + json.dumps({"prompt": "p", "chosen": 1, "rejected": "b"}) + "\n")
    status, _, err = cli("convert", source, tmp_path / "steers.jsonl")
    assert status == 2
    assert err == [
        f"  bad row: {source}:2: invalid JSON (Expecting property name enclosed in double quotes at column 2)",
        f"  bad row: {source}:3: field 'chosen': expected a string or one assistant message, got int",
        f"localdpo convert: {source}: 2 bad rows (listed above); fix them, or pass --skip-invalid to write the other 1",
    ]
    assert not (tmp_path / "steers.jsonl").exists()
    status, out, _ = cli("convert", source, tmp_path / "steers.jsonl", "--skip-invalid")
    assert status == 0 and "wrote 1 steers" in out and "skipped 2 bad rows" in out


def test_bad_input_is_one_line(one_line_error, tmp_path):
    assert one_line_error("convert", tmp_path / "nope.jsonl", tmp_path / "o.jsonl") == (
        f"localdpo convert: source file not found: {tmp_path / 'nope.jsonl'}"
    )
    line = one_line_error("convert", tmp_path / "nope.jsonl", tmp_path / "o.jsonl", "--map", "prompt")
    assert line == "localdpo convert: --map 'prompt': expected FIELD=COLUMN, e.g. prompt=question"
    line = one_line_error("convert", "someone/no-such-dataset", tmp_path / "o.jsonl")
    assert line.startswith("localdpo convert: someone/no-such-dataset: `datasets` cannot load it (")
