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


def execute(name: str, cwd: Path, env: dict[str, str]):
    """The notebook `name` executed in `cwd` with `env` set; returns it with its outputs."""
    notebook = nbformat.read(NOTEBOOKS / name, as_version=4)
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    try:
        NotebookClient(
            notebook, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(cwd)}}
        ).execute()
        return notebook
    finally:
        for key, value in old.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def outputs(notebook, kind: str) -> list[str]:
    """Every output of `kind` (`text/markdown`, `image/png`, `stream`), cell by cell, in order."""
    found = []
    for cell in notebook.cells:
        for output in cell.get("outputs", []):
            if kind == "stream" and output.output_type == "stream":
                found.append(output.text)
            elif kind in output.get("data", {}):
                found.append(output.data[kind])
    return found


def rows(table: str) -> list[str]:
    """The first cell of each body row of the first Markdown table in `table`."""
    lines = table.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("|"))
    end = next((i for i in range(start, len(lines)) if not lines[i].startswith("|")), len(lines))
    return [line.split("|")[1].strip() for line in lines[start + 2 : end]]


@pytest.mark.slow
def test_notebooks_run_on_the_tiny_preset(tmp_path):
    ablations = tmp_path / "ablations"
    notebook = execute(
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
    tables = outputs(notebook, "text/markdown")
    losses = ["sigmoid", "ipo", "hinge", "robust(0.1)", "apo_zero", "apo_down", "dpop", "cal_dpo", "sigmoid+sft"]
    expected = [
        ["beta=0.05", "beta=0.1", "beta=0.5"],
        ["divergent", "to_end", "completion"],
        losses,
        *[[f"sft ({n} steers)", f"ldpo ({n} steers)"] for n in _steer_counts(ablations)],
        ["sft full", "ldpo full", "sft lora", "ldpo lora"],
    ]
    assert len(tables) == len(expected)
    for table, labels in zip(tables, expected):
        assert [row for row in rows(table) if row != "base"][: len(labels)] == labels, table
    assert outputs(notebook, "stream")[0].startswith("preset tiny: 1 seeds, steers in ")

    results = execute("results.ipynb", tmp_path, {"LOCALDPO_RESULTS": str(ablations / "beta")})
    summary, agreement = outputs(results, "text/markdown")
    assert [row for row in rows(summary) if row != "base"][:3] == ["beta=0.05", "beta=0.1", "beta=0.5"]
    assert set(rows(agreement)) == {"beta=0.05", "beta=0.1", "beta=0.5"}
    assert len(outputs(results, "image/png")) >= 2  # the two saved plots (and the curves figure)
    assert any(text.startswith("3 runs read from W&B offline files") for text in outputs(results, "stream"))


def _steer_counts(ablations: Path) -> list[int]:
    return sorted(int(p.name.removeprefix("steers_")) for p in ablations.glob("steers_*") if p.is_dir())
