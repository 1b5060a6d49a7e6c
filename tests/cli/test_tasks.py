"""`localdpo tasks`: the registered task names, one a line."""

from localdpo.tasks import TASKS


def test_tasks_cli_lists_names(capsys):
    from localdpo.cli import main

    assert main(["tasks"]) == 0
    assert capsys.readouterr().out.split() == list(TASKS)
