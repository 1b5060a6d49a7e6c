def test_lists_every_task(cli):
    status, out, _ = cli("tasks")
    assert status == 0
    assert out.split() == ["addition", "running_sum", "multiples", "sort_words"]


def test_unknown_option_is_a_usage_error(cli):
    import pytest

    with pytest.raises(SystemExit) as caught:  # argparse's own usage error
        cli("tasks", "--nope")
    assert caught.value.code == 2
