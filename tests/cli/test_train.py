def test_unknown_key_is_one_line(one_line_error):
    line = one_line_error("train", "nosuch=1")
    assert line.startswith("localdpo train: unknown config key 'nosuch'; valid keys: method, run_dir")


def test_bad_value_is_one_line(one_line_error):
    assert one_line_error("train", "optim.lr=-1") == "localdpo train: optim.lr=-1.0: must be > 0"


def test_missing_config_file_is_one_line(one_line_error, tmp_path):
    line = one_line_error("train", "--config", tmp_path / "nope.yaml")
    assert "nope.yaml" in line
