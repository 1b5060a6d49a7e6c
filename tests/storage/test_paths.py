from pathlib import Path

from localdpo.storage.paths import CACHE_ENV, cache_root


def test_an_explicit_directory_wins_over_the_environment(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    assert cache_root(tmp_path / "given") == tmp_path / "given"


def test_the_environment_variable_then_xdg_then_home(monkeypatch, tmp_path):
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "env"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_root() == tmp_path / "env"
    monkeypatch.setenv(CACHE_ENV, "")  # set but empty: not a directory
    assert cache_root() == tmp_path / "xdg" / "localdpo"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_root() == tmp_path / "home" / ".cache" / "localdpo"


def test_a_tilde_is_expanded(monkeypatch, tmp_path):
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cache_root("~/c") == tmp_path / "c"
    monkeypatch.setenv(CACHE_ENV, "~/d")
    assert cache_root() == Path(tmp_path) / "d"
