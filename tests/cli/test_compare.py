"""`localdpo compare` answers a config mistake with one line naming the key and exit status 2."""

import pytest

from localdpo.cli import main


def test_unknown_preset_is_one_line(one_line_error):
    assert one_line_error("compare", "--preset", "nope") == (
        "localdpo compare: unknown preset 'nope'; presets: cpu, dose, fair-cpu, gpu, rounds-cpu, tiny"
    )


def test_unknown_override_key_is_one_line(one_line_error, tmp_path):
    line = one_line_error("compare", "--preset", "tiny", "--out", tmp_path, "nosuch=1")
    assert "unknown key 'nosuch'" in line or "unknown config key 'nosuch'" in line


def test_missing_config_is_one_line(one_line_error, tmp_path):
    line = one_line_error("compare", "--config", tmp_path / "nope.yaml")
    assert line == f"localdpo compare: comparison config not found: {tmp_path / 'nope.yaml'}"


def test_malformed_config_and_override_are_one_line(one_line_error, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [tiny\n")
    assert one_line_error("compare", "--config", bad).startswith(f"localdpo compare: {bad}: invalid YAML: ")
    listed = tmp_path / "list.yaml"
    listed.write_text("- a\n")
    assert one_line_error("compare", "--config", listed) == (
        f"localdpo compare: {listed}: expected a mapping of keys, got list"
    )
    assert one_line_error("compare", "--preset", "tiny", "seeds=[0,").endswith(": seeds='[0,': expected list")


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
