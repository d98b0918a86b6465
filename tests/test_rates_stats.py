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
    ALPHA_MIN,
    BOOTSTRAP_MIN_SEEDS,
    LIMIT_FRACTION,
    fit_limit,
    fit_rate,
    preset_verdict,
    rate_table,
    run_status,
    verdict,
)

pytestmark = pytest.mark.unit

DEPTHS = np.array([2.0, 3, 5, 8, 13, 21, 34])  # the paper's depths
X = np.log(DEPTHS)

ENTRY_KEYS = {
    "metric", "slope", "ci_low", "ci_high", "ci_level", "ci_method", "seed_slopes", "intercept",
    "r2", "local_slopes", "curvature", "curvature_ci", "curvature_method", "one_power_law",
    "n_seeds", "n_depths", "n_runs_used", "n_runs_excluded_unconverged",
    "n_runs_excluded_nonmonotone", "n_runs_excluded_suboptimal", "n_runs_excluded_failed", "note",
    "limit", "limit_ci_low", "limit_ci_high", "limit_C", "limit_alpha", "limit_alpha_ci",
    "limit_value_deepest", "limit_target", "depth_at_target", "depth_at_target_ci", "limit_note",
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

    # a converged run that the monotone certificate flags (above a shallower run of its own
    # seed: provably not at the optimum) stays out of the fit, as does a seed-flagged one
    flagged = [
        {"depth": 55, "seed": 1, "nc1": 50.0, "converged": True, "monotone_ok": False},
        {"depth": 55, "seed": 2, "nc1": 50.0, "converged": True, "monotone_ok": "False"},
        {"depth": 89, "seed": 2, "nc1": 50.0, "converged": True, "seed_ok": False},
    ]
    assert [run_status(r) for r in flagged] == ["nonmonotone", "nonmonotone", "suboptimal"]
    cert = rate_table(rows + flagged, ["nc1"])[0]
    assert cert["slope"] == pytest.approx(ref.slope, rel=1e-12) and cert["n_runs_used"] == 21
    assert cert["n_runs_excluded_nonmonotone"] == 2 and cert["n_runs_excluded_suboptimal"] == 1
    admitted = rate_table(rows + flagged, ["nc1"], converged_only=False)[0]
    assert admitted["n_runs_used"] == 24 and admitted["slope"] > cert["slope"] + 0.05

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


def limit_values(a, C=0.4, alpha=0.9, n_seeds=3, noise=0.02, seed=0):
    """Seeds of v(L) = a + C·L^(−α) at the paper's depths, each value with log-normal noise."""
    rng = np.random.default_rng(seed)
    clean = a + C * DEPTHS**-alpha
    return np.array([clean * np.exp(noise * rng.normal(size=DEPTHS.size)) for _ in range(n_seeds)])


def limit_entry(a, metric="nc1", **kw):
    return rate_table(table_rows(limit_values(a, **kw), metric), [metric])[0]


def test_fit_limit_recovers_an_exact_curve():
    for a, alpha in [(0.0, 0.9), (0.05, 0.5), (0.01, 1.7)]:
        f = fit_limit(DEPTHS, limit_values(a, alpha=alpha, noise=0.0), target=0.02)
        assert f.limit == pytest.approx(a, abs=1e-8) and f.alpha == pytest.approx(alpha, rel=1e-4)
        assert f.C == pytest.approx(0.4, rel=1e-4) and f.n == 21 and f.n_depths == 7
        expected = (0.4 / (0.02 - a)) ** (1 / alpha) if a < 0.02 else math.inf
        assert f.depth_at == pytest.approx(expected, rel=1e-4)
        json.dumps(f.to_dict(), allow_nan=True)


@pytest.mark.parametrize("seed", range(4))
def test_fit_limit_tells_a_zero_limit_from_a_floor_under_noise(seed):
    """2% noise, 3 seeds: a zero limit comes out consistent with 0 and well below the deepest
    value; a floor of a = 0.05 (75% of the deepest value) is recovered within its interval and
    bounded away from 0 by more than half the deepest value."""
    zero = fit_limit(DEPTHS, limit_values(0.0, seed=seed))
    assert zero.limit_ci[0] <= 0.0 <= zero.limit_ci[1]
    assert zero.limit_ci[1] < LIMIT_FRACTION * zero.value_deepest
    floor = fit_limit(DEPTHS, limit_values(0.05, seed=seed))
    assert floor.limit_ci[0] <= 0.05 <= floor.limit_ci[1]
    assert floor.limit_ci[0] > LIMIT_FRACTION * floor.value_deepest


def test_fit_limit_interval_covers_the_floor():
    """The bootstrap interval of the limit covers the true floor at about its level."""
    hits = sum(
        lo <= 0.03 <= hi
        for lo, hi in (
            fit_limit(DEPTHS, limit_values(0.03, seed=100 + k), n_boot=300).limit_ci
            for k in range(60)
        )
    )
    assert hits / 60 >= 0.8


def test_fit_limit_reads_a_steepening_curve_as_no_floor():
    """Local slopes that steepen with depth (faster than any power law, as the main job's NC3)
    are fitted with a limit below 0: its interval lies below the bar, so the verdict is zero."""
    L = DEPTHS
    V = np.array([0.5 * L**-0.4 * np.exp(-L / 40) * (1 + 0.01 * k) for k in range(3)])
    f = fit_limit(L, V)
    assert f.limit < 0 and f.limit_ci[1] < LIMIT_FRACTION * f.value_deepest


def test_fit_limit_errors():
    with pytest.raises(ValueError, match="three or more distinct depths"):
        fit_limit([2.0, 3.0], [[1.0, 0.5]])
    with pytest.raises(ValueError, match="shape"):
        fit_limit(DEPTHS, np.ones((2, 3)))
    with pytest.raises(ValueError, match="positive"):
        fit_limit([0.0, 2.0, 3.0], [[1.0, 0.5, 0.4]])


def test_verdicts_read_the_limit():
    zero = verdict(limit_entry(0.0), "zero")
    assert zero["verdict"] == "zero" and zero["agrees"] is True and zero["metric"] == "nc1"
    assert "consistent with 0" in zero["reason"] and "bootstrap" in zero["reason"]
    assert verdict(limit_entry(0.0), "floor")["agrees"] is False
    floor = verdict(limit_entry(0.05), "floor")
    assert floor["verdict"] == "floor" and floor["agrees"] is True
    assert verdict(limit_entry(0.05), "zero")["agrees"] is False
    # a conclusively flat metric is a floor: it disagrees with an expected limit of 0
    flat = verdict(limit_entry(0.3, C=0.001), "zero")
    assert flat["verdict"] == "floor" and flat["agrees"] is False
    # a small positive limit (11% of the deepest value) settles neither way
    small = verdict(limit_entry(0.002, noise=0.002), "zero")
    assert small["verdict"] == "inconclusive" and "positive but below the bar" in small["reason"]
    # nothing converged
    rows = [{**r, "converged": False} for r in table_rows(limit_values(0.0))]
    unconv = verdict(rate_table(rows, ["nc1"])[0], "zero")
    assert unconv["verdict"] == "inconclusive" and "not converged: 21 of 21" in unconv["reason"]
    # two depths: a slope but no limit
    two = rate_table(table_rows(limit_values(0.0)[:, :2], depths=DEPTHS[:2]), ["nc1"])[0]
    assert two["limit_note"] and verdict(two, "zero")["verdict"] == "inconclusive"
    with pytest.raises(ValueError, match="expect"):
        verdict(limit_entry(0.0), "decreasing")
    with pytest.raises(ValueError, match="fraction"):
        verdict(limit_entry(0.0), "zero", fraction=1.5)


def test_a_fit_pinned_at_the_lowest_alpha_cannot_say_zero():
    """Values that fall like log L (NC1 of the MSE preset, NC1 on Fashion) are fitted with α at
    its lower bound and a limit far below 0; that limit is an artefact of the bound, so the
    verdict is inconclusive rather than "zero"."""
    L = DEPTHS
    V = np.array([(1.0 - 0.12 * np.log(L)) * (1 + 0.01 * k) for k in range(3)])
    assert np.all(V > 0)
    f = fit_limit(L, V)
    assert f.alpha <= 1.05 * ALPHA_MIN and f.limit < 0
    entry = {"metric": "nc1", "limit": f.limit, "limit_ci_low": f.limit_ci[0],
             "limit_ci_high": f.limit_ci[1], "limit_value_deepest": f.value_deepest,
             "limit_alpha": f.alpha}  # fmt: skip
    v = verdict(entry, "zero")
    assert v["verdict"] == "inconclusive" and "lower bound" in v["reason"]
    # the same entry with a determined α would read as zero
    assert verdict({**entry, "limit_alpha": 0.5}, "zero")["verdict"] == "zero"


def test_preset_verdict_combines_metrics():
    zero, floor = limit_entry(0.0, "nc1"), limit_entry(0.05, "nc3")
    unsure = limit_entry(0.002, "nc2", noise=0.002)
    ok = preset_verdict([zero, {**zero, "metric": "nc2"}], "zero", ["nc1", "nc2"])
    assert ok["verdict"] == "agrees" and ok["agrees"] is True
    assert [v["metric"] for v in ok["per_metric"]] == ["nc1", "nc2"]
    bad = preset_verdict([zero, floor], "zero", ["nc1", "nc3"])
    assert bad["verdict"] == "disagrees" and bad["agrees"] is False and "nc3 floor" in bad["reason"]
    # conclusive evidence against the prediction outweighs an inconclusive metric
    mixed = preset_verdict([zero, floor, unsure], "zero", ["nc1", "nc2", "nc3"])
    assert mixed["verdict"] == "disagrees" and "inconclusive: nc2" in mixed["reason"]
    shaky = preset_verdict([zero, unsure], "zero", ["nc1", "nc2"])
    assert shaky["verdict"] == "inconclusive" and shaky["agrees"] is None
    missing = preset_verdict([zero], "zero", ["nc1", "objective_gap"])
    assert missing["verdict"] == "inconclusive"
    assert missing["per_metric"][1]["reason"] == "no rate for this metric"
    assert preset_verdict([floor], "floor", ["nc3"])["agrees"] is True
    json.dumps(mixed)
    with pytest.raises(ValueError, match="expect"):
        preset_verdict([zero], "down", ["nc1"])
    with pytest.raises(ValueError, match="at least one metric"):
        preset_verdict([zero], "zero", [])
