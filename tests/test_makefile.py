"""The README's two commands install where a new user's Python lets them (`make -n`: printed, not run)."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")


def planned(target: str, **env: str) -> list[str]:
    clean = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "CONDA_PREFIX", "PYTHON")}
    result = subprocess.run(
        ["make", "--no-print-directory", "-n", "-B", "-C", str(ROOT), target],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return result.stdout.splitlines()


def test_no_environment_active_makes_and_uses_dot_venv():
    """A PEP 668 system Python refuses pip: with no environment active every install goes into .venv."""
    lines = planned("test")
    assert lines[0].startswith("python3 -m venv .venv ||")
    pip_lines = [line for line in lines if " -m pip install" in line]
    assert pip_lines and all(line.startswith(".venv/bin/python ") for line in pip_lines)
    assert ".venv/bin/python -m pytest -q" in lines
    assert any("installing into and running from .venv" in line for line in lines)


@pytest.mark.parametrize("variable", ["VIRTUAL_ENV", "CONDA_PREFIX"])
def test_an_active_environment_is_used_as_it_is(variable):
    lines = planned("compare", **{variable: "/somewhere/env", "PYTHON": "/somewhere/env/bin/python"})
    assert not any(".venv" in line for line in lines)
    assert any(line.startswith("/somewhere/env/bin/python -m pip install -q -e") for line in lines)
    assert lines[-1] == "/somewhere/env/bin/python -m localdpo compare --preset cpu"


def test_dot_venv_is_ignored_by_git():
    assert ".venv/" in (ROOT / ".gitignore").read_text().splitlines()
