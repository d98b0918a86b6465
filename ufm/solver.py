"""Numerical UFM solver (float64, multi-start L-BFGS on the point reduction) and `solve`.

Variables: one feature per point (see `Problem.points`). LayerNorm features are parametrised as
h = r·Pu/‖Pu‖ (P the centring projector, identity for a plain sphere) with u free, so the problem
is unconstrained. CE optimises (W, b, U) jointly with analytic gradients; MSE eliminates (W, b)
by their exact ridge solution (`ufm.ridge`) and optimises the features only — joint L-BFGS on
normalised MSE is badly conditioned (THEORY §5). By the envelope theorem the gradient of the
eliminated objective in h_j is (m_j/N) Wᵀ(W h_j + b − ȳ_j) (+ λ_H m_j h_j) at the ridge (W, b).

Scaling, so that λ anywhere in 1e-200..1e20 gives the optimum (THEORY §4 asymptotics):
- L-BFGS minimises log J (`_lbfgs`), which is scale-free, so its tolerances are relative whether
  the optimum is ~1e-196 (λ = 1e-200) or → log K (λ = 1e20);
- for LayerNorm CE the classifier is W = s·V with s the balanced optimum's row norm s* (from
  r/(Kλ) as λ → ∞ to ≈ log(1/λ)/r as λ → 0), so V is O(1); a free bias is scaled by max(1, s r)
  (the logit scale), a regularised one also by at most √(value/λ_b);
- free features are rebalanced exactly: with t = (λ_H/λ_W)^{1/4}, W = tV, H = U/t turns the
  penalties into √(λ_Wλ_H)(‖V‖² + Σ m_j‖u_j‖²)/2, so one λ = √(λ_Wλ_H) is solved;
- the CE data term and its gradient are formed without cancellation (`ce_fit_grad`), so fits
  of 1e-198 are resolved.
At λ ≳ 1e12·r² the fit moves by less than float64 resolution around its λ → ∞ limit: the value
is then exact to rounding but the configuration is not resolved.
"""

from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
from scipy.optimize import minimize

from .closed_form import (
    ClosedFormUnavailable,
    ce_layernorm_s,
    closed_form,
    closed_form_reason,
    reference_value,
)
from .problem import Points, Problem, ce_fit_grad, check_finite, evaluate
from .ridge import mse_value, ridge_fit
from .solution import Solution, class_means, classify_geometry
from .threads import single_thread_blas


