import json


def test_show_piped_uses_brackets_and_writes_html(cli, tmp_path):
    path = tmp_path / "s.jsonl"
    row = {
        "prompt": "Give four examples",
        "prefix": "1. High-quality example 1\n2. ",
        "rejected": "Low-quality example 2",
        "chosen": "High-quality example 2",
    }
    path.write_text(json.dumps(row) + "\n" + json.dumps(dict(row, chosen=3)) + "\n", encoding="utf-8")
    page = tmp_path / "page.html"
    status, out, _ = cli("show", path, "--model", "tiny", "--html", page)
    assert status == 0
    assert "2.[+ High+]-quality example 2" in out and "2.[- Low-]-quality example 2" in out
    assert f"skipped: {path}:2: field 'chosen': expected a string, got int" in out
    assert out.rstrip().endswith(f"wrote {page}")
    assert '<mark class="chosen"> High</mark>' in page.read_text()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary file left


def test_bad_input_is_one_line(one_line_error, tmp_path):
    assert (
        one_line_error("show", tmp_path / "nope.jsonl")
        == f"localdpo show: steer file not found: {tmp_path / 'nope.jsonl'}"
    )
    path = tmp_path / "s.jsonl"
    path.write_text("\n")
    assert one_line_error("show", path, "--max-length", "0") == "localdpo show: --max-length 0: must be >= 1"
    line = one_line_error("show", path, "--model", "someone/typo")
    assert line.startswith(
        "localdpo show: model 'someone/typo' is neither a local directory nor a cached hub model"
    )
    line = one_line_error("show", path, "--html", tmp_path / "no" / "dir.html")
    assert (
        line
        == f"localdpo show: --html {tmp_path / 'no' / 'dir.html'}: directory {tmp_path / 'no'} does not exist"
    )
