"""The comparison's plots: what is drawn (read back from the figure) and the PNG written from it."""

import struct

import pytest

from localdpo.compare.plots import (
    accuracy_over_steps,
    accuracy_vs_drift,
    draw_accuracy_over_steps,
    draw_accuracy_vs_drift,
)
from localdpo.compare.report import summarize

from .conftest import records


def _png_size(path):
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    return struct.unpack(">II", data[16:24])  # IHDR width, height


def test_accuracy_over_steps_draws_one_mean_line_per_method(tmp_path):
    fig = draw_accuracy_over_steps(records())
    (ax,) = fig.axes
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["sft", "ldpo"]  # `base` has no history
    assert lines["sft"].get_xdata().tolist() == [0, 10]
    assert lines["sft"].get_ydata() == pytest.approx([0.0, 30.0])  # percent, mean over 3 seeds
    assert lines["ldpo"].get_ydata() == pytest.approx([0.0, 100.0])
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["sft", "ldpo"]
    assert len(ax.collections) == 2  # one min..max band per method
    assert ax.get_ylabel() == "task accuracy (%)"
    # the file is that figure: 6.4 x 4.0 inches at 120 dpi
    assert _png_size(accuracy_over_steps(records(), tmp_path / "a.png")) == (768, 480)


def test_accuracy_vs_drift_draws_each_method_at_its_means(tmp_path):
    rows = summarize(records(), n_boot=200)
    by = {(r.method, r.metric): r.value for r in rows}
    (ax,) = draw_accuracy_vs_drift(rows).axes
    points = {c.get_label(): c.lines[0].get_xydata().tolist() for c in ax.containers}
    assert list(points) == ["base", "sft", "ldpo"]
    for method, [[drift, accuracy]] in points.items():
        assert drift == pytest.approx(by[(method, "drift_kl")].mean)
        assert accuracy == pytest.approx(by[(method, "task_accuracy")].mean * 100)
    assert points["ldpo"][0][1] == pytest.approx(100.0) and points["base"][0] == pytest.approx([0.0, 0.0])
    assert _png_size(accuracy_vs_drift(rows, tmp_path / "b.png")) == (768, 480)
