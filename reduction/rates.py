"""Depth tables and power-law rates (docs/THEORY.md §6, §10, §12).

Summaries over seeds per depth, log–log slope fits with intervals that keep their coverage at
the handful of seeds a sweep runs, fit-quality checks (r², local slopes, a curvature test of "one
power law"), a table of rates over the usable runs of a sweep, and verdicts against what a preset
expects of its metrics as depth grows.
"""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from scipy import stats

from reduction.presets import EXPECTATIONS  # the words a preset may expect (THEORY §12)

__all__ = [
    "BOOTSTRAP_MIN_SEEDS",
    "EXPECTATIONS",
    "GAP_FRACTION",
    "LIMIT_FRACTION",
    "LimitFit",
    "RateFit",
    "fit_limit",
    "fit_rate",
    "load_rows",
    "preset_verdict",
    "rate_table",
    "run_status",
    "summarize_by_depth",
    "verdict",
]

Rows = Sequence[Mapping[str, Any]] | str | os.PathLike

#: from this many seeds on the slope interval is a percentile bootstrap over seeds; below it a
#: Student-t interval on the per-seed slopes (a bootstrap of 2–3 seeds covers the true slope only
#: 50–75% of the time, the t interval keeps its level: docs/THEORY.md §12)
BOOTSTRAP_MIN_SEEDS = 10
#: floor on the half-width of the slope and curvature intervals, relative to (1 + max|log v|)
#: divided by the half-range h of log L (h² for the curvature): round-off in those coefficients
#: measured ≤ 5e-15 on that scale, so an exact power law fitted in floating point never reports a
#: spurious nonzero curvature, while any curvature that matters is many orders larger
_RESOLUTION = 1e-12


