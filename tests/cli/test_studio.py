import pytest

from localdpo.cli import main


def test_a_bad_steer_file_is_one_line_and_exit_2(tmp_path, capsys):
    path = tmp_path / "steers.jsonl"
    path.write_text('{"prompt": "p", "prefix": "", "rejected": "x", "chosen": "x"}\n')
    assert main(["studio", "--model", "tiny", "--steers", str(path)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("localdpo studio: ")
    assert "steers.jsonl:1: field 'chosen': is identical to rejected" in err


@pytest.mark.parametrize(
    ("argv", "message"),
    [(["--port", "70000"], "not a port number"), (["--token-limit", "0"], "--token-limit must be >= 1")],
)
def test_bad_arguments_exit_2(argv, message, capsys):
    assert main(["studio", "--model", "tiny", *argv]) == 2
    assert message in capsys.readouterr().err


def test_a_task_that_does_not_load_is_one_line_before_the_model(capsys):
    assert main(["studio", "--model", "tiny", "--task", "nowhere_at_all:Task"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("localdpo studio: task 'nowhere_at_all:Task': no module 'nowhere_at_all'")
    assert err.count("\n") == 1
