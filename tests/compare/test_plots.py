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


def test_dose_labels_parse_to_term_alpha_and_beta():
    from localdpo.compare.plots import DoseLabel, dose_label

    assert dose_label("sft+0.3ldpo_b0.1") == DoseLabel("sft", 0.3, "ldpo", 0.1)
    assert dose_label("sft+1ldpo_b1") == DoseLabel("sft", 1.0, "ldpo", 1.0)
    assert dose_label("sft+3ul") == DoseLabel("sft", 3.0, "ul", None)
    assert dose_label("sft+3ul").curve == "ul" and dose_label("sft+0.1ldpo_b0.1").curve == "ldpo β=0.1"
    for label in ("sft", "ldpo+sft", "ldpo_dpop", "sft+ul", "base"):
        assert dose_label(label) is None, label


def dose_records():
    """sft (α = 0) at accuracy 0.2; ldpo β=0.1 at 0.3 (α 0.1) and 0.4 (α 1); ul at 0.5 (α 0.3): every seed
    and item the same, so each mean is exact. Recurrence only for sft and ul."""
    accuracy = {"sft": 0.2, "sft+0.1ldpo_b0.1": 0.3, "sft+1ldpo_b0.1": 0.4, "sft+0.3ul": 0.5}
    out = [RunRecord("base", 0, {"task_accuracy": [0.0] * 10})]
    for method, value in accuracy.items():
        for seed in (0, 1):
            items = {"task_accuracy": [value] * 10, "drift_kl": [0.01] * 10}
            if method in ("sft", "sft+0.3ul"):
                items["recurrence"] = [value / 2] * 10
            out.append(RunRecord(method, seed, items))
    return out


def test_dose_response_draws_one_line_per_term_through_the_baseline_at_alpha_zero(tmp_path):
    from localdpo.compare.plots import dose_plots, draw_dose_response

    rows = summarize(dose_records(), baseline="sft", n_boot=50)
    (ax,) = draw_dose_response(rows).axes
    lines = {c.get_label(): c.lines[0] for c in ax.containers}  # one ErrorbarContainer per line
    assert list(lines) == ["ldpo β=0.1", "ul", "sft (α = 0)"]
    ldpo, ul = lines["ldpo β=0.1"], lines["ul"]
    # x: 0 (the shared baseline), then each α nudged ±3% so the bars stay apart; y: percent
    assert ldpo.get_xdata() == pytest.approx([0.0, 0.1 * 0.97, 1.0 * 0.97])
    assert ldpo.get_ydata() == pytest.approx([20.0, 30.0, 40.0])
    assert ul.get_xdata() == pytest.approx([0.0, 0.3 * 1.03]) and ul.get_ydata() == pytest.approx([20.0, 50.0])
    assert lines["sft (α = 0)"].get_xydata().tolist() == [[0.0, pytest.approx(20.0)]]
    assert ax.get_xscale() == "symlog" and ax.get_ylabel() == "held-out task accuracy (%)"
    # another metric by name, drawn where the variants have it
    (ax,) = draw_dose_response(rows, metric="recurrence").axes
    assert {c.get_label(): c.lines[0].get_ydata().tolist() for c in ax.containers} == {
        "ul": pytest.approx([10.0, 25.0]),
        "sft (α = 0)": pytest.approx([10.0]),
    }
    paths = dose_plots(rows, tmp_path)
    assert [p.name for p in paths] == ["dose_task_accuracy.png", "dose_recurrence.png", "dose_drift_kl.png"]
    assert _png_size(paths[0]) == (768, 480)
    # a comparison whose variants do not follow the dose naming gets no dose plot
    assert dose_plots(summarize(records(), n_boot=50), tmp_path / "none") == []
