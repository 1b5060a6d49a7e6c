"""`localdpo tasks`: the registered task names, one a line."""

from localdpo.tasks import TASKS


def test_lists_every_task(cli):
    status, out, _ = cli("tasks")
    assert status == 0
    assert out.split() == ["addition", "running_sum", "multiples", "sort_words"]


def test_unknown_option_is_a_usage_error(cli):
    import pytest

    with pytest.raises(SystemExit) as caught:  # argparse's own usage error
        cli("tasks", "--nope")
    assert caught.value.code == 2


def test_tasks_cli_lists_names(capsys):
    from localdpo.cli import main

    assert main(["tasks"]) == 0
    assert capsys.readouterr().out.split() == list(TASKS)
