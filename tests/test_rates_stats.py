"""Statistics of depth rates (docs/THEORY.md §12): interval coverage, local slopes, the curvature
test of one power law, rate_table's exclusions and the verdicts against a preset's expectation."""

from __future__ import annotations

import csv
import itertools
import json
import math

import numpy as np
import pytest

from reduction.rates import (
    BOOTSTRAP_MIN_SEEDS,
    fit_rate,
    preset_verdict,
    rate_table,
    run_status,
    verdict,
)

DEPTHS = np.array([2.0, 3, 5, 8, 13, 21, 34])  # the paper's depths
X = np.log(DEPTHS)

ENTRY_KEYS = {
    "metric", "slope", "ci_low", "ci_high", "ci_level", "ci_method", "seed_slopes", "intercept",
    "r2", "local_slopes", "curvature", "curvature_ci", "curvature_method", "one_power_law",
    "n_seeds", "n_depths", "n_runs_used", "n_runs_excluded_unconverged",
    "n_runs_excluded_suboptimal", "n_runs_excluded_failed", "note",
}  # fmt: skip


def sweep(rng, n_seeds, true_slope=-0.4, slope_sd=0.08, noise=0.05):
    """One simulated sweep: seed s has its own slope b_s ~ N(true, slope_sd²) and prefactor, and
    each (seed, depth) value carries log-normal noise."""
    b = true_slope + slope_sd * rng.normal(size=(n_seeds, 1))
    a = 1.0 + 0.2 * rng.normal(size=(n_seeds, 1))
    return np.exp(a + b * X + noise * rng.normal(size=(n_seeds, X.size)))


@pytest.mark.parametrize("n_seeds", [3, 5])
def test_t_interval_coverage(n_seeds):
    """The per-seed slopes are iid around the true slope: the t interval keeps its 95% level at
    the seed counts the presets use (a pooled bootstrap over 3 seeds covered ~73%)."""
    rng = np.random.default_rng(100 + n_seeds)
    n_sim, hits = 600, 0
    for _ in range(n_sim):
        fit = fit_rate(DEPTHS, sweep(rng, n_seeds))
        assert fit.ci_method == "t"
        hits += fit.ci_low <= -0.4 <= fit.ci_high
    assert 0.90 <= hits / n_sim <= 0.99


def test_bootstrap_path_from_ten_seeds():
    rng = np.random.default_rng(7)
    n_sim, hits = 300, 0
    for _ in range(n_sim):
        fit = fit_rate(DEPTHS, sweep(rng, 12), n_boot=1000)
        assert fit.ci_method == "bootstrap" and fit.n_boot == 1000
        hits += fit.ci_low <= -0.4 <= fit.ci_high
    # a percentile bootstrap of a mean of 12 undercovers a little; it must stay near the level
    assert 0.86 <= hits / n_sim <= 0.99
    # the bootstrap interval is the spread of resampled means: close to the t interval's width
    V = sweep(rng, 12)
    boot = fit_rate(DEPTHS, V)
    b = np.asarray(boot.seed_slopes)
    t_half = 2.201 * b.std(ddof=1) / math.sqrt(12)  # t_{11, 0.975}
    assert (boot.ci_high - boot.ci_low) / 2 == pytest.approx(t_half, rel=0.3)
    assert BOOTSTRAP_MIN_SEEDS == 10
    assert fit_rate(DEPTHS, V[:9]).ci_method == "t"


def test_local_slopes_and_curvature_exact_power_law():
    V = 0.7 * DEPTHS**-0.5
    for values in (V, np.tile(V, (3, 1))):
        fit = fit_rate(DEPTHS, values)
        assert [(lo, hi) for lo, hi, _ in fit.local_slopes] == list(itertools.pairwise(DEPTHS))
        assert [s for _, _, s in fit.local_slopes] == pytest.approx([-0.5] * 6, abs=1e-12)
        assert fit.curvature == pytest.approx(0.0, abs=1e-12)
        assert fit.curvature_ci[0] <= 0.0 <= fit.curvature_ci[1]
        assert fit.one_power_law is True
    assert fit_rate(DEPTHS, V).curvature_method == "ols"
    assert fit_rate(DEPTHS, np.tile(V, (3, 1))).curvature_method == "t"


