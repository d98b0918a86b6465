"""Tests of reduction.plots beyond the basic depth figure: the depth-0 baseline, unconverged and
failed runs in plot_depth, plot_layer_profile (progressive collapse) and plot_history."""

from __future__ import annotations

import math

import numpy as np
import pytest
from matplotlib.figure import Figure

from reduction.plots import BASELINE_LABEL, plot_depth, plot_history, plot_layer_profile
from reduction.rates import rate_table
from reduction.registry import labels as metric_labels

pytestmark = pytest.mark.unit

DEPTHS = [2, 4, 8, 16]


def depth_rows():
    rng = np.random.default_rng(0)
    rows = []
    for s in range(3):
        b = -0.5 + 0.03 * rng.normal()
        for d in DEPTHS:
            rows.append({"depth": d, "seed": s, "nc1": 2.0 * d**b, "converged": True})
        rows.append({"depth": 0, "seed": s, "nc1": 3.0 + s, "converged": True})  # baseline
    rows.append({"depth": 32, "seed": 0, "nc1": 5.0, "converged": False})  # not converged
    rows.append({"depth": 32, "seed": 1, "nc1": 1e3, "status": "diverged"})  # failed: ignored
    return rows


def test_plot_depth_baseline_unconverged_and_failed():
    rows = depth_rows()
    fig = plot_depth(rows, "nc1", band="std")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    lines = {ln.get_label(): ln for ln in ax.get_lines()}
    fit_label = next(label for label in lines if label.startswith("slope"))
    # what is drawn: the mean, the unconverged run, the baseline and the fit, nothing else
    assert set(lines) == {"mean over seeds", "not converged (not fitted)", BASELINE_LABEL,
                          fit_label}  # fmt: skip
    # mean over the converged seeds only (neither the unconverged nor the failed run)
    mean = lines["mean over seeds"]
    np.testing.assert_allclose(mean.get_xdata(), DEPTHS)
    ref = [np.mean([r["nc1"] for r in rows if r["depth"] == d]) for d in DEPTHS]
    np.testing.assert_allclose(mean.get_ydata(), ref)
    # the depth-0 baseline: a horizontal line across the panel (axes fraction 0 → 1) at the
    # baseline mean (3, 4, 5 → 4)
    base = lines[BASELINE_LABEL]
    assert list(base.get_xdata()) == [0, 1] and list(base.get_ydata()) == [4.0, 4.0]
    # the unconverged run: a marker at its own value, not joined to the mean line
    hollow = lines["not converged (not fitted)"]
    assert hollow.get_linestyle() == "None"
    assert list(hollow.get_xdata()) == [32.0] and list(hollow.get_ydata()) == [5.0]
    # the fit leaves out the unconverged run: same slope as rate_table on converged runs only
    entry = rate_table(rows, ["nc1"])[0]
    fit = next(ln for label, ln in lines.items() if label.startswith("slope"))
    assert f"slope {entry['slope']:+.2f}" in fit.get_label() and "(95% t)" in fit.get_label()
    assert fit.get_xdata()[-1] == pytest.approx(16.0)  # drawn over the fitted depths
    # the log axis shows the depths > 0 only, the unconverged depth included
    assert [float(t) for t in ax.get_xticks()] == [2.0, 4.0, 8.0, 16.0, 32.0]

    # a converged run that the seed certificate flags is drawn hollow too, and the label says why
    flagged = [*rows, {"depth": 16, "seed": 9, "nc1": 7.0, "converged": True, "seed_ok": False}]
    labels = [ln.get_label() for ln in plot_depth(flagged, "nc1").axes[0].get_lines()]
    assert "not converged or above another seed (not fitted)" in labels

    # converged_only=False: the run at L = 32 joins the mean line and the fit
    loose = {ln.get_label(): ln for ln in plot_depth(rows, "nc1", converged_only=False)
             .axes[0].get_lines()}  # fmt: skip
    loose_fit = next(label for label in loose if label.startswith("slope"))
    assert set(loose) == {"mean over seeds", BASELINE_LABEL, loose_fit}
    assert list(loose["mean over seeds"].get_xdata()) == [*DEPTHS, 32]
    assert loose[loose_fit].get_xdata()[-1] == pytest.approx(32.0)

    # single axis: one baseline per metric, named by it, at that metric's baseline mean, drawn
    # as its mean line is
    rows2 = [{**r, "nc3": r["nc1"] / 2} for r in rows]
    one = plot_depth(rows2, ("nc1", "nc3"), single_axis=True, slope=False, band="none").axes[0]
    drawn = {ln.get_label(): ln for ln in one.get_lines()}
    for metric, level in (("nc1", 4.0), ("nc3", 2.0)):
        label = metric_labels()[metric]
        base = drawn[f"{label}: {BASELINE_LABEL}"]
        assert list(base.get_ydata()) == [level, level]
        assert base.get_color() == drawn[label].get_color()

    with pytest.raises(ValueError, match="no usable runs at depth > 0"):
        plot_depth([r for r in rows if r["depth"] == 0], "nc1")


