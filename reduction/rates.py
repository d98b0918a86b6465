"""Depth tables and power-law rates: summaries over seeds and log–log slope fits (SPEC §6)."""

from __future__ import annotations

import csv
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

__all__ = ["RateFit", "fit_rate", "load_rows", "summarize_by_depth", "values_matrix"]

Rows = Sequence[Mapping[str, Any]] | str | os.PathLike


@dataclass(frozen=True)
class RateFit:
    """Least-squares fit log y = intercept + slope · log L (natural logs): y ≈ e^intercept L^slope.

    ``ci_low``/``ci_high``: percentile bootstrap interval of the slope at level ``ci_level`` from
    ``n_boot`` resamples of the seeds (NaN with a single seed); ``n``: points used in the fit.
    """

    slope: float
    intercept: float
    ci_low: float
    ci_high: float
    ci_level: float
    n: int
    n_seeds: int
    n_depths: int
    n_boot: int
    r2: float

    @property
    def prefactor(self) -> float:
        return math.exp(self.intercept)

    def __str__(self) -> str:
        return (
            f"slope {self.slope:+.3f} [{self.ci_low:+.3f}, {self.ci_high:+.3f}] "
            f"({100 * self.ci_level:.0f}% CI, n = {self.n})"
        )


def _ols(x: np.ndarray, y: np.ndarray) -> tuple[float, float]:
    """Slope and intercept of y ≈ a + s x (closed form; x not all equal)."""
    xm, ym = x.mean(), y.mean()
    dx = x - xm
    s = float((dx * (y - ym)).sum() / (dx * dx).sum())
    return s, float(ym - s * xm)


def fit_rate(
    depths: Sequence[float],
    values_per_seed: Any,
    *,
    n_boot: int = 2000,
    ci: float = 0.95,
    seed: int = 0,
    drop_invalid: bool = False,
) -> RateFit:
    """Fit values ∝ depth^slope on log–log axes, pooling all seeds.

    depths: D positive depths. values_per_seed: array (S, D), one row per seed (a 1-D array of
    length D is one seed). The fit is ordinary least squares of log v on log L over all valid
    (seed, depth) points; the CI resamples whole seeds with replacement (numpy Generator(seed),
    so deterministic) and refits, taking the (1−ci)/2 and (1+ci)/2 percentiles.

    Values ≤ 0 or NaN have no logarithm: ValueError naming them, unless ``drop_invalid=True``,
    which masks them out of the fit (and of every bootstrap refit).
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
        raise ValueError(f"depths must be finite and positive, got {L.tolist()}")
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
    logL = np.broadcast_to(np.log(L), V.shape)
    logV = np.log(np.where(valid, V, 1.0))
    x, yv = logL[valid], logV[valid]
    if np.unique(x).size < 2:
        raise ValueError("need valid values at two or more distinct depths to fit a slope")
    slope, intercept = _ols(x, yv)
    resid = yv - (intercept + slope * x)
    ss_tot = float(((yv - yv.mean()) ** 2).sum())
    r2 = 1.0 - float((resid**2).sum()) / ss_tot if ss_tot > 0 else 1.0

    S = V.shape[0]
    lo = hi = math.nan
    if S > 1:
        rng = np.random.default_rng(seed)
        slopes = []
        for _ in range(n_boot):
            idx = rng.integers(0, S, size=S)
            m = valid[idx]
            xb = logL[idx][m]
            if np.unique(xb).size < 2:  # a resample with one usable depth has no slope
                continue
            slopes.append(_ols(xb, logV[idx][m])[0])
        if slopes:
            lo, hi = (float(q) for q in np.quantile(slopes, [(1 - ci) / 2, (1 + ci) / 2]))
    return RateFit(
        slope=slope,
        intercept=intercept,
        ci_low=lo,
        ci_high=hi,
        ci_level=ci,
        n=int(valid.sum()),
        n_seeds=S,
        n_depths=int(L.shape[0]),
        n_boot=n_boot,
        r2=r2,
    )


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
            vals = np.array([float(r[m]) for r in g], dtype=np.float64)
            vals = vals[np.isfinite(vals)]
            row[f"{m}_n"] = int(vals.size)
            row[f"{m}_mean"] = float(vals.mean()) if vals.size else math.nan
            row[f"{m}_std"] = float(vals.std(ddof=1)) if vals.size > 1 else math.nan
            row[f"{m}_min"] = float(vals.min()) if vals.size else math.nan
            row[f"{m}_max"] = float(vals.max()) if vals.size else math.nan
        out.append(row)
    return out


def values_matrix(rows: Rows, metric: str) -> tuple[np.ndarray, np.ndarray]:
    """(depths (D,), values (S, D)) with one row per seed, NaN where a (seed, depth) is missing;
    the input :func:`fit_rate` takes (use ``drop_invalid=True`` if anything is missing)."""
    table = load_rows(rows)
    depths = sorted({_depth_key(r["depth"]) for r in table})
    seeds = sorted({r["seed"] for r in table}, key=str)
    V = np.full((len(seeds), len(depths)), np.nan)
    di = {d: j for j, d in enumerate(depths)}
    si = {s: i for i, s in enumerate(seeds)}
    for r in table:
        V[si[r["seed"]], di[_depth_key(r["depth"])]] = float(r[metric])
    return np.asarray(depths, dtype=np.float64), V
