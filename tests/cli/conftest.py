import pytest

from localdpo.cli import main


@pytest.fixture
def cli(capsys):
    """`cli(*argv)` -> (exit status, stdout, stderr lines) of `localdpo ARGV` run in this process."""

    def run(*argv: str):
        status = main([str(a) for a in argv])
        captured = capsys.readouterr()
        return status, captured.out, captured.err.strip("\n").splitlines()

    return run


@pytest.fixture
def one_line_error(cli):
    """`one_line_error(command, *argv)` -> the single stderr line of a usage error (status 2 asserted)."""

    def run(*argv: str) -> str:
        status, _, err = cli(*argv)
        assert status == 2, err
        assert len(err) == 1, err
        assert err[0].startswith(f"localdpo {argv[0]}: "), err
        return err[0]

    return run