def test_curvature_test_detects_a_bent_log_curve():
    # log v = 1 − 0.16 x − 0.1 x²: the local slope steepens from about −0.3 to −0.8
    curve = 1.0 - 0.16 * X - 0.1 * X**2
    rng = np.random.default_rng(3)
    V = np.exp(curve + 0.02 * rng.normal(size=(3, X.size)))
    fit = fit_rate(DEPTHS, V)
    # reference: per-seed quadratic fits (numpy) and the t interval over the three seeds
    c = np.array([np.polyfit(X, np.log(v), 2)[0] for v in V])
    half = 4.302652729911275 * c.std(ddof=1) / math.sqrt(3)  # t_{2, 0.975}
    assert fit.curvature == pytest.approx(c.mean(), rel=1e-9)
    assert fit.curvature_ci == pytest.approx((c.mean() - half, c.mean() + half), rel=1e-6)
    assert fit.curvature_method == "t" and fit.one_power_law is False
    # local slopes of the mean-over-seeds log curve
    ybar = np.log(V).mean(axis=0)
    ref = np.diff(ybar) / np.diff(X)
    assert [s for _, _, s in fit.local_slopes] == pytest.approx(ref, rel=1e-12)
    assert ref[0] > ref[-1] + 0.3  # it really bends

    # one seed: the OLS standard error of c (independent normal-equations reference, raw x)
    v1 = V[0]
    one = fit_rate(DEPTHS, v1)
    A = np.column_stack([np.ones_like(X), X, X**2])
    coef = np.linalg.solve(A.T @ A, A.T @ np.log(v1))
    s2 = ((np.log(v1) - A @ coef) ** 2).sum() / (X.size - 3)
    se = math.sqrt(s2 * np.linalg.inv(A.T @ A)[2, 2])
    t4 = 2.7764451051977987  # t_{4, 0.975}
    assert one.curvature_method == "ols"
    assert one.curvature == pytest.approx(coef[2], rel=1e-8)
    assert one.curvature_ci == pytest.approx((coef[2] - t4 * se, coef[2] + t4 * se), rel=1e-6)
    assert one.one_power_law is False


def test_curvature_untestable():
    V = DEPTHS**-0.3
    three = fit_rate(DEPTHS[:3], V[:3])  # one seed, 3 depths: no residual dof
    assert three.one_power_law is None and three.curvature_method == "none"
    assert all(math.isnan(v) for v in three.curvature_ci)
    two = fit_rate(DEPTHS[:2], np.tile(V[:2], (4, 1)))  # < 3 depths
    assert two.one_power_law is None and math.isnan(two.curvature)
    # several seeds with 3 depths each: tested over seeds
    rng = np.random.default_rng(0)
    several = fit_rate(DEPTHS[:3], V[:3] * np.exp(0.01 * rng.normal(size=(4, 3))))
    assert several.curvature_method == "t" and several.one_power_law is not None


def test_seed_missing_depths_and_dropped_seed():
    rng = np.random.default_rng(1)
    V = sweep(rng, 4)
    V[1, -2:] = np.nan  # seed 1 lost its two deepest runs: it keeps a slope on the rest
    V[3, 1:] = np.nan  # seed 3 has one depth: no slope, out of the fit
    fit = fit_rate(DEPTHS, V, drop_invalid=True)
    b = [np.polyfit(X[np.isfinite(v)], np.log(v[np.isfinite(v)]), 1)[0] for v in V[:3]]
    assert fit.n_seeds == 3 and fit.n == 7 + 5 + 7
    assert fit.seed_slopes == pytest.approx(tuple(b), rel=1e-10)
    assert fit.slope == pytest.approx(np.mean(b), rel=1e-12)


# ------------------------------------------------------------------------------------------
# rate_table
# ------------------------------------------------------------------------------------------


def table_rows(values, metric="nc1", depths=DEPTHS, **extra):
    return [
        {"depth": int(d), "seed": s, metric: float(values[s, j]), **extra}
        for s in range(values.shape[0])
        for j, d in enumerate(depths)
    ]


