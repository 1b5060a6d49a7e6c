"""The comparison's plots: what is drawn (read back from the figure) and the PNG written from it, and one
colour and marker per method in every plot."""

import struct

import matplotlib
import pytest

matplotlib.use("Agg")

from matplotlib.colors import to_hex  # noqa: E402

from localdpo.compare.plots import (  # noqa: E402
    METHOD_STYLES,
    accuracy_over_steps,
    accuracy_vs_drift,
    draw_accuracy_over_steps,
    draw_accuracy_vs_drift,
    method_style,
)
from localdpo.compare.report import RunRecord, summarize  # noqa: E402
from localdpo.compare.results import plot_curves  # noqa: E402

from .conftest import records  # noqa: E402


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


def style_records(methods):
    out = []
    for index, method in enumerate(methods):
        for seed in (0, 1):
            out.append(
                RunRecord(
                    method,
                    seed,
                    {
                        "task_accuracy": [float((index + seed + i) % 2) for i in range(6)],
                        "drift_kl": [0.1 * index] * 6,
                    },
                    history=[{"step": 0, "task_accuracy": 0.0}, {"step": 5, "task_accuracy": 0.1 * index}],
                )
            )
    return out


def drawn_styles_of_lines(ax):
    return {line.get_label(): (to_hex(line.get_color()), line.get_marker()) for line in ax.get_lines()}


def test_every_plot_draws_a_method_in_its_one_style():
    """Regression (issue #16): SFT was blue in one plot and orange in the other."""
    methods = ["sft", "ldpo", "ldpo+sft", "dpo", "my_variant"]
    recs = style_records(methods)
    expected = {method: method_style(method) for method in methods}
    assert expected["sft"] == METHOD_STYLES["sft"] and expected["ldpo"] == METHOD_STYLES["ldpo"]

    over_steps = draw_accuracy_over_steps(recs).axes[0]
    assert drawn_styles_of_lines(over_steps) == expected

    drift = draw_accuracy_vs_drift(summarize(recs, baseline="sft", n_boot=50)).axes[0]
    drawn = {}
    for container in drift.containers:  # one ErrorbarContainer per method: (data line, caps, bars)
        data_line = container.lines[0]
        drawn[container.get_label()] = (to_hex(data_line.get_color()), data_line.get_marker())
    assert drawn == expected

    curves = {f"{m}-seed{s}": {"train/loss": [(0, 1.0), (1, 0.5)]} for m in methods for s in (0, 1)}
    panel = plot_curves(curves, ["train/loss"]).axes[0]
    assert drawn_styles_of_lines(panel) == {f"{m}-seed{s}": expected[m] for m in methods for s in (0, 1)}


def test_styles_are_distinct_and_unknown_labels_are_stable():
    assert len(set(METHOD_STYLES.values())) == len(METHOD_STYLES)
    assert len({color for color, _ in METHOD_STYLES.values()}) == len(METHOD_STYLES)
    assert method_style("my_variant") == method_style("my_variant")
    assert method_style("my_variant") not in METHOD_STYLES.values()