@dataclass(frozen=True)
class RateFit:
    """Power-law fit v ≈ e^intercept · L^slope of one metric against depth (natural logs).

    slope: mean over seeds of the per-seed OLS slopes of log v on log L (``seed_slopes``).
    ci_low/ci_high: interval of the slope at level ``ci_level``; ``ci_method`` "t" (mean ± t_{S−1}
    · sd/√S over S per-seed slopes, 2 ≤ S < BOOTSTRAP_MIN_SEEDS), "bootstrap" (percentile interval
    of the mean of ``n_boot`` resamples of the seeds, S ≥ BOOTSTRAP_MIN_SEEDS) or "none" (one
    seed: NaN). intercept: least-squares intercept of the pooled points at that slope (the pooled
    OLS fit when every seed has every depth); r2: r² of that line on the pooled points.
    local_slopes: (L_i, L_{i+1}, slope) between consecutive depths of the mean-over-seeds log
    curve. curvature: c of log v = a + s·x + c·x² (x = log L), mean over seeds with ≥ 3 depths;
    curvature_ci: its interval ("t" over seeds, or "ols": c ± t_{n−3}·se(c) for a single seed);
    one_power_law: whether the curvature interval contains 0 (None when untestable).
    n: points in the fit; n_seeds: seeds with ≥ 2 valid depths; n_depths: distinct depths used.
    """

    slope: float
    intercept: float
    ci_low: float
    ci_high: float
    ci_level: float
    ci_method: str
    n: int
    n_seeds: int
    n_depths: int
    n_boot: int
    r2: float
    seed_slopes: tuple[float, ...]
    local_slopes: tuple[tuple[float, float, float], ...]
    curvature: float
    curvature_ci: tuple[float, float]
    curvature_method: str
    one_power_law: bool | None

    @property
    def prefactor(self) -> float:
        return math.exp(self.intercept)

    def to_dict(self) -> dict[str, Any]:
        """The fit as plain Python values (lists for tuples), ready for JSON or a CSV row."""
        return {
            "slope": self.slope,
            "ci_low": self.ci_low,
            "ci_high": self.ci_high,
            "ci_level": self.ci_level,
            "ci_method": self.ci_method,
            "seed_slopes": list(self.seed_slopes),
            "intercept": self.intercept,
            "r2": self.r2,
            "local_slopes": [list(t) for t in self.local_slopes],
            "curvature": self.curvature,
            "curvature_ci": list(self.curvature_ci),
            "curvature_method": self.curvature_method,
            "one_power_law": self.one_power_law,
            "n": self.n,
            "n_seeds": self.n_seeds,
            "n_depths": self.n_depths,
        }

    def __str__(self) -> str:
        if self.ci_method == "none":
            ci = "no interval: one seed"
        else:
            ci = (
                f"[{self.ci_low:+.3f}, {self.ci_high:+.3f}] "
                f"{100 * self.ci_level:.0f}% {self.ci_method} over {self.n_seeds} seeds"
            )
        one = {True: "yes", False: "no", None: "untestable"}[self.one_power_law]
        return (
            f"slope {self.slope:+.3f} {ci} (n = {self.n}); r² {self.r2:.3f}; "
            f"one power law: {one} (curvature {self.curvature:+.3f})"
        )


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of y ≈ a + s x (closed form; x not all equal)."""
    xm, ym = x.mean(), y.mean()
    dx = x - xm
    s = float((dx * (y - ym)).sum() / (dx * dx).sum())
    return s, float(ym - s * xm)


def _t_interval(values: np.ndarray, ci: float, floor: float) -> tuple[float, float]:
    """mean ± t_{S−1,(1+ci)/2} · sd/√S (sd with ddof = 1), half-width at least ``floor``."""
    S = values.size
    half = stats.t.ppf((1 + ci) / 2, S - 1) * values.std(ddof=1) / math.sqrt(S)
    half = max(float(half), floor)
    m = float(values.mean())
    return m - half, m + half


def _quadratic(x: np.ndarray, y: np.ndarray) -> tuple[float, float, int]:
    """(c, se(c), dof) of the OLS fit y ≈ a + s x + c x² (≥ 3 distinct x).

    Solved in u = (x − x̄)/h, h the half-range of x, for conditioning: c = c_u / h². c does not
    depend on the shift of x, so this is the coefficient of x² itself. se(c) = √(σ̂² [(UᵀU)⁻¹]_cc)
    / h² with σ̂² = RSS/(n − 3); NaN when n − 3 < 1.
    """
    h = (x.max() - x.min()) / 2
    u = (x - x.mean()) / h
    U = np.column_stack([np.ones_like(u), u, u * u])
    coef, *_ = np.linalg.lstsq(U, y, rcond=None)
    c = float(coef[2]) / h**2
    dof = x.size - 3
    if dof < 1:
        return c, math.nan, dof
    rss = float(((y - U @ coef) ** 2).sum())
    cov = rss / dof * np.linalg.pinv(U.T @ U)
    return c, math.sqrt(max(float(cov[2, 2]), 0.0)) / h**2, dof


def fit_rate(
    depths: Sequence[float],
    values_per_seed: Any,
    *,
    ci: float = 0.95,
    n_boot: int = 2000,
    seed: int = 0,
    drop_invalid: bool = False,
) -> RateFit:
    """Fit values ∝ depth^slope on log–log axes, seed by seed (docs/THEORY.md §12).

    depths: D positive depths (drop the depth-0 baseline first: it has no logarithm).
    values_per_seed: array (S, D), one row per seed (a 1-D array of length D is one seed).

    Each seed s with ≥ 2 distinct valid depths gets its own OLS slope b_s of log v on log L; the
    seeds are the independent replicates, so the slope is b̄ = mean_s b_s and its interval is
    b̄ ± t_{S−1,(1+ci)/2} · sd(b)/√S for 2 ≤ S < BOOTSTRAP_MIN_SEEDS, or for S ≥
    BOOTSTRAP_MIN_SEEDS the (1 ∓ ci)/2 percentiles of the mean of ``n_boot`` resamples of the
    b_s with replacement (numpy Generator(seed): deterministic). One seed: NaN interval.

    Fit quality: r² of log v = intercept + b̄ log L on the pooled points; local slopes
    (ȳ_{i+1} − ȳ_i)/(log L_{i+1} − log L_i) of the mean-over-seeds log curve ȳ_i (mean of log v
    over the seeds valid at L_i); and a curvature test: each seed with ≥ 3 depths is fitted with
    log v = a + s x + c x², x = log L. With ≥ 2 such seeds the interval of c is the t interval
    over their c_s; with one, c ± t_{n−3} · se(c) from its OLS fit (needs ≥ 4 depths). One power
    law fits (``one_power_law``) when that interval contains 0; None when it cannot be tested.

    Values ≤ 0 or NaN have no logarithm: ValueError naming them, unless ``drop_invalid=True``,
    which masks them out (a seed left with < 2 depths then drops out of the fit).
    """
    L = np.asarray(depths, dtype=np.float64)
    V = np.asarray(values_per_seed, dtype=np.float64)
    if L.ndim != 1:
        raise ValueError(f"depths must be 1-D, got shape {L.shape}")
    if V.ndim == 1:
        V = V[None, :]
    if V.ndim != 2 or V.shape[1] != L.shape[0]:
        raise ValueError(
            f"values_per_seed must have shape (n_seeds, {L.shape[0]}) to match depths, "
            f"got {V.shape}"
        )
    if not np.all(np.isfinite(L)) or np.any(L <= 0):
        raise ValueError(
            f"depths must be finite and positive (drop the depth-0 baseline), got {L.tolist()}"
        )
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    valid = np.isfinite(V) & (V > 0)
    if not valid.all() and not drop_invalid:
        bad = [(int(s), float(L[j]), float(V[s, j])) for s, j in zip(*np.nonzero(~valid))]
        raise ValueError(
            "values must be finite and > 0 for a log–log fit; (seed row, depth, value) = "
            f"{bad[:5]}{' …' if len(bad) > 5 else ''}; pass drop_invalid=True to mask them"
        )
    logL = np.log(L)
    logV = np.log(np.where(valid, V, 1.0))
    # the seeds that carry a slope; a seed with fewer than two distinct depths carries none
    per_seed = [
        (L[m], logL[m], logV[s, m]) for s, m in enumerate(valid) if np.unique(logL[m]).size >= 2
    ]
    if not per_seed:
        raise ValueError(
            "need valid values at two or more distinct depths (in at least one seed) to fit "
            f"a slope; depths {L.tolist()}, valid points per seed {valid.sum(axis=1).tolist()}"
        )
    b = np.array([_ols(x, y)[0] for _, x, y in per_seed])
    S = b.size
    slope = float(b.mean())
    Lp = np.concatenate([d for d, _, _ in per_seed])
    x = np.concatenate([x for _, x, _ in per_seed])
    y = np.concatenate([y for _, _, y in per_seed])
    intercept = float(y.mean() - slope * x.mean())
    resid = y - (intercept + slope * x)
    ss_tot = float(((y - y.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0

    # round-off floors for the intervals (see _RESOLUTION), in units of slope and of curvature
    half_range = (x.max() - x.min()) / 2
    scale = _RESOLUTION * (1.0 + float(np.abs(y).max()))
    lo = hi = math.nan
    used_boot = 0
    if S >= BOOTSTRAP_MIN_SEEDS:
        method = "bootstrap"
        rng = np.random.default_rng(seed)
        means = b[rng.integers(0, S, size=(n_boot, S))].mean(axis=1)
        lo, hi = (float(q) for q in np.quantile(means, [(1 - ci) / 2, (1 + ci) / 2]))
        lo, hi = min(lo, slope - scale / half_range), max(hi, slope + scale / half_range)
        used_boot = n_boot
    elif S >= 2:
        method = "t"
        lo, hi = _t_interval(b, ci, scale / half_range)
    else:
        method = "none"

    # local slopes of the mean-over-seeds log curve
    depth_u = np.unique(Lp)
    ybar = np.array([y[Lp == d].mean() for d in depth_u])
    local = tuple(
        (
            float(depth_u[i]),
            float(depth_u[i + 1]),
            float((ybar[i + 1] - ybar[i]) / (math.log(depth_u[i + 1]) - math.log(depth_u[i]))),
        )
        for i in range(depth_u.size - 1)
    )

    # curvature test
    quad = [_quadratic(xs, ys) for _, xs, ys in per_seed if np.unique(xs).size >= 3]
    c_floor = scale / half_range**2
    curvature, c_ci, c_method, one = math.nan, (math.nan, math.nan), "none", None
    if len(quad) >= 2:
        cs = np.array([q[0] for q in quad])
        curvature, c_ci, c_method = float(cs.mean()), _t_interval(cs, ci, c_floor), "t"
    elif len(quad) == 1:
        c, se, dof = quad[0]
        curvature = c
        if dof >= 1:
            half = max(float(stats.t.ppf((1 + ci) / 2, dof)) * se, c_floor)
            c_ci, c_method = (c - half, c + half), "ols"
    if c_method != "none":
        one = bool(c_ci[0] <= 0.0 <= c_ci[1])

    return RateFit(
        slope=slope,
        intercept=intercept,
        ci_low=lo,
        ci_high=hi,
        ci_level=ci,
        ci_method=method,
        n=int(x.size),
        n_seeds=S,
        n_depths=int(depth_u.size),
        n_boot=used_boot,
        r2=r2,
        seed_slopes=tuple(float(v) for v in b),
        local_slopes=local,
        curvature=curvature,
        curvature_ci=(float(c_ci[0]), float(c_ci[1])),
        curvature_method=c_method,
        one_power_law=one,
    )


# ------------------------------------------------------------------------------------------
# the limit as depth grows: v(L) ≈ a + C·L^(−α)  (THEORY §12)
# ------------------------------------------------------------------------------------------

#: the exponents α the limit fit searches (log-spaced; the best grid point is then refined); at
#: the lower end a + C·L^(−α) ≈ (a + C) − Cα·log L, so a fit pinned there says "falls like log L
#: or slower" and its limit a is not determined
ALPHA_MIN, ALPHA_MAX = 0.02, 5.0
_ALPHAS = np.exp(np.linspace(math.log(ALPHA_MIN), math.log(ALPHA_MAX), 240))
#: a limit is "zero" when its interval starts at 0 and ends below this fraction of the value at
#: the deepest depth, a "floor" when its interval starts above that fraction [choice]
LIMIT_FRACTION = 0.5
#: the fraction f of UFM* at which ``depth_for_fraction`` reports where the upper bound
#: J_L − UFM* would fall below f·UFM* [choice]
GAP_FRACTION = 0.1


def _nnls2(u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For data rows v (B, n) and candidate regressors u (A, n) = L^(−α): the (a, C) with C ≥ 0
    minimising Σ w (v − a − C u)² with w = 1/v² (relative residuals), each (B, A), and that
    loss. a is free: a curve that falls faster than any power law (local slopes that steepen)
    is fitted with a < 0, which says "no floor" as clearly as a = 0. Two unknowns: the
    unconstrained solution when C ≥ 0, else the face C = 0; every sum comes from a handful of
    matrix products, so B × A fits cost little."""
    w = 1.0 / v**2
    sw, swv, swvv = w.sum(1)[:, None], (w * v).sum(1)[:, None], (w * v * v).sum(1)[:, None]
    swu, swuu, swuv = w @ u.T, w @ (u * u).T, (w * v) @ u.T

    def loss(a: np.ndarray, c: np.ndarray) -> np.ndarray:
        return swvv - 2 * a * swv - 2 * c * swuv + a * a * sw + 2 * a * c * swu + c * c * swuu

    det = sw * swuu - swu * swu
    with np.errstate(divide="ignore", invalid="ignore"):
        a_in = (swuu * swv - swu * swuv) / det
        c_in = (sw * swuv - swu * swv) / det
    inside = (det > 0) & (c_in >= 0)
    a_face = np.broadcast_to(swv / sw, det.shape)  # C = 0: a constant
    zero = np.zeros_like(det)
    l_in = np.where(inside, loss(np.where(inside, a_in, 0.0), np.where(inside, c_in, 0.0)), np.inf)
    l_face = loss(a_face, zero)
    pick = l_in <= l_face
    return (
        np.where(pick, a_in, a_face),
        np.where(pick, c_in, zero),
        np.where(pick, l_in, l_face),
    )