def profile_rows():
    rows = []
    for s in range(2):
        rows.append({"depth": 0, "seed": s, "layer": 0, "nc1": 4.0 + s})
        for d in (2, 4, 8):
            for layer in range(d + 1):
                v = (1.0 + s) * 3.0 * math.exp(-2.0 * layer / d) / math.sqrt(d)
                rows.append({"depth": d, "seed": s, "layer": layer, "nc1": v, "nc3": v / 3})
    return rows


def test_plot_layer_profile_one_curve_per_depth():
    rows = profile_rows()
    fig = plot_layer_profile(rows, "nc1", title="progressive collapse")
    assert isinstance(fig, Figure) and len(fig.axes) == 1
    ax = fig.axes[0]
    assert ax.get_yscale() == "log"
    lines = ax.get_lines()
    assert [ln.get_label() for ln in lines] == ["L = 0 (no blocks)", "L = 2", "L = 4", "L = 8"]
    # depth 0: a single marker at l/L = 0, mean over the two seeds
    assert lines[0].get_linestyle() == "None"
    assert list(lines[0].get_xdata()) == [0.0] and list(lines[0].get_ydata()) == [4.5]
    # depth 4: five layers at l/L = 0, 1/4, …, 1, mean over seeds
    np.testing.assert_allclose(lines[2].get_xdata(), [0, 0.25, 0.5, 0.75, 1.0])
    ref = [1.5 * 3.0 * math.exp(-2.0 * lay / 4) / 2.0 for lay in range(5)]
    np.testing.assert_allclose(lines[2].get_ydata(), ref)
    # the legend names every depth
    assert [t.get_text() for t in ax.get_legend().get_texts()] == [ln.get_label() for ln in lines]

    # the metric column may be absent at depth 0 only if we ask for another one: here it is
    with pytest.raises(ValueError, match="no 'nc3' column"):
        plot_layer_profile(rows, "nc3")
    with pytest.raises(ValueError, match="layer must be an integer in"):
        plot_layer_profile([{"depth": 2, "seed": 0, "layer": 3, "nc1": 1.0}])


