def test_unknown_task_is_one_line(one_line_error, tmp_path):
    line = one_line_error("make-steers", "--task", "nope", "--out", tmp_path / "s.jsonl", "--model", "tiny")
    assert line == (
        "localdpo make-steers: unknown task 'nope'; known tasks: addition, running_sum, multiples, sort_words (or all, "
        "or module:Class for a task of your own: docs/tasks.md)"
    )
    assert not (tmp_path / "s.jsonl").exists()


def test_unknown_model_is_one_line(one_line_error, tmp_path):
    line = one_line_error(
        "make-steers", "--task", "addition", "--out", tmp_path / "s.jsonl", "--model", "someone/typo"
    )
    assert "model 'someone/typo' is neither a local directory nor a cached hub model" in line


def test_bad_device_is_one_line(one_line_error, tmp_path):
    line = one_line_error(
        "make-steers", "--task", "addition", "--out", tmp_path / "s.jsonl", "--device", "nonsense"
    )
    assert line.startswith("localdpo make-steers: --device nonsense: ")