def test_rate_table_exclusions():
    rng = np.random.default_rng(5)
    V = sweep(rng, 3)
    rows = table_rows(V, status="ok", converged=True)
    clean = rate_table(rows, ["nc1"])[0]
    ref = fit_rate(DEPTHS, V)
    assert set(clean) == ENTRY_KEYS
    assert clean["slope"] == pytest.approx(ref.slope) and clean["ci_high"] == ref.ci_high
    assert clean["note"] is None and clean["n_runs_used"] == 21
    assert clean["n_runs_excluded_unconverged"] == clean["n_runs_excluded_failed"] == 0
    json.dumps(clean)  # JSON-able

    extra = [
        # the no-block baseline (no logarithm: would otherwise break the fit)
        {"depth": 0, "seed": s, "nc1": 0.0, "converged": True}
        for s in range(3)
    ] + [
        {"depth": 55, "seed": 0, "nc1": 50.0, "converged": False},  # unconverged outlier
        {"depth": 89, "seed": 1, "nc1": math.nan, "status": "diverged"},  # failed run
        {"depth": 89, "seed": 0, "nc1": 1e-9, "status": "error: out of memory"},
    ]
    assert [run_status(r) for r in extra[2:]] == ["baseline", "unconverged", "failed", "failed"]
    got = rate_table(rows + extra, ["nc1"])[0]
    assert got["slope"] == pytest.approx(ref.slope, rel=1e-12)
    assert got["n_runs_used"] == 21 and got["n_depths"] == 7
    assert got["n_runs_excluded_unconverged"] == 1 and got["n_runs_excluded_failed"] == 2

    # converged_only=False lets the unconverged outlier in, and it moves the slope
    loose = rate_table(rows + extra, ["nc1"], converged_only=False)[0]
    assert loose["n_runs_used"] == 22 and loose["n_runs_excluded_unconverged"] == 0
    assert loose["slope"] > got["slope"] + 0.05


