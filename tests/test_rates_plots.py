"""Tests of reduction.rates (fit_rate, summarize_by_depth) and reduction.plots (plot_depth)."""

from __future__ import annotations

import csv
import math

import numpy as np
import pytest
from matplotlib.figure import Figure
from scipy import stats

from reduction import fit_rate, plot_depth, summarize_by_depth
from reduction.registry import labels

pytestmark = pytest.mark.unit

DEPTHS = np.array([2, 4, 8, 16, 32, 64])


def power_law(slope=-0.5, pref=3.0, seeds=5, noise=0.05, seed=0):
    rng = np.random.default_rng(seed)
    return pref * DEPTHS[None, :] ** slope * np.exp(noise * rng.normal(size=(seeds, DEPTHS.size)))


def rows_for(values, metric="nc1", extra=None):
    rows = []
    for s in range(values.shape[0]):
        for j, L in enumerate(DEPTHS):
            r = {"depth": int(L), "seed": s, metric: float(values[s, j])}
            for name, v in (extra or {}).items():
                r[name] = float(v[s, j])
            rows.append(r)
    return rows


def test_fit_rate_exact_power_law():
    V = 2.5 * DEPTHS.astype(float) ** -0.34
    fit = fit_rate(DEPTHS, np.tile(V, (3, 1)))
    assert fit.slope == pytest.approx(-0.34, abs=1e-12)
    assert fit.prefactor == pytest.approx(2.5, rel=1e-12)
    # identical seeds: the t interval collapses onto the slope (up to the round-off floor)
    assert fit.ci_method == "t"
    assert fit.ci_low == pytest.approx(-0.34, abs=1e-10) and fit.ci_high == pytest.approx(-0.34)
    assert fit.ci_low <= -0.34 <= fit.ci_high
    assert fit.seed_slopes == pytest.approx((-0.34,) * 3, abs=1e-12)
    assert fit.n == 18 and fit.n_seeds == 3 and fit.n_depths == 6 and fit.r2 == pytest.approx(1)
    assert [s for _, _, s in fit.local_slopes] == pytest.approx([-0.34] * 5, abs=1e-12)
    assert fit.one_power_law is True


def test_fit_rate_noisy_recovers_slope_with_ci():
    V = power_law(slope=-0.5, seeds=8, noise=0.1)
    fit = fit_rate(DEPTHS, V)
    assert fit.slope == pytest.approx(-0.5, abs=0.05)
    assert fit.ci_low < fit.slope < fit.ci_high
    assert fit.ci_low <= -0.5 <= fit.ci_high
    # every seed has every depth: the mean of the per-seed slopes is the pooled OLS slope
    x = np.tile(np.log(DEPTHS), 8)
    s_ref, a_ref = np.polyfit(x, np.log(V).ravel(), 1)
    assert fit.slope == pytest.approx(s_ref, rel=1e-12)
    assert fit.intercept == pytest.approx(a_ref, rel=1e-12)
    # 8 seeds: Student-t interval on the per-seed slopes (independent reference)
    b = np.array([np.polyfit(np.log(DEPTHS), np.log(v), 1)[0] for v in V])
    half = stats.t.ppf(0.975, 7) * b.std(ddof=1) / math.sqrt(8)
    assert fit.ci_method == "t" and fit.n_boot == 0
    assert fit.seed_slopes == pytest.approx(tuple(b), rel=1e-12)
    assert (fit.ci_low, fit.ci_high) == pytest.approx((b.mean() - half, b.mean() + half))
    assert fit_rate(DEPTHS, V) == fit  # deterministic
    assert "slope" in str(fit) and "t over 8 seeds" in str(fit)
    # from 10 seeds on: percentile bootstrap over seeds, deterministic under its seed and
    # different under another
    W = power_law(slope=-0.5, seeds=12, noise=0.1, seed=3)
    boot = fit_rate(DEPTHS, W, n_boot=500)
    assert boot.ci_method == "bootstrap" and boot.n_boot == 500
    assert boot.ci_low < boot.slope < boot.ci_high
    assert fit_rate(DEPTHS, W, n_boot=500) == boot
    assert fit_rate(DEPTHS, W, n_boot=500, seed=1).ci_low != boot.ci_low