def _fit_limit_points(
    L: np.ndarray, V: np.ndarray, refine: bool
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(a, C, α), each (B,), of v ≈ a + C L^(−α) with C ≥ 0 for each row of V (B, n), by
    least squares in relative residuals: linear in (a, C) for each α on a log grid, then (with
    ``refine``) α refined between the neighbours of the best grid point."""
    a, c, loss = _nnls2(L[None, :] ** -_ALPHAS[:, None], V)
    i = np.argmin(loss, axis=1)
    rows = np.arange(V.shape[0])
    alpha = _ALPHAS[i].astype(np.float64)
    a_best, c_best = a[rows, i], c[rows, i]
    if refine:
        from scipy.optimize import minimize_scalar

        for r in rows:
            lo = float(_ALPHAS[max(i[r] - 1, 0)])
            hi = float(_ALPHAS[min(i[r] + 1, len(_ALPHAS) - 1)])

            def f(al: float, r: int = int(r)) -> float:
                return float(_nnls2(L[None, :] ** -al, V[r : r + 1])[2][0, 0])

            res = minimize_scalar(f, bounds=(lo, hi), method="bounded", options={"xatol": 1e-10})
            if res.fun <= loss[r, i[r]]:
                alpha[r] = float(res.x)
                ar, cr, _ = _nnls2(L[None, :] ** -alpha[r], V[r : r + 1])
                a_best[r], c_best[r] = ar[0, 0], cr[0, 0]
    return a_best, c_best, alpha


@dataclass(frozen=True)
class LimitFit:
    """v(L) ≈ limit + C·L^(−alpha) over the used runs (pooled over seeds), with C ≥ 0 (the
    limit is free: a negative one means the curve falls faster than a power law).

    The interval of the limit (and of alpha, and of ``depth_at``) is a percentile interval of a
    residual bootstrap: relative residuals r = (v − m)/v of the fit m are resampled and
    v* = m/(1 − r*) refitted, ``n_boot`` times (numpy Generator(seed): deterministic).
    ``value_deepest``: the mean value at the deepest depth used. ``depth_at``: for a target t
    (``target``), the depth at which the fitted curve falls below t, (C/(t − a))^(1/α), ∞ when
    a ≥ t; NaN without a target.
    """

    limit: float
    C: float
    alpha: float
    limit_ci: tuple[float, float]
    alpha_ci: tuple[float, float]
    ci_level: float
    n: int
    n_depths: int
    n_boot: int
    value_deepest: float
    deepest: float
    target: float
    depth_at: float
    depth_at_ci: tuple[float, float]

    def to_dict(self) -> dict[str, Any]:
        return {
            "limit": self.limit,
            "limit_ci_low": self.limit_ci[0],
            "limit_ci_high": self.limit_ci[1],
            "limit_C": self.C,
            "limit_alpha": self.alpha,
            "limit_alpha_ci": list(self.alpha_ci),
            "limit_value_deepest": self.value_deepest,
            "limit_target": self.target,
            "depth_at_target": self.depth_at,
            "depth_at_target_ci": list(self.depth_at_ci),
        }


def _depth_at(a: float, C: float, alpha: float, target: float) -> float:
    if not math.isfinite(target) or target <= 0:
        return math.nan
    if a >= target:
        return math.inf
    if C <= 0:
        return 0.0
    return float((C / (target - a)) ** (1.0 / alpha))


def fit_limit(
    depths: Sequence[float],
    values_per_seed: Any,
    *,
    target: float = math.nan,
    ci: float = 0.95,
    n_boot: int = 500,
    seed: int = 0,
) -> LimitFit:
    """Fit v(L) ≈ a + C·L^(−α) (C ≥ 0, α ∈ [0.02, 5]) to positive values at positive depths,
    seeds pooled (docs/THEORY.md §12): the limit a says whether depth drives v to 0 or to a
    floor. values_per_seed: (S, D) like :func:`fit_rate` (NaN = missing). ``target``: report
    the depth at which the fitted curve would fall below it (e.g. a fraction of UFM*)."""
    L = np.asarray(depths, dtype=np.float64)
    V = np.atleast_2d(np.asarray(values_per_seed, dtype=np.float64))
    if L.ndim != 1 or V.shape[1] != L.size:
        raise ValueError(
            f"values_per_seed must have shape (n_seeds, {L.size}) to match depths, got {V.shape}"
        )
    if not 0 < ci < 1:
        raise ValueError(f"ci must lie in (0, 1), got {ci}")
    if n_boot < 1:
        raise ValueError(f"n_boot must be positive, got {n_boot}")
    if np.any(~np.isfinite(L)) or np.any(L <= 0):
        raise ValueError(f"depths must be finite and positive, got {L.tolist()}")
    mask = np.isfinite(V) & (V > 0)
    Lp = np.broadcast_to(L, V.shape)[mask]
    vp = V[mask]
    if np.unique(Lp).size < 3:
        raise ValueError(
            "a limit fit a + C·L^(−α) needs positive values at three or more distinct depths, "
            f"got depths {sorted(set(Lp.tolist()))}"
        )
    fit = _fit_limit_points(Lp, vp[None, :], refine=True)
    a, C, alpha = (float(t[0]) for t in fit)
    m = a + C * Lp**-alpha
    r = (vp - m) / vp
    rng = np.random.default_rng(seed)
    rs = r[rng.integers(0, r.size, size=(n_boot, r.size))]
    ab, cb, alb = _fit_limit_points(Lp, m / (1.0 - np.minimum(rs, 0.9)), refine=False)
    db = np.array([_depth_at(*t, target) for t in zip(ab, cb, alb)])
    boot = np.column_stack([ab, cb, alb, db])
    q = [(1 - ci) / 2, (1 + ci) / 2]
    # "inverted_cdf" picks sample values: no interpolation between a finite and an ∞ depth
    lo_a, hi_a = (float(x) for x in np.quantile(boot[:, 0], q, method="inverted_cdf"))
    lo_al, hi_al = (float(x) for x in np.quantile(boot[:, 2], q, method="inverted_cdf"))
    deepest = float(Lp.max())
    d_at = _depth_at(a, C, alpha, target)
    if math.isfinite(target):
        lo_d, hi_d = (float(x) for x in np.quantile(boot[:, 3], q, method="inverted_cdf"))
    else:
        lo_d = hi_d = math.nan
    return LimitFit(
        limit=a,
        C=C,
        alpha=alpha,
        limit_ci=(min(lo_a, a), max(hi_a, a)),
        alpha_ci=(lo_al, hi_al),
        ci_level=ci,
        n=int(vp.size),
        n_depths=int(np.unique(Lp).size),
        n_boot=n_boot,
        value_deepest=float(vp[Lp == deepest].mean()),
        deepest=deepest,
        target=target,
        depth_at=d_at,
        depth_at_ci=(lo_d, hi_d),
    )


def _missing(v: Any) -> bool:
    return (
        v is None
        or (isinstance(v, float) and math.isnan(v))
        or (isinstance(v, str) and v.strip() == "")
    )


def _flag(v: Any, name: str) -> bool | None:
    """A boolean column as read from rows or CSV text; None when missing/empty."""
    if _missing(v):
        return None
    if isinstance(v, bool | np.bool_):
        return bool(v)
    if isinstance(v, int | float | np.integer | np.floating):
        return bool(v)
    if isinstance(v, str):
        s = v.strip().lower()
        if s in ("true", "1", "yes"):
            return True
        if s in ("false", "0", "no"):
            return False
    raise ValueError(f"{name!r} must be a boolean (True/False), got {v!r}")


def row_ok(row: Mapping[str, Any]) -> bool:
    """True unless the row has a ``status`` other than "ok" (missing or empty reads as ok): the
    one test of a finished run, for rows in memory and rows read back from CSV."""
    status = row.get("status")
    return _missing(status) or str(status).strip().lower() == "ok"


def run_status(row: Mapping[str, Any], *, converged_only: bool = True) -> str:
    """What a run's row is good for in a depth fit: "baseline" (depth ≤ 0: no logarithm),
    "failed" (``status`` present and ≠ "ok"), and with ``converged_only``: "unconverged"
    (``converged`` False), "nonmonotone" (``monotone_ok`` False: above a shallower run of its
    own seed, so provably not at the optimum, THEORY §10) or "suboptimal" (``seed_ok`` False:
    materially above another run on the same data); else "used". A missing ``status`` reads as
    "ok", a missing ``converged``, ``monotone_ok`` or ``seed_ok`` as true."""
    if "depth" not in row:
        raise ValueError(f"row has no 'depth' column (columns: {sorted(row)})")
    if float(_depth_key(row["depth"])) <= 0:
        return "baseline"
    if not row_ok(row):
        return "failed"
    if converged_only and _flag(row.get("converged"), "converged") is False:
        return "unconverged"
    if converged_only and _flag(row.get("monotone_ok"), "monotone_ok") is False:
        return "nonmonotone"
    if converged_only and _flag(row.get("seed_ok"), "seed_ok") is False:
        return "suboptimal"
    return "used"


def _fmt_cells(cells: Sequence[tuple[Any, Any, float]]) -> str:
    shown = ", ".join(f"L={d} s={s}: {v:.3g}" for d, s, v in cells[:4])
    return shown + (f" … ({len(cells)} in all)" if len(cells) > 4 else "")


def rate_table(
    rows: Rows,
    metrics: Sequence[str],
    *,
    converged_only: bool = True,
    ci: float = 0.95,
    targets: Mapping[str, float] | None = None,
) -> list[dict[str, Any]]:
    """The depth rate and the limit of each metric over the usable runs of a sweep
    (docs/THEORY.md §12).

    rows: one mapping per run (or a CSV path) with "depth", "seed", the metric columns and
    optionally "status" (only "ok" rows are usable; missing = ok) and "converged" (bool; missing =
    converged). Rows at depth ≤ 0 (the no-block baseline, which has no logarithm), rows whose
    status is not "ok", and with ``converged_only`` the rows with converged, monotone_ok or seed_ok
    False, are left out; the rest go to :func:`fit_rate` seed by seed (a seed missing some depths
    keeps the others) and, pooled, to :func:`fit_limit` (``targets``: metric → the value whose
    crossing depth to report, e.g. a fraction of UFM* for the gap).

    Returns one JSON-able dict per metric with keys metric, slope, ci_low, ci_high, ci_level,
    ci_method, seed_slopes, intercept, r2, local_slopes, curvature, curvature_ci,
    curvature_method, one_power_law, n_seeds, n_depths, n_runs_used,
    n_runs_excluded_unconverged, n_runs_excluded_nonmonotone, n_runs_excluded_suboptimal,
    n_runs_excluded_failed, the :class:`LimitFit` fields (limit, limit_ci_low, limit_ci_high,
    limit_C, limit_alpha, …; limit_note says why there is none) and note: None when fitted, else
    why not (non-positive values, fewer than two usable depths, "not converged: k of n runs"),
    with the fit's fields NaN / empty / None.
    """
    if isinstance(metrics, str):
        metrics = [metrics]
    metrics = list(metrics)
    if not metrics:
        raise ValueError("need at least one metric to fit")
    table = load_rows(rows)
    seen: set[tuple[Any, Any]] = set()
    kinds: list[str] = []
    for i, r in enumerate(table):
        for key in ("depth", "seed"):
            if key not in r:
                raise ValueError(f"row {i} has no {key!r} column (columns: {sorted(r)})")
        pair = (_depth_key(r["depth"]), str(r["seed"]))
        if pair in seen:
            raise ValueError(f"duplicate row for depth {pair[0]}, seed {r['seed']!r}")
        seen.add(pair)
        kinds.append(run_status(r, converged_only=converged_only))
    n_runs = sum(k != "baseline" for k in kinds)
    n_unconv = kinds.count("unconverged")
    n_nonmono = kinds.count("nonmonotone")
    n_subopt = kinds.count("suboptimal")
    n_failed = kinds.count("failed")
    used = [r for r, k in zip(table, kinds) if k == "used"]
    not_conv = "; ".join(
        text
        for n, text in (
            (n_unconv, f"not converged: {n_unconv} of {n_runs} runs"),
            (n_nonmono, f"above a shallower run of their seed: {n_nonmono} of {n_runs} runs"),
            (n_subopt, f"above the best run on the same data: {n_subopt} of {n_runs} runs"),
        )
        if n
    )

    out: list[dict[str, Any]] = []
    for m in metrics:
        if not any(m in r for r in table):
            raise ValueError(
                f"no row has a {m!r} column (columns: {sorted(table[0]) if table else []})"
            )
        entry: dict[str, Any] = {
            "metric": m,
            "slope": math.nan,
            "ci_low": math.nan,
            "ci_high": math.nan,
            "ci_level": ci,
            "ci_method": "none",
            "seed_slopes": [],
            "intercept": math.nan,
            "r2": math.nan,
            "local_slopes": [],
            "curvature": math.nan,
            "curvature_ci": [math.nan, math.nan],
            "curvature_method": "none",
            "one_power_law": None,
            "n_seeds": 0,
            "n_depths": 0,
            "n_runs_used": 0,
            "n_runs_excluded_unconverged": n_unconv,
            "n_runs_excluded_nonmonotone": n_nonmono,
            "n_runs_excluded_suboptimal": n_subopt,
            "n_runs_excluded_failed": n_failed,
            "note": None,
            "limit": math.nan,
            "limit_ci_low": math.nan,
            "limit_ci_high": math.nan,
            "limit_C": math.nan,
            "limit_alpha": math.nan,
            "limit_alpha_ci": [math.nan, math.nan],
            "limit_value_deepest": math.nan,
            "limit_target": (targets or {}).get(m, math.nan),
            "depth_at_target": math.nan,
            "depth_at_target_ci": [math.nan, math.nan],
            "limit_note": None,
        }
        out.append(entry)
        cells = [(_depth_key(r["depth"]), r["seed"], float(r.get(m, math.nan))) for r in used]
        if not cells:
            reasons = [not_conv] if not_conv else []
            if n_failed:
                reasons.append(f"failed: {n_failed} of {n_runs} runs")
            entry["note"] = "; ".join(reasons) or "no runs at depth > 0"
            continue
        bad = [c for c in cells if not (math.isfinite(c[2]) and c[2] > 0)]
        if bad:
            entry["note"] = (
                f"non-positive or non-finite values ({_fmt_cells(bad)}); log–log slope undefined"
            )
            continue
        depths = sorted({d for d, _, _ in cells})
        seeds = sorted({str(s) for _, s, _ in cells})
        V = np.full((len(seeds), len(depths)), np.nan)
        di = {d: j for j, d in enumerate(depths)}
        si = {s: i for i, s in enumerate(seeds)}
        for d, s, v in cells:
            V[si[str(s)], di[d]] = v
        try:
            fit = fit_rate(depths, V, ci=ci, drop_invalid=True)
        except ValueError:
            detail = f"fewer than 2 usable depths in every seed (usable depths {depths})"
            entry["note"] = f"{not_conv}; {detail}" if not_conv else detail
            continue
        fitted = fit.to_dict()
        n_used = fitted.pop("n")
        entry.update(fitted)
        entry["n_runs_used"] = n_used
        try:
            limit = fit_limit(depths, V, target=float(entry["limit_target"]), ci=ci)
        except ValueError as err:
            entry["limit_note"] = str(err)
        else:
            entry.update(limit.to_dict())
    return out


def verdict(
    entry: Mapping[str, Any], expect: str, *, fraction: float = LIMIT_FRACTION
) -> dict[str, Any]:
    """Read one :func:`rate_table` entry's limit against the theory's prediction
    (docs/THEORY.md §12). With v_deep the mean value at the deepest depth used and [lo, hi] the
    interval of the limit a of v ≈ a + C·L^(−α):

    - "zero": lo ≤ 0 (the data are consistent with v → 0; a < 0 means the curve falls faster
      than a power law) and hi < ``fraction``·v_deep (they rule out a floor that large);
    - "floor": lo > ``fraction``·v_deep: most of what remains at the deepest depth does not go
      away with depth (a conclusively flat metric is a floor);
    - "inconclusive" otherwise: no fit (the note says why, e.g. not converged), a limit whose
      interval straddles ``fraction``·v_deep or is positive but small, or a "zero" whose α sits at
      the fit's lower bound ALPHA_MIN (a line in log L: its limit is not determined).

    Returns {"metric", "verdict", "expect", "agrees" (verdict == expect; None when
    inconclusive), "reason"} with the numbers in the reason.
    """
    if expect not in EXPECTATIONS:
        raise ValueError(f"expect must be one of {EXPECTATIONS}, got {expect!r}")
    if not 0 < fraction < 1:
        raise ValueError(f"fraction must lie in (0, 1), got {fraction}")
    metric = entry.get("metric", "?")

    def result(v: str, reason: str) -> dict[str, Any]:
        agrees = None if v == "inconclusive" else v == expect
        return {
            "metric": metric,
            "verdict": v,
            "expect": expect,
            "agrees": agrees,
            "reason": reason,
        }

    if entry.get("note"):
        return result("inconclusive", f"not fitted: {entry['note']}")
    limit = float(entry.get("limit", math.nan))
    if entry.get("limit_note") or not math.isfinite(limit):
        return result("inconclusive", f"no limit fit: {entry.get('limit_note') or 'no limit'}")
    lo, hi = float(entry["limit_ci_low"]), float(entry["limit_ci_high"])
    deep = float(entry["limit_value_deepest"])
    bar = fraction * deep
    excluded = sum(
        int(entry.get(k, 0) or 0)
        for k in (
            "n_runs_excluded_unconverged",
            "n_runs_excluded_nonmonotone",
            "n_runs_excluded_suboptimal",
        )
    )
    tail = f"; {excluded} runs left out (not converged or not certified)" if excluded else ""
    level = 100 * float(entry.get("ci_level", 0.95))
    alpha = float(entry.get("limit_alpha", math.nan))
    where = (
        f"limit {limit:.3g} [{lo:.3g}, {hi:.3g}] ({level:.0f}% bootstrap) against "
        f"{fraction:g} × {deep:.3g} (the value at the deepest depth), α = {alpha:.2f}"
    )
    if lo <= 0 and hi < bar:
        if alpha <= 1.05 * ALPHA_MIN:
            # α pinned at its bound: the fit is a line in log L whose a runs to −∞ with α → 0,
            # so a limit "below 0" is an artefact of the bound, not evidence of a fast decay
            return result(
                "inconclusive",
                f"α at the fit's lower bound {ALPHA_MIN:g} (the values fall like log L or slower "
                f"over these depths), so the data do not fix the limit: {where}{tail}",
            )
        how = (
            "below 0 (the curve falls faster than a power law): no floor"
            if hi < 0
            else f"consistent with 0 and below {fraction:g} of the deepest value"
        )
        return result("zero", f"{how}: {where}{tail}")
    if lo > bar:
        return result("floor", f"bounded away from 0 by more than {fraction:g} of the deepest "
                      f"value: {where}{tail}")  # fmt: skip
    why = "the interval straddles the bar" if lo <= bar <= hi else "positive but below the bar"
    return result("inconclusive", f"{why}: {where}{tail}")


def preset_verdict(
    entries: Sequence[Mapping[str, Any]],
    expect: str,
    metrics: Sequence[str],
    *,
    fraction: float = LIMIT_FRACTION,
) -> dict[str, Any]:
    """One verdict for a preset from the :func:`rate_table` entries of ``metrics``.

    "disagrees" when any metric's verdict conclusively differs from ``expect`` (evidence against
    the prediction outweighs silence elsewhere); else "inconclusive" when any metric is
    inconclusive (or has no entry); else "agrees". Returns {"verdict", "expect", "agrees" (bool,
    None when inconclusive), "metrics", "reason", "per_metric" (the :func:`verdict` dicts in
    ``metrics`` order)}.
    """
    if expect not in EXPECTATIONS:
        raise ValueError(f"expect must be one of {EXPECTATIONS}, got {expect!r}")
    metrics = [metrics] if isinstance(metrics, str) else list(metrics)
    if not metrics:
        raise ValueError("need at least one metric to judge the preset on")
    by = {e.get("metric"): e for e in entries}
    per: list[dict[str, Any]] = []
    for m in metrics:
        if m in by:
            per.append(verdict(by[m], expect, fraction=fraction))
        else:
            per.append(
                {
                    "metric": m,
                    "verdict": "inconclusive",
                    "expect": expect,
                    "agrees": None,
                    "reason": "no rate for this metric",
                }
            )
    unsure = [v["metric"] for v in per if v["agrees"] is None]
    against = [f"{v['metric']} {v['verdict']}" for v in per if v["agrees"] is False]
    if against:
        overall, agrees = "disagrees", False
        reason = f"expected {expect}; got {', '.join(against)}"
        if unsure:
            reason += f"; inconclusive: {', '.join(unsure)}"
    elif unsure:
        overall, agrees = "inconclusive", None
        reason = f"inconclusive: {', '.join(unsure)}"
    else:
        overall, agrees = "agrees", True
        reason = f"{', '.join(metrics)}: {expect}"
    return {
        "verdict": overall,
        "expect": expect,
        "agrees": agrees,
        "metrics": metrics,
        "reason": reason,
        "per_metric": per,
    }


def _number(v: Any) -> Any:
    """CSV text → int/float where it parses (empty → NaN); other values unchanged."""
    if not isinstance(v, str):
        return v
    s = v.strip()
    if s == "":
        return math.nan
    try:
        return int(s)
    except ValueError:
        try:
            return float(s)
        except ValueError:
            return v


def load_rows(rows: Rows) -> list[dict[str, Any]]:
    """Rows as a list of dicts: a sequence of mappings, or a CSV path (numbers parsed)."""
    if isinstance(rows, str | os.PathLike):
        with open(rows, newline="") as fh:
            return [{k: _number(v) for k, v in r.items()} for r in csv.DictReader(fh)]
    if isinstance(rows, Mapping):
        raise ValueError("rows must be a sequence of mappings (one per run) or a CSV path")
    return [dict(r) for r in rows]


def _depth_key(v: Any) -> float | int:
    try:
        f = float(v)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"depth must be a number, got {v!r}") from exc
    return int(f) if f.is_integer() else f


def summarize_by_depth(rows: Rows, metrics: Sequence[str]) -> list[dict[str, Any]]:
    """One dict per depth (sorted): depth, n_seeds, and for each metric m: m_mean, m_std (sample
    std over seeds, ddof = 1; NaN with one seed), m_min, m_max, m_n (seeds with a finite value).

    rows: mappings with "depth", "seed" and the metric keys, or a CSV path with those columns.
    Non-finite metric values are skipped per metric (m_n says how many seeds remain). A repeated
    (depth, seed) pair is a ValueError.
    """
    if isinstance(metrics, str):
        metrics = [metrics]
    table = load_rows(rows)
    if not table:
        raise ValueError("no rows to summarise")
    groups: dict[Any, list[dict[str, Any]]] = {}
    seen = set()
    for i, r in enumerate(table):
        for key in ("depth", "seed", *metrics):
            if key not in r:
                raise ValueError(f"row {i} has no {key!r} column (columns: {sorted(r)})")
        depth = _depth_key(r["depth"])
        if (depth, r["seed"]) in seen:
            raise ValueError(f"duplicate row for depth {depth}, seed {r['seed']!r}")
        seen.add((depth, r["seed"]))
        groups.setdefault(depth, []).append(r)
    out = []
    for depth in sorted(groups):
        g = groups[depth]
        row: dict[str, Any] = {"depth": depth, "n_seeds": len(g)}
        for m in metrics:
            vals = np.array(
                [math.nan if r[m] is None else float(r[m]) for r in g], dtype=np.float64
            )  # None (e.g. test accuracy without a test set) counts as missing
            vals = vals[np.isfinite(vals)]
            row[f"{m}_n"] = int(vals.size)
            row[f"{m}_mean"] = float(vals.mean()) if vals.size else math.nan
            row[f"{m}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else math.nan
            row[f"{m}_min"] = float(vals.min()) if vals.size else math.nan
            row[f"{m}_max"] = float(vals.max()) if vals.size else math.nan
        out.append(row)
    return out