def test_rate_table_notes_and_errors(tmp_path):
    rng = np.random.default_rng(6)
    V = sweep(rng, 3)
    U = V.copy()
    U[1, 2] = -1e-4  # a slightly negative gap: no logarithm
    rows = [
        {**r, "gap": float(U[r["seed"], list(DEPTHS).index(r["depth"])])} for r in table_rows(V)
    ]
    nc1, gap = rate_table(rows, ["nc1", "gap"])
    assert nc1["note"] is None
    assert "non-positive" in gap["note"] and math.isnan(gap["slope"]) and set(gap) == ENTRY_KEYS

    unconv = [{**r, "converged": False} for r in rows]
    entry = rate_table(unconv, ["nc1"])[0]
    assert entry["note"] == "not converged: 21 of 21 runs" and entry["n_runs_used"] == 0
    # only the shallowest depth converged: one depth per seed, nothing to fit
    part = [{**r, "converged": r["depth"] == 2} for r in rows]
    entry = rate_table(part, ["nc1"])[0]
    assert entry["note"].startswith("not converged: 18 of 21 runs; fewer than 2 usable depths")

    # a CSV round trip: booleans and statuses arrive as text, an empty cell is "missing"
    path = tmp_path / "results.csv"
    mixed = [{**r, "converged": r["depth"] != 34 or r["seed"] != 2, "status": ""} for r in rows]
    with open(path, "w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(mixed[0]))
        w.writeheader()
        w.writerows(mixed)
    from_csv = rate_table(str(path), ["nc1"])[0]
    direct = rate_table(mixed, ["nc1"])[0]
    assert from_csv["n_runs_excluded_unconverged"] == 1 and from_csv["n_runs_used"] == 20
    assert from_csv["slope"] == pytest.approx(direct["slope"], rel=1e-12)

    with pytest.raises(ValueError, match="duplicate"):
        rate_table([*rows, rows[0]], ["nc1"])
    with pytest.raises(ValueError, match="no row has a 'nc9' column"):
        rate_table(rows, ["nc9"])
    with pytest.raises(ValueError, match="boolean"):
        rate_table([{**rows[0], "converged": "maybe"}], ["nc1"])


# ------------------------------------------------------------------------------------------
# verdicts
# ------------------------------------------------------------------------------------------


def exact_table(seed_slopes, metric="nc1", depths=DEPTHS):
    """Rows whose seed s follows the exact power law 0.5 · L^{b_s}."""
    V = np.array([0.5 * depths**b for b in seed_slopes])
    return table_rows(V, metric, depths)


def entry_for(seed_slopes, metric="nc1"):
    return rate_table(exact_table(seed_slopes, metric), [metric])[0]


def test_verdicts_on_synthetic_tables():
    dec = verdict(entry_for([-0.42, -0.35, -0.38]), "decreasing")
    assert dec["verdict"] == "decreasing" and dec["agrees"] is True
    assert dec["metric"] == "nc1" and dec["expect"] == "decreasing"
    assert "-0.383" in dec["reason"] and "excludes 0" in dec["reason"]
    assert verdict(entry_for([-0.42, -0.35, -0.38]), "flat")["agrees"] is False

    flat = verdict(entry_for([-0.02, 0.01, 0.015]), "flat")
    assert flat["verdict"] == "flat" and flat["agrees"] is True
    assert verdict(entry_for([-0.02, 0.01, 0.015]), "decreasing")["agrees"] is False

    inc = verdict(entry_for([0.3, 0.25, 0.28]), "decreasing")
    assert inc["verdict"] == "increasing" and inc["agrees"] is False

    # noisy: the interval contains 0 but the mean slope is not small
    noisy = verdict(entry_for([-0.40, 0.10, -0.10]), "decreasing")
    assert noisy["verdict"] == "inconclusive" and noisy["agrees"] is None
    assert "contains 0 but |slope| ≥ 0.05" in noisy["reason"]
    # the interval excludes 0 but one seed goes the other way
    split = verdict(entry_for([-0.5, -0.5, -0.5, -0.5, 0.01]), "decreasing")
    assert split["verdict"] == "inconclusive" and "seeds disagree" in split["reason"]
    # a single seed has no interval
    single = verdict(entry_for([-0.5]), "decreasing")
    assert single["verdict"] == "inconclusive" and "single seed" in single["reason"]
    # nothing converged
    rows = [{**r, "converged": False} for r in exact_table([-0.4, -0.3])]
    unconv = verdict(rate_table(rows, ["nc1"])[0], "decreasing")
    assert unconv["verdict"] == "inconclusive" and "not converged: 14 of 14" in unconv["reason"]
    # flat_tol decides between flat and inconclusive
    wide = entry_for([-0.20, 0.02, 0.0])  # mean slope -0.06
    assert verdict(wide, "flat")["verdict"] == "inconclusive"
    assert verdict(wide, "flat", flat_tol=0.1)["verdict"] == "flat"
    with pytest.raises(ValueError, match="expect"):
        verdict(wide, "increasing")


def test_preset_verdict_combines_metrics():
    dec, flat = entry_for([-0.4, -0.35, -0.38], "nc1"), entry_for([-0.01, 0.02, 0.0], "nc3")
    noisy = entry_for([-0.40, 0.10, -0.10], "nc2")
    ok = preset_verdict([dec, {**dec, "metric": "nc2"}], "decreasing", ["nc1", "nc2"])
    assert ok["verdict"] == "agrees" and ok["agrees"] is True
    assert [v["metric"] for v in ok["per_metric"]] == ["nc1", "nc2"]
    bad = preset_verdict([dec, flat], "decreasing", ["nc1", "nc3"])
    assert bad["verdict"] == "disagrees" and bad["agrees"] is False and "nc3 flat" in bad["reason"]
    unsure = preset_verdict([dec, flat, noisy], "decreasing", ["nc1", "nc2", "nc3"])
    assert unsure["verdict"] == "inconclusive" and unsure["agrees"] is None
    assert "nc2" in unsure["reason"] and "nc3 flat" in unsure["reason"]
    missing = preset_verdict([dec], "decreasing", ["nc1", "objective_gap"])
    assert missing["verdict"] == "inconclusive"
    assert missing["per_metric"][1]["reason"] == "no rate for this metric"
    assert preset_verdict([flat], "flat", ["nc3"])["agrees"] is True
    json.dumps(unsure)
    with pytest.raises(ValueError, match="expect"):
        preset_verdict([dec], "down", ["nc1"])
    with pytest.raises(ValueError, match="at least one metric"):
        preset_verdict([dec], "decreasing", [])
