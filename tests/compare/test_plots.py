import matplotlib

matplotlib.use("Agg")

from matplotlib.colors import to_hex  # noqa: E402

from localdpo.compare.plots import (  # noqa: E402
    METHOD_STYLES,
    draw_accuracy_over_steps,
    draw_accuracy_vs_drift,
    method_style,
)
from localdpo.compare.report import RunRecord, summarize  # noqa: E402
from localdpo.compare.results import plot_curves  # noqa: E402


def records(methods):
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
    recs = records(methods)
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
