import subprocess
import sys

import pytest

from localdpo.cli import COMMANDS, UsageError, build_parser, main


def test_every_command_is_registered():
    parser = build_parser()
    names = set(parser._subparsers._group_actions[0].choices)
    assert (
        names
        == set(COMMANDS)
        >= {"tasks", "make-steers", "eval", "cache", "train", "compare", "show", "convert"}
    )


def test_usage_error_is_one_line_and_status_2(one_line_error):
    assert (
        one_line_error("show", "no-such-file.jsonl")
        == "localdpo show: steer file not found: no-such-file.jsonl"
    )


def test_debug_flag_and_env_show_the_traceback(monkeypatch):
    for argv in (["--debug", "show", "nope.jsonl"], ["show", "nope.jsonl", "--debug"]):
        with pytest.raises(UsageError, match="steer file not found"):
            main(argv)
    monkeypatch.setenv("LOCALDPO_DEBUG", "1")
    with pytest.raises(UsageError):
        main(["show", "nope.jsonl"])


def test_a_bug_is_not_hidden(monkeypatch):
    """Only input errors become one line: anything else keeps its traceback."""
    import localdpo.cli.tasks as tasks_cli

    def broken(args):
        raise ZeroDivisionError("a bug")

    monkeypatch.setattr(tasks_cli, "run", broken)
    with pytest.raises(ZeroDivisionError):
        main(["tasks"])


def test_subprocess_prints_no_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "localdpo", "compare", "--preset", "nope"], capture_output=True, text=True
    )
    assert result.returncode == 2
    assert result.stderr == "localdpo compare: unknown preset 'nope'; presets: cpu, dose, fair-cpu, gpu, rounds-cpu, tiny\n"


def test_ctrl_c_is_one_line_and_status_130(monkeypatch, capsys):
    import localdpo.cli.tasks as tasks_cli

    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(tasks_cli, "run", interrupted)
    assert main(["tasks"]) == 130
    assert capsys.readouterr().err == "\nlocaldpo tasks: interrupted\n"
