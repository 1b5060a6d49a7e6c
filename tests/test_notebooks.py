"""The notebooks execute top to bottom on the tiny preset (so they never rot) and are stored without outputs."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize("name", ["ablations.ipynb", "results.ipynb"])
def test_notebook_is_stored_without_outputs(name):
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    for cell in notebook.cells:
        if cell.cell_type == "code":
            assert cell.outputs == [] and cell.execution_count is None, (
                f"{name}: strip outputs before committing"
            )


def execute(name: str, cwd: Path, env: dict[str, str]) -> None:
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
        ).execute()
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def test_notebooks_run_on_the_tiny_preset(tmp_path):
    ablations = tmp_path / "ablations"
    execute(
        "ablations.ipynb",
        tmp_path,
        {
            "LOCALDPO_NOTEBOOK_PRESET": "tiny",
            "LOCALDPO_NOTEBOOK_OUT": str(ablations),
            "LOCALDPO_NOTEBOOK_OVERRIDES": f"seeds=[0] run.train.max_steps=1 run.cache_dir={tmp_path / 'cache'}",
        },
    )
    for section in ("beta", "span_mode", "loss_type", "lora"):
        assert (ablations / section / "results.md").is_file(), section
    assert len(list(ablations.glob("steers_*/results.md"))) == 3
    execute("results.ipynb", tmp_path, {"LOCALDPO_RESULTS": str(ablations / "beta")})