def test_fit_rate_single_seed_and_bad_values():
    fit = fit_rate(DEPTHS, 1.0 / DEPTHS)
    assert fit.slope == pytest.approx(-1.0)
    assert math.isnan(fit.ci_low) and fit.n_seeds == 1 and fit.ci_method == "none"
    V = power_law()
    V[1, 2] = 0.0
    V[3, 4] = np.nan
    with pytest.raises(ValueError, match="finite and > 0"):
        fit_rate(DEPTHS, V)
    masked = fit_rate(DEPTHS, V, drop_invalid=True)
    assert masked.n == V.size - 2
    with pytest.raises(ValueError, match="shape"):
        fit_rate(DEPTHS, V[:, :-1])
    with pytest.raises(ValueError, match="positive"):
        fit_rate(np.r_[0, DEPTHS[1:]], V)
    with pytest.raises(ValueError, match="two or more distinct depths"):
        fit_rate([4, 4], [[1.0, 2.0]])


def test_summarize_by_depth_rows_and_csv(tmp_path):
    V = power_law(seeds=4)
    U = power_law(seeds=4, seed=9)
    rows = rows_for(V, "nc1", {"nc2": U})
    summary = summarize_by_depth(rows, ["nc1", "nc2"])
    assert [r["depth"] for r in summary] == DEPTHS.tolist()
    for j, r in enumerate(summary):
        assert r["n_seeds"] == 4
        assert r["nc1_mean"] == pytest.approx(V[:, j].mean())
        assert r["nc1_std"] == pytest.approx(np.std(V[:, j], ddof=1))
        assert r["nc2_min"] == pytest.approx(U[:, j].min())
        assert r["nc2_max"] == pytest.approx(U[:, j].max())
    path = tmp_path / "sweep.csv"
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=["depth", "seed", "nc1", "nc2"])
        w.writeheader()
        w.writerows(rows[::-1])  # order must not matter
    from_csv = summarize_by_depth(str(path), ["nc1", "nc2"])
    for a, b in zip(from_csv, summary):
        assert a.keys() == b.keys()
        for k in a:
            assert a[k] == pytest.approx(b[k], rel=1e-12)
    with pytest.raises(ValueError, match="no 'nc3' column"):
        summarize_by_depth(rows, ["nc3"])
    with pytest.raises(ValueError, match="duplicate"):
        summarize_by_depth([*rows, rows[0]], ["nc1"])


def test_plot_depth_panels_lines_and_png(tmp_path):
    V, U, T = power_law(-0.5), power_law(-0.3, seed=1), power_law(-0.2, seed=2)
    rows = rows_for(V, "nc1", {"nc2": U, "nc3": T})
    fig = plot_depth(rows, title="synthetic")
    assert isinstance(fig, Figure)
    assert len(fig.axes) == 3  # one panel per metric
    for ax, values in zip(fig.axes, (V, U, T)):
        assert ax.get_xscale() == "log" and ax.get_yscale() == "log"
        drawn = {ln.get_label(): ln for ln in ax.get_lines()}
        fit = next(label for label in drawn if label.startswith("slope"))
        assert set(drawn) == {"mean over seeds", fit}  # the mean and the fitted power law
        mean = values.mean(axis=0)
        np.testing.assert_allclose(drawn["mean over seeds"].get_ydata(), mean)
        # the band over seeds encloses the mean at every depth
        (band,) = ax.collections
        ys = band.get_paths()[0].vertices[:, 1]
        assert ys.min() <= mean.min() and ys.max() >= mean.max()
    fit_label = next(ln.get_label() for ln in fig.axes[0].get_lines()
                     if ln.get_label().startswith("slope"))  # fmt: skip
    assert "slope -0.5" in fit_label and "(95% t)" in fit_label
    out = tmp_path / "depth.png"
    fig.savefig(out, dpi=60)
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    one = plot_depth(rows, ("nc1", "nc2"), single_axis=True, slope=False, band="minmax")
    assert len(one.axes) == 1
    means = {ln.get_label(): ln.get_ydata() for ln in one.axes[0].get_lines()}
    assert set(means) == {labels()["nc1"], labels()["nc2"]}  # one mean line per metric, no fit
    np.testing.assert_allclose(means[labels()["nc2"]], U.mean(axis=0))
    bare = plot_depth(rows, "nc1", band="none", slope=False)
    assert len(bare.axes) == 1 and not bare.axes[0].collections  # no band drawn
    with pytest.raises(ValueError, match="band"):
        plot_depth(rows, band="iqr")