class _Objective:
    """Point-level objective and gradient in the flat variable x.

    Layout: CE -> [V, β?, U] with W = wscale·V, b = bscale·β; MSE -> [U].
    """

    def __init__(self, problem: Problem, points: Points, wscale: float = 1.0,
                 bscale: float = 1.0) -> None:
        self.p, self.pts = problem, points
        self.K, self.d, self.P = problem.K, problem.width, points.P
        self.has_b = problem.loss == "ce" and problem.bias != "none"
        self.ln = problem.features == "layernorm"
        self.C, self.m, self.N = points.counts, points.mult, problem.N
        self.wscale, self.bscale = wscale, bscale

    def split(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
        """(W, b, U) in problem units."""
        K, d, P = self.K, self.d, self.P
        if self.p.loss == "mse":
            return None, None, x.reshape(d, P)
        W = self.wscale * x[: K * d].reshape(K, d)
        off = K * d
        b = None
        if self.has_b:
            b, off = self.bscale * x[off : off + K], off + K
        return W, b, x[off:].reshape(d, P)

    def features(self, U: np.ndarray) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
        """H from U; for LN also the direction V = Pu/‖Pu‖ and ‖Pu‖."""
        if not self.ln:
            return U, None, None
        Pu = U - U.mean(axis=0) if self.p.centered else U
        nrm = np.linalg.norm(Pu, axis=0)
        nrm = np.maximum(nrm, 1e-300)
        V = Pu / nrm
        return self.p.r * V, V, nrm

    def chain(self, G: np.ndarray, V: np.ndarray | None, nrm: np.ndarray | None) -> np.ndarray:
        """Gradient in U from gradient G in H: (r/‖Pu‖)(P g − v (vᵀg))."""
        if not self.ln:
            return G
        PG = G - G.mean(axis=0) if self.p.centered else G
        return (self.p.r / nrm) * (PG - V * np.sum(V * G, axis=0))

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        p = self.p
        W, b, U = self.split(x)
        H, V, nrm = self.features(U)
        if p.loss == "ce":
            Z = W @ H
            if b is not None:
                Z = Z + b[:, None]
            loss, GZ = ce_fit_grad(Z, self.C, self.m)
            f = np.sum(loss) / self.N
            GZ /= self.N
        else:
            W, b, R = ridge_fit(p, H, self.pts)  # R = W H + b − Ȳ without cancellation
            f = np.sum(self.m * np.sum(R**2, axis=0)) / (2 * self.N)
            GZ = R * (self.m / self.N)
        f += 0.5 * p.lam_W * np.sum(W**2)
        GH = W.T @ GZ
        if p.features == "free":
            f += 0.5 * p.lam_H * np.sum(self.m * np.sum(H**2, axis=0))
            GH += p.lam_H * H * self.m
        if b is not None and p.bias == "regularized":
            f += 0.5 * p.lam_b * np.sum(b**2)
        GU = self.chain(GH, V, nrm)
        if p.loss == "mse":
            return float(f), GU.ravel()
        parts = [self.wscale * (GZ @ H.T + p.lam_W * W).ravel()]
        if self.has_b:
            gb = GZ.sum(axis=1)
            if p.bias == "regularized":
                gb = gb + p.lam_b * b
            parts.append(self.bscale * gb)
        parts.append(GU.ravel())
        return float(f), np.concatenate(parts)

    def init(self, rng: np.random.Generator) -> np.ndarray:
        K, d, P = self.K, self.d, self.P
        U = rng.standard_normal((d, P)) * (1.0 if self.ln else 0.5 / np.sqrt(d))
        if self.ln:
            # h = r·Pu/‖Pu‖ is scale-free in u, so ‖u_j‖ is a free diagonal preconditioner: the
            # curvature in u_j is ∝ (m_j/N)/‖u_j‖², so ‖u_j‖² ∝ K m_j/N evens it out across
            # points of different multiplicity (5× fewer L-BFGS iterations at G = 200 groups)
            U *= np.sqrt(K * self.m / self.N) / np.linalg.norm(U, axis=0)
        if self.p.loss == "mse":
            return U.ravel()
        parts = [rng.standard_normal(K * d) / np.sqrt(d)]  # rows of norm ≈ 1: W rows ≈ wscale
        if self.has_b:
            parts.append(np.zeros(K))
        parts.append(U.ravel())
        return np.concatenate(parts)

    def pack(self, W: np.ndarray, b: np.ndarray | None, U: np.ndarray) -> np.ndarray:
        """Inverse of `split` (CE)."""
        parts = [W.ravel() / self.wscale]
        if self.has_b:
            parts.append(np.asarray(b) / self.bscale)
        parts.append(U.ravel())
        return np.concatenate(parts)


def _lbfgs(obj: _Objective, x0: np.ndarray, gtol: float, max_iter: int, maxcor: int) -> tuple:
    """L-BFGS on log J (J > 0 always: a CE or MSE fit plus penalties), returning J itself.

    log J is scale-free: a random start can sit 200 orders of magnitude above the optimum
    (λ = 1e-200: log-margins of 455 at the start, J* ~ 1e-196), where J itself is exponential
    along the path (L-BFGS-B's line search extrapolates to 1e43 and stalls); log J is nearly
    linear there, and its gradient ∇J/J makes ``gtol`` a relative tolerance. At the optimum
    ∇ log J = 0 and the Hessian is ∇²J/J, so nothing else changes.
    """

    def log_obj(x: np.ndarray) -> tuple[float, np.ndarray]:
        f, g = obj(x)
        if not f > 0:  # f = 0 only by underflow; keep log finite
            f = 1e-320 if f == 0 else f
            if not f > 0:
                return math.inf, np.zeros_like(x)
        return math.log(f), g / f

    res = minimize(
        log_obj, x0, jac=True, method="L-BFGS-B",
        options={"maxiter": max_iter, "maxfun": 2 * max_iter, "gtol": gtol, "ftol": 1e-16,
                 "maxcor": maxcor},
    )
    return res.x, float(math.exp(res.fun)), int(res.nit)


def solve_numerical(
    problem: Problem,
    seed: int = 0,
    n_starts: int = 4,
    gtol: float = 1e-12,
    max_iter: int = 20000,
    points: Points | None = None,
) -> Solution:
    """Multi-start L-BFGS (seeded, float64), polish the best start, return the best found.

    For free features the all-zero start (W = H = 0, the optimum past the threshold Kc ≥ 1) is
    always one of the candidates, so near thresholds the zero solution is compared too.
    """
    if n_starts < 1:
        raise ValueError(f"n_starts must be >= 1, got {n_starts}")
    with single_thread_blas():
        return _solve_numerical(problem, seed, n_starts, gtol, max_iter,
                                points if points is not None else problem.points)


def _scales(problem: Problem) -> tuple[float, float, float]:
    """(reference value, W scale, b scale) of the module docstring."""
    ref = reference_value(problem)
    if problem.loss != "ce" or problem.features != "layernorm":
        return ref, 1.0, 1.0
    s = ce_layernorm_s(problem.K, problem.r, problem.lam_W)
    bscale = max(1.0, s * problem.r)
    if problem.bias == "regularized":
        bscale = min(bscale, math.sqrt(ref) / math.sqrt(problem.lam_b))
    return ref, s, bscale


def _solve_numerical(
    problem: Problem, seed: int, n_starts: int, gtol: float, max_iter: int, pts: Points
) -> Solution:
    t0 = time.perf_counter()
    # Free features: solve the rebalanced problem (λ_W = λ_H = √(λ_Wλ_H)), map back at the end.
    t_bal = 1.0
    work = problem
    if problem.features == "free" and problem.lam_W != problem.lam_H:
        mu = math.sqrt(problem.lam_W) * math.sqrt(problem.lam_H)
        t_bal = problem.lam_H**0.25 / problem.lam_W**0.25
        work = dataclasses.replace(problem, lam_W=mu, lam_H=mu)
    ref, wscale, bscale = _scales(work)
    obj = _Objective(work, pts, wscale=wscale, bscale=bscale)
    rng = np.random.default_rng(seed)
    starts = [obj.init(rng) for _ in range(n_starts)]
    if problem.features == "free":
        starts.append(np.zeros_like(starts[0]))
    runs = [_lbfgs(obj, x0, gtol, max_iter, maxcor=20) for x0 in starts]
    values = [v for _, v, _ in runs]
    best = int(np.argmin(values))
    if not math.isfinite(values[best]):
        raise RuntimeError(f"the solver found no finite objective value for {problem.to_dict()}")
    # Polish: restart from the best point with a longer memory; keep it only if better.
    x_pol, v_pol, it_pol = _lbfgs(obj, runs[best][0], gtol, max_iter, maxcor=50)
    x = x_pol if v_pol <= values[best] else runs[best][0]
    W, b, U = obj.split(x)
    H, _, _ = obj.features(U)
    if problem.loss == "mse":
        W, b, R = ridge_fit(work, H, pts)
        W, H = t_bal * W, H / t_bal
        fit, pen = mse_value(problem, W, H, b, R, pts)
    else:
        W, H = t_bal * W, H / t_bal
        if b is not None and problem.bias == "free":
            b = b - b.mean()  # CE is invariant to b + t·1; report the centred representative
        fit, pen = evaluate(problem, W, H, b, pts)
    check_finite(problem, fit + pen, W, H, b)
    M = class_means(H, pts.counts)
    info = {
        "seed": seed, "n_starts": n_starts, "start_values": values, "best_start": best,
        "polish_iterations": it_pol, "iterations": [it for _, _, it in runs],
        "time_s": time.perf_counter() - t0, "gtol": gtol,
        # MSE: W, b eliminated by their ridge solution; only the features are optimised
        "variables": "features" if problem.loss == "mse" else "W,b,features",
        "scales": {"value": ref, "W": wscale, "b": bscale, "rebalance": t_bal},
    }
    return Solution(
        problem=problem, W=W, H_points=H, b=b, value=fit + pen, fit=fit, penalty=pen,
        geometry=classify_geometry(W, M), method="numerical", points=pts, info=info,
    )


def solve(problem: Problem, method: str = "auto", seed: int = 0, **kwargs) -> Solution:
    """Global optimum of a UFM problem.

    ``method``: "auto" (closed form of THEORY §4/§11 where one exists, else numerical),
    "closed_form" (raises `ClosedFormUnavailable` where none exists) or "numerical" (always the
    multi-start solver; ``kwargs`` go to `solve_numerical`).
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a ufm.Problem, got {type(problem).__name__}")
    if method == "closed_form":
        return closed_form(problem)  # solver options do not apply
    if method == "auto":
        if closed_form_reason(problem) is None:
            return closed_form(problem)
        return solve_numerical(problem, seed=seed, **kwargs)
    if method == "numerical":
        return solve_numerical(problem, seed=seed, **kwargs)
    raise ValueError(f"method must be 'auto', 'closed_form' or 'numerical', got {method!r}")


__all__ = ["ClosedFormUnavailable", "solve", "solve_numerical"]
