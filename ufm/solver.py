"""Numerical UFM solver (float64, multi-start L-BFGS on the point reduction) and `solve`.

Variables: one feature per point (see `Problem.points`). LayerNorm features are parametrised as
h = r·Pu/‖Pu‖ (P the centring projector, identity for a plain sphere) with u free, so the problem
is unconstrained. CE optimises (W, b, U) jointly with analytic gradients; MSE eliminates (W, b)
by their exact ridge solution (`ufm.ridge`) and optimises the features only — joint L-BFGS on
normalised MSE is badly conditioned (SPEC §5). By the envelope theorem the gradient of the
eliminated objective in h_j is (m_j/N) Wᵀ(W h_j + b − ȳ_j) (+ λ_H m_j h_j) at the ridge (W, b).
"""

from __future__ import annotations

import time

import numpy as np
from scipy.optimize import minimize

from .closed_form import ClosedFormUnavailable, closed_form, closed_form_reason
from .problem import Points, Problem, evaluate
from .ridge import ridge
from .solution import Solution, classify_geometry
from .threads import single_thread_blas


class _Objective:
    """Point-level objective and gradient in the flat variable x."""

    def __init__(self, problem: Problem, points: Points) -> None:
        self.p, self.pts = problem, points
        self.K, self.d, self.P = problem.K, problem.width, points.P
        self.has_b = problem.loss == "ce" and problem.bias != "none"
        self.ln = problem.features == "layernorm"
        self.C, self.m, self.N = points.counts, points.mult, problem.N

    # -- layout: CE -> [W, b?, U]; MSE -> [U]
    def split(self, x: np.ndarray) -> tuple[np.ndarray | None, np.ndarray | None, np.ndarray]:
        K, d, P = self.K, self.d, self.P
        if self.p.loss == "mse":
            return None, None, x.reshape(d, P)
        W = x[: K * d].reshape(K, d)
        off = K * d
        b = None
        if self.has_b:
            b, off = x[off : off + K], off + K
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
        if p.loss == "mse":
            W, b = ridge(p, H, self.pts)
        Z = W @ H
        if b is not None:
            Z = Z + b[:, None]
        if p.loss == "ce":
            zmax = Z.max(axis=0)
            E = np.exp(Z - zmax)
            S = E.sum(axis=0)
            lse = zmax + np.log(S)
            f = (np.sum(self.m * lse) - np.sum(self.C * Z)) / self.N
            GZ = (E / S * self.m - self.C) / self.N
        else:
            R = Z - self.C / self.m
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
        parts = [(GZ @ H.T + p.lam_W * W).ravel()]
        if self.has_b:
            gb = GZ.sum(axis=1)
            if p.bias == "regularized":
                gb = gb + p.lam_b * b
            parts.append(gb)
        parts.append(GU.ravel())
        return float(f), np.concatenate(parts)

    def init(self, rng: np.random.Generator) -> np.ndarray:
        K, d, P = self.K, self.d, self.P
        U = rng.standard_normal((d, P)) * (1.0 if self.ln else 0.5 / np.sqrt(d))
        if self.p.loss == "mse":
            return U.ravel()
        parts = [rng.standard_normal(K * d) / np.sqrt(d)]
        if self.has_b:
            parts.append(np.zeros(K))
        parts.append(U.ravel())
        return np.concatenate(parts)


def _lbfgs(obj: _Objective, x0: np.ndarray, gtol: float, max_iter: int, maxcor: int) -> tuple:
    res = minimize(
        obj, x0, jac=True, method="L-BFGS-B",
        options={"maxiter": max_iter, "maxfun": 2 * max_iter, "gtol": gtol, "ftol": 1e-16,
                 "maxcor": maxcor},
    )
    return res.x, float(res.fun), int(res.nit)


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


def _solve_numerical(
    problem: Problem, seed: int, n_starts: int, gtol: float, max_iter: int, pts: Points
) -> Solution:
    obj = _Objective(problem, pts)
    rng = np.random.default_rng(seed)
    t0 = time.perf_counter()
    starts = [obj.init(rng) for _ in range(n_starts)]
    if problem.features == "free":
        starts.append(np.zeros_like(starts[0]))
    runs = [_lbfgs(obj, x0, gtol, max_iter, maxcor=20) for x0 in starts]
    values = [v for _, v, _ in runs]
    best = int(np.argmin(values))
    # Polish: restart L-BFGS from the best point with a longer memory; keep it only if better.
    x_pol, v_pol, it_pol = _lbfgs(obj, runs[best][0], gtol, max_iter, maxcor=50)
    x = x_pol if v_pol <= runs[best][1] else runs[best][0]
    W, b, U = obj.split(x)
    H, _, _ = obj.features(U)
    if problem.loss == "mse":
        W, b = ridge(problem, H, pts)
    if b is not None and problem.loss == "ce" and problem.bias == "free":
        b = b - b.mean()  # CE is invariant to b + t·1; report the centred representative
    fit, pen = evaluate(problem, W, H, b, pts)
    C = pts.counts
    M = (H @ C.T) / C.sum(axis=1)
    info = {
        "seed": seed, "n_starts": n_starts, "start_values": values, "best_start": best,
        "polish_iterations": it_pol, "iterations": [it for _, _, it in runs],
        "time_s": time.perf_counter() - t0, "gtol": gtol,
        # MSE: W, b eliminated by their ridge solution; only the features are optimised
        "variables": "features" if problem.loss == "mse" else "W,b,features",
    }
    return Solution(
        problem=problem, W=W, H_points=H, b=b, value=fit + pen, fit=fit, penalty=pen,
        geometry=classify_geometry(W, M), method="numerical", points=pts, info=info,
    )


def solve(problem: Problem, method: str = "auto", seed: int = 0, **kwargs) -> Solution:
    """Global optimum of a UFM problem.

    ``method``: "auto" (closed form of SPEC §4 where one exists, else numerical),
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
