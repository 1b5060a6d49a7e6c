"""`localdpo compare` answers a config mistake with one line naming the key and exit status 2."""

import pytest

from localdpo.cli import main


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["foo=1"], "unknown config key 'foo'; valid keys: name, task, model"),
        (["run.train.stepz=1"], "unknown config key 'run.train.stepz'; valid keys: run.train.max_steps"),
        (["seeds=[0,x]"], "seeds[1]='x': expected int"),
        (["baseline=nope"], "baseline 'nope' is not one of the variants"),
    ],
)
def test_config_mistakes_are_one_line_and_exit_2(capsys, overrides, message):
    assert main(["compare", "--preset", "tiny", *overrides]) == 2
    err = capsys.readouterr().err
    assert err.startswith("localdpo compare: ") and message in err and err.count("\n") == 1


def test_unknown_preset_is_one_line_and_exit_2(capsys):
    assert main(["compare", "--preset", "nope"]) == 2
    assert "unknown preset 'nope'; presets: " in capsys.readouterr().err