def test_plot_history_panels_and_splits():
    rows = []
    for seed in range(2):
        for e in (0, 10, 20, 30):
            for split, f in (("train", 1.0), ("test", 2.0)):
                rows.append(
                    {"epoch": e, "split": split, "seed": seed,
                     "nc1": f * (1 + seed) / (1 + e), "nc3": f * 0.5 / (1 + e)}
                )  # fmt: skip
    fig = plot_history(rows, ("nc1", "nc3"), title="collapse over training")
    assert isinstance(fig, Figure) and len(fig.axes) == 2
    for ax in fig.axes:
        assert ax.get_yscale() == "log" and ax.get_xlabel() == "epoch"
        assert [ln.get_label() for ln in ax.get_lines()] == ["train", "test"]
    train, test = fig.axes[0].get_lines()
    np.testing.assert_allclose(train.get_xdata(), [0, 10, 20, 30])
    np.testing.assert_allclose(train.get_ydata(), [1.5 / (1 + e) for e in (0, 10, 20, 30)])
    np.testing.assert_allclose(test.get_ydata(), [3.0 / (1 + e) for e in (0, 10, 20, 30)])
    assert test.get_linestyle() == "--"

    # one metric, train only (no split column), a test metric recorded less often is fine
    only = plot_history([{"epoch": e, "nc1": 1.0 / (1 + e)} for e in range(5)], "nc1")
    assert [ln.get_label() for ln in only.axes[0].get_lines()] == ["train"]
    with pytest.raises(ValueError, match="no history row has a 'nc2' column"):
        plot_history(rows, ("nc2",))
    with pytest.raises(ValueError, match="no 'step' column"):
        plot_history(rows, ("nc1",), x="step")


def test_plot_depth_survives_a_metric_without_positive_values(tmp_path):
    """NC1 = inf at every depth (constant features) leaves its panel empty instead of raising."""
    import math

    from reduction.plots import plot_depth

    rows = [
        {"depth": d, "seed": s, "nc1": math.inf, "nc3": 0.5 / (d + 1), "status": "ok"}
        for d in (0, 1, 2)
        for s in (0, 1)
    ]
    fig = plot_depth(rows, metrics=("nc1", "nc3"))
    fig.savefig(tmp_path / "f.png")  # raised "Data cannot be log-scaled" before
    texts = [t.get_text() for t in fig.axes[0].texts]
    assert "no finite positive values" in texts and fig.axes[1].get_yscale() == "log"


def test_depth_figure_reads_in_a_readme_one_legend_plain_ticks(tmp_path):
    """Four metrics: a 2×2 grid no wider than 1400 px at the sweep's 150 dpi, one legend for the
    figure (no panel repeats it over the baseline), the slope in each panel's title, and tick
    labels that are plain numbers (no minor-tick labels)."""
    rows = depth_rows()
    rows = [{**r, "nc2": r["nc1"] / 3, "nc3": r["nc1"] / 5, "gap": r["nc1"] * 0.01} for r in rows]
    fig = plot_depth(rows, ("nc1", "nc2", "nc3", "gap"))
    assert len(fig.axes) == 4
    fig.savefig(tmp_path / "f.png", dpi=150, bbox_inches="tight")
    from matplotlib.image import imread

    height, width = imread(tmp_path / "f.png").shape[:2]
    assert width <= 1400 and height < width * 1.2
    assert all(ax.get_legend() is None for ax in fig.axes) and len(fig.legends) == 1
    legend = [t.get_text() for t in fig.legends[0].get_texts()]
    assert legend.count(BASELINE_LABEL) == 1 and "mean over seeds" in legend
    assert not any(t.startswith("slope") for t in legend)
    for ax, m in zip(fig.axes, ("nc1", "nc2", "nc3", "gap")):
        entry = rate_table(rows, [m])[0]
        assert f"slope {entry['slope']:+.2f}" in ax.get_title()
        major = [t.get_text() for t in ax.yaxis.get_ticklabels(which="major") if t.get_text()]
        minor = [t.get_text() for t in ax.yaxis.get_ticklabels(which="minor") if t.get_text()]
        assert major and not minor
        for text in major:
            float(text)  # "0.1", "2", "1e-05": a plain number, no mathtext
            assert "$" not in text and "times" not in text


def test_history_axis_says_lbfgs_iteration_when_told_and_one_legend():
    rows = [{"epoch": e, "split": s, "nc1": 1.0 / (1 + e)} for e in (0, 10, 20)
            for s in ("train", "test")]
    fig = plot_history(rows, ("nc1",), xlabel="L-BFGS iteration")
    assert fig.axes[0].get_xlabel() == "L-BFGS iteration"
    assert fig.axes[0].get_legend() is None
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["train", "test"]
