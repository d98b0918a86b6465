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
import sys
import time
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
from scipy.optimize import minimize

from .closed_form import (
    ClosedFormUnavailable,
    ce_layernorm_s,
    closed_form,
    closed_form_reason,
    helmert,
    reference_value,
)
from .problem import Points, Problem, ce_fit_grad, check_finite, evaluate
from .ridge import mse_value, ridge_fit
from .solution import Solution, Status, class_means, classify_geometry
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
        assert V is not None and nrm is not None  # features() returns them for LayerNorm
        PG = G - G.mean(axis=0) if self.p.centered else G
        return (self.p.r / nrm) * (PG - V * np.sum(V * G, axis=0))

    def __call__(self, x: np.ndarray) -> tuple[float, np.ndarray]:
        p = self.p
        W, b, U = self.split(x)
        H, V, nrm = self.features(U)
        if p.loss == "ce":
            assert W is not None  # split() returns W for CE (MSE solves it by ridge)
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
            assert b is not None  # split() returns b when the problem has one
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


def _lbfgs(obj: _Objective, x0: np.ndarray, gtol: float, max_iter: int, maxcor: int,
           tick: Callable[[int, float], None] | None = None) -> tuple:
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

    callback = None
    if tick is not None:
        count = [0]

        def callback(intermediate_result: Any) -> None:
            count[0] += 1
            tick(count[0], math.exp(float(intermediate_result.fun)))

    res = minimize(
        log_obj, x0, jac=True, method="L-BFGS-B", callback=callback,
        options={"maxiter": max_iter, "maxfun": 2 * max_iter, "gtol": gtol, "ftol": 1e-16,
                 "maxcor": maxcor},
    )
    return res.x, float(math.exp(res.fun)), int(res.nit)


#: relative tolerance within which two starts count as reaching the same (best) value
SAME_VALUE_RTOL = 1e-9
#: the most starts the solver runs when the optimum is not certified (see `solve_numerical`)
MAX_STARTS = 64
#: tolerance on the dual bound's relative gap for "certified"
CERTIFY_RTOL = 1e-6
#: extra starts stop once this many starts reached the best value
MIN_HITS = 5
#: extra starts take at most 8× the first round's time and at most this many seconds
EXTRA_BUDGET_S = 20.0
#: the descent start re-optimises at most this many intermediate widths
DESCENT_STEPS = 8
#: starts from the relaxation only while the lifted problem has at most this many times the
#: variables of the problem (plus LIFT_MAX_EXTRA)
LIFT_MAX_RATIO = 4
LIFT_MAX_EXTRA = 20_000


class UncertifiedOptimumWarning(UserWarning):
    """`solve` returned the best point it found but could not certify it as the global optimum
    (the convex relaxation is not tight at this width, THEORY §5)."""


Progress = Callable[[str], None] | bool | None


class _Reporter:
    """Progress lines for long solves: silent for the first ``quiet_s`` seconds, then a line at
    most every ``every_s`` seconds (growing to 6·every_s after a minute) and at each finished
    start, so a solve of minutes is never silent and one of milliseconds never speaks."""

    def __init__(self, progress: Progress, quiet_s: float = 2.0, every_s: float = 10.0) -> None:
        if progress is True:
            self.emit: Callable[[str], None] | None = lambda line: print(
                line, file=sys.stderr, flush=True)
        elif callable(progress):
            self.emit = progress
        else:
            self.emit = None
        self.t0 = time.perf_counter()
        self.last = -math.inf
        self.quiet_s, self.every_s = quiet_s, every_s

    def __call__(self, line: str, force: bool = False) -> None:
        if self.emit is None:
            return
        now = time.perf_counter()
        every = min(6 * self.every_s, max(self.every_s, (now - self.t0) / 6))  # 10 s → 1 min
        if now - self.t0 < self.quiet_s or (not force and now - self.last < every):
            return
        self.last = now
        self.emit(f"ufm solve: {line} ({now - self.t0:.0f} s elapsed)")


def solve_numerical(
    problem: Problem,
    seed: int = 0,
    n_starts: int = 4,
    gtol: float = 1e-12,
    max_iter: int = 20000,
    points: Points | None = None,
    *,
    max_starts: int = MAX_STARTS,
    certify: bool = True,
    progress: Progress = None,
) -> Solution:
    """Multi-start L-BFGS (seeded, float64), polish the best start, return the best found.

    Starts: ``n_starts`` random ones; for free features also the all-zero point (the optimum
    past the threshold Kc ≥ 1). When the width is below the rank the optimum may need
    (d' < min(K, P): the convex relaxation need not be tight, THEORY §5), also starts from the
    relaxation, i.e. the same problem solved at the lifted width min(K, P) (+1 when centred),
    where it is tight:
    - "relaxation": its top d' principal directions (free features: the weighted SVD
      Z D^{1/2} = U S Vᵀ of the logits, W = U_d S_d^{1/2}, H = S_d^{1/2} V_dᵀ D^{−1/2};
      LayerNorm: the top-d' principal subspace of the features, renormalised onto the sphere);
    - "descent": the same truncation one step at a time, re-optimised at up to DESCENT_STEPS
      intermediate widths;
    - "projection" (``n_starts`` of them): random d'-dimensional projections of it.

    ``certify``: bound the value from below by the dual bound of THEORY §5 (no solver needed) at
    the best point and at the relaxation's solution, and keep the higher. ``status`` is
    "certified" when value − bound ≤ CERTIFY_RTOL·|value|. Otherwise the solver adds starts
    (random ones and projections) until MIN_HITS starts reached the best value, ``max_starts``
    ran, or min(8 × the first round's time, EXTRA_BUDGET_S) is spent; it returns the best point
    with ``status`` "not_certified", ``lower_bound`` the bound, and warns
    (:class:`UncertifiedOptimumWarning`). ``info`` records each start's kind and value,
    ``best_hits`` (starts that reached the best value), ``relaxation_rank``.
    ``progress``: True (lines on stderr), a callable taking a line, or None; lines appear once
    a solve has run for 2 s, then every 10 s (every minute after six) and after each start.
    """
    if n_starts < 1:
        raise ValueError(f"n_starts must be >= 1, got {n_starts}")
    if max_starts < n_starts:
        max_starts = n_starts
    with single_thread_blas():
        sol = _solve_numerical(problem, seed, n_starts, gtol, max_iter,
                               points if points is not None else problem.points, max_starts,
                               certify, _Reporter(progress))
    if sol.status == "not_certified":
        info = sol.info
        rank = info.get("relaxation_rank")
        lower = info.get("lower_bound")
        if lower is None:
            why = "no finite lower bound could be formed (values at the edge of float64)"
        elif rank is not None and rank > problem.d_eff:
            why = (f"the relaxation's optimum has rank {rank} > {problem.d_eff}, what width "
                   f"{problem.width} allows, so the relaxation is not tight")
        else:
            why = "the dual bound is not tight"
        bound = "" if lower is None else f", lower bound {lower:.10g}"
        warnings.warn(
            f"ufm.solve: global optimality is not certified ({_describe(problem)}): value "
            f"{sol.value:.10g}{bound}; {why}. Best of "
            f"{len(info['start_values'])} starts, reached by {info['best_hits']}; "
            "Solution.status says so.", UncertifiedOptimumWarning, stacklevel=3)
    return sol


def _describe(p: Problem) -> str:
    return (f"{p.loss}, {p.features} features, K = {p.K}, width {p.width}, "
            f"{'balanced' if p.balanced else 'imbalanced'}")


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


def _lift_width(problem: Problem, pts: Points) -> int | None:
    """The width at which the relaxation is tight, when the problem's is too small: rank Z ≤
    min(K, P) (free), rank Q ≤ min(K, P) (LayerNorm, features in W's row space); None when
    d' ≥ that rank already, or when the lifted problem has more than LIFT_MAX_RATIO times the
    variables (plus LIFT_MAX_EXTRA) of the problem itself."""
    need = min(problem.K, pts.P)
    if problem.features == "free":
        lift = need if problem.width < need else None
    else:
        lift = None if problem.d_eff >= need else need + (1 if problem.centered else 0)
    if lift is not None and _size(problem.K, lift, pts.P) > LIFT_MAX_RATIO * _size(
            problem.K, problem.width, pts.P) + LIFT_MAX_EXTRA:
        return None  # too large to solve in passing (K = 1000 at width 64): random starts only
    return lift


def _size(K: int, d: int, P: int) -> int:
    return d * (K + P)


def _truncated_start(
    problem: Problem, pts: Points, obj: _Objective, lifted: Solution
) -> np.ndarray:
    """A start at ``problem``'s width from a solution at a larger width (problem units): the
    top principal directions, as in `solve_numerical`'s docstring."""
    d, m = problem.width, pts.mult
    W, Hp, b = lifted.W, lifted.H_points, lifted.b
    if problem.features == "free":
        Z = (W @ Hp) * np.sqrt(m)
        U, S, Vt = np.linalg.svd(Z, full_matrices=False)
        k = min(d, S.size)
        W0 = np.zeros((problem.K, d))
        H0 = np.zeros((d, pts.P))
        W0[:, :k] = U[:, :k] * np.sqrt(S[:k])
        H0[:k] = (np.sqrt(S[:k])[:, None] * Vt[:k]) / np.sqrt(m)
        return _pack(problem, obj, W0, b, H0)
    U, _, _ = np.linalg.svd(Hp * np.sqrt(m), full_matrices=False)
    return _embed(problem, obj, W, b, Hp, U[:, : problem.d_eff])


def _projected_start(
    problem: Problem, pts: Points, obj: _Objective, lifted: Solution, rng: np.random.Generator
) -> np.ndarray:
    """A start from a random d'-dimensional projection of a larger-width solution (the rounding
    of an SDP solution by a random subspace, as in Goemans–Williamson)."""
    W, Hp, b = lifted.W, lifted.H_points, lifted.b
    D = Hp.shape[0]
    if problem.features == "free":
        Q, _ = np.linalg.qr(rng.standard_normal((D, problem.width)))
        return _pack(problem, obj, W @ Q, b, Q.T @ Hp)
    lifted_p = lifted.problem
    Bl = helmert(D, D - 1) if lifted_p.features == "layernorm" and lifted_p.centered else np.eye(D)
    Q, _ = np.linalg.qr(rng.standard_normal((Bl.shape[1], min(problem.d_eff, Bl.shape[1]))))
    return _embed(problem, obj, W, b, Hp, Bl @ Q)


def _embed(problem: Problem, obj: _Objective, W: np.ndarray, b: np.ndarray | None,
           Hp: np.ndarray, Ud: np.ndarray) -> np.ndarray:
    """LayerNorm: project the features on the orthonormal columns Ud, place them in the
    problem's feature space (centred: the Helmert basis of 1⊥) and renormalise onto the sphere."""
    d, k = problem.width, Ud.shape[1]
    B = helmert(d, k) if problem.centered else np.eye(d, k)
    H0 = B @ (Ud.T @ Hp)
    nrm = np.linalg.norm(H0, axis=0)
    small = nrm < 1e-8 * problem.r
    H0[:, small] = B[:, :1]  # a point with no component in the subspace: any feasible one
    nrm[small] = 1.0
    H0 = problem.r * H0 / nrm
    return _pack(problem, obj, W @ Ud @ B.T, b, H0)


def _pack(problem: Problem, obj: _Objective, W: np.ndarray, b: np.ndarray | None,
          H: np.ndarray) -> np.ndarray:
    if problem.loss == "mse":
        return H.ravel()  # (W, b) are eliminated
    return obj.pack(W, b, H)


def _at_width(work: Problem, width: int) -> Problem:
    return dataclasses.replace(
        work, width=width, radius=work.r if work.features == "layernorm" else None)


def _point(problem: Problem, pts: Points, obj: _Objective, x: np.ndarray) -> Solution:
    """The Solution (problem units, no rebalancing) at the solver variable x."""
    W, b, U = obj.split(x)
    H, _, _ = obj.features(U)
    if problem.loss == "mse":
        W, b, R = ridge_fit(problem, H, pts)
        fit, pen = mse_value(problem, W, H, b, R, pts)
    else:
        assert W is not None  # split() returns W for CE
        fit, pen = evaluate(problem, W, H, b, pts)
    return Solution(
        problem=problem, W=W, H_points=H, b=b, value=fit + pen, fit=fit, penalty=pen,
        geometry="numerical", method="numerical", points=pts,
    )


def _objective(problem: Problem, pts: Points) -> _Objective:
    _, wscale, bscale = _scales(problem)
    return _Objective(problem, pts, wscale=wscale, bscale=bscale)


def _relaxation(work: Problem, pts: Points, lift: int, seed: int, gtol: float,
                max_iter: int) -> Solution:
    """The problem at the lifted width, where the relaxation is tight (one start)."""
    lifted = _at_width(work, lift)
    obj = _objective(lifted, pts)
    rng = np.random.default_rng(seed)
    starts = [obj.init(rng)]
    if work.features == "free":
        starts.append(np.zeros_like(starts[0]))
    runs = [_lbfgs(obj, x0, gtol, max_iter, maxcor=20) for x0 in starts]
    x = min(runs, key=lambda r: r[1])[0]
    return _point(lifted, pts, obj, x)


def _descend(work: Problem, pts: Points, lifted: Solution, gtol: float,
             max_iter: int) -> np.ndarray:
    """A start by successive truncation: from the lifted width down to the problem's, one
    dimension at a time, re-optimising at each width (the optimum moves continuously more often
    than it jumps); at most DESCENT_STEPS intermediate widths."""
    cur = lifted
    top = lifted.problem.width
    steps = min(top - work.width, DESCENT_STEPS)  # at most DESCENT_STEPS widths, evenly spaced
    widths = sorted({round(w) for w in np.linspace(top, work.width, steps + 1)[1:-1]},
                    reverse=True)
    for w in widths:
        pw = _at_width(work, w)
        obj = _objective(pw, pts)
        x, _, _ = _lbfgs(obj, _truncated_start(pw, pts, obj, cur), gtol, max_iter, maxcor=20)
        cur = _point(pw, pts, obj, x)
    return _truncated_start(work, pts, _objective(work, pts), cur)


def _relaxation_rank(lifted: Solution, pts: Points) -> int:
    """Numerical rank of the relaxation's solution: of Z D^{1/2} (free) or of the features."""
    X = lifted.W @ lifted.H_points if lifted.problem.features == "free" else lifted.H_points
    sv = np.linalg.svd(X * np.sqrt(pts.mult), compute_uv=False)
    return int(np.sum(sv > 1e-5 * sv.max(initial=0.0))) if sv.size and sv[0] > 0 else 0


def _solve_numerical(
    problem: Problem, seed: int, n_starts: int, gtol: float, max_iter: int, pts: Points,
    max_starts: int, certify: bool, report: _Reporter,
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
    starts: list[tuple[str, np.ndarray]] = [("random", obj.init(rng)) for _ in range(n_starts)]
    if problem.features == "free":
        starts.append(("zero", np.zeros_like(starts[0][1])))
    lift = _lift_width(work, pts)
    lifted = None
    if lift is not None:
        report(f"relaxation at width {lift}", force=True)
        lifted = _relaxation(work, pts, lift, seed, gtol, max_iter)
        starts.append(("relaxation", _truncated_start(work, pts, obj, lifted)))
        if lift - work.width > 1:
            starts.append(("descent", _descend(work, pts, lifted, gtol, max_iter)))
        starts += [("projection", _projected_start(work, pts, obj, lifted, rng))
                   for _ in range(n_starts)]
    total = len(starts)

    def run(i: int, kind: str, x0: np.ndarray) -> tuple:
        def tick(it: int, f: float) -> None:
            report(f"start {i + 1}/{total} ({kind}), iteration {it}, J = {f:.10g}")

        out = _lbfgs(obj, x0, gtol, max_iter, maxcor=20, tick=tick)
        report(f"start {i + 1}/{total} ({kind}) done: J = {out[1]:.10g}", force=True)
        return out

    runs = [run(i, kind, x0) for i, (kind, x0) in enumerate(starts)]
    kinds = [kind for kind, _ in starts]
    first_round_s = time.perf_counter() - t0

    def hits() -> int:
        vbest = min(v for _, v, _ in runs)
        return int(sum(v <= vbest * (1 + SAME_VALUE_RTOL) for _, v, _ in runs))

    def best_point() -> tuple[Solution, int, int]:
        values = [v for _, v, _ in runs]
        best = int(np.argmin(values))
        if not math.isfinite(values[best]):
            raise RuntimeError(
                f"the solver found no finite objective value for {problem.to_dict()}")
        # Polish: restart from the best point with a longer memory; keep it only if better.
        x_pol, v_pol, it_pol = _lbfgs(obj, runs[best][0], gtol, max_iter, maxcor=50)
        x = x_pol if v_pol <= values[best] else runs[best][0]
        return _assemble(problem, work, t_bal, obj, pts, x), best, it_pol

    sol, best, it_pol = best_point()
    cert = _bound(sol, lifted, pts, t_bal) if certify else None
    if cert is not None and not cert[0] and lifted is not None:
        # the relaxation is not tight: more starts (random, and random projections of the
        # relaxation's solution) until the best value has been reached by MIN_HITS starts, or
        # max_starts ran, or about 8× the first round's time is spent
        budget = min(8.0 * first_round_s, EXTRA_BUDGET_S)
        per_start = first_round_s / len(runs)
        t_extra = time.perf_counter()
        v_before = sol.value
        total = max_starts
        while (len(runs) < max_starts and hits() < MIN_HITS
               and time.perf_counter() - t_extra + per_start <= budget):
            kind = "random" if len(runs) % 2 else "projection"
            x0 = obj.init(rng) if kind == "random" else _projected_start(
                work, pts, obj, lifted, rng)
            runs.append(run(len(runs), kind, x0))
            kinds.append(kind)
        if min(v for _, v, _ in runs) < v_before * (1 - SAME_VALUE_RTOL):
            sol, best, it_pol = best_point()
            cert = _bound(sol, lifted, pts, t_bal)
    values = [v for _, v, _ in runs]
    info = {
        "seed": seed, "n_starts": n_starts, "start_values": values, "start_kinds": kinds,
        "best_start": best, "best_kind": kinds[best], "best_hits": hits(),
        "polish_iterations": it_pol, "iterations": [it for _, _, it in runs],
        "time_s": time.perf_counter() - t0, "gtol": gtol, "lifted_width": lift,
        # MSE: W, b eliminated by their ridge solution; only the features are optimised
        "variables": "features" if problem.loss == "mse" else "W,b,features",
        "scales": {"value": ref, "W": wscale, "b": bscale, "rebalance": t_bal},
    }
    status: Status = "not_certified" if certify else "unknown"
    lower = None
    if certify and cert is None:
        info.update(lower_bound=None, relaxation_rank=None, certificate_rel_gap=None)
    if cert is not None:
        certified, lower, rank = cert
        status = "certified" if certified else "not_certified"
        info.update(lower_bound=lower, relaxation_rank=rank,
                    certificate_rel_gap=(sol.value - lower) / max(abs(sol.value), 1e-300))
    return dataclasses.replace(sol, info=info, status=status, lower_bound=lower)


def _assemble(problem: Problem, work: Problem, t_bal: float, obj: _Objective, pts: Points,
              x: np.ndarray) -> Solution:
    """The Solution of ``problem`` at the solver variable x of the (rebalanced) ``work``."""
    W, b, U = obj.split(x)
    H, _, _ = obj.features(U)
    if problem.loss == "mse":
        W, b, R = ridge_fit(work, H, pts)
        W, H = t_bal * W, H / t_bal
        fit, pen = mse_value(problem, W, H, b, R, pts)
    else:
        assert W is not None  # split() returns W for CE
        W, H = t_bal * W, H / t_bal
        if b is not None and problem.bias == "free":
            b = b - b.mean()  # CE is invariant to b + t·1; report the centred representative
        fit, pen = evaluate(problem, W, H, b, pts)
    check_finite(problem, fit + pen, W, H, b)
    return Solution(
        problem=problem, W=W, H_points=H, b=b, value=fit + pen, fit=fit, penalty=pen,
        geometry=classify_geometry(W, class_means(H, pts.counts)), method="numerical",
        points=pts, info={},
    )


def _bound(sol: Solution, lifted: Solution | None, pts: Points,
           t_bal: float) -> tuple[bool, float, int | None] | None:
    """(certified, lower bound, relaxation rank): the better of the dual bounds of THEORY §5 at
    the candidate and at the relaxation's solution (the relaxation does not depend on the width,
    so a bound from the lifted problem bounds this one). None if no bound can be formed."""
    bounds = []
    rank = None
    cand = _dual_certificate(sol, pts)
    if cand is not None and cand.valid:
        bounds.append(cand.lower_bound)
        rank = cand.relaxation_rank
    if lifted is not None:
        # the lifted solution is in the rebalanced units; map it back to the problem's
        p = sol.problem
        lp = dataclasses.replace(p, width=lifted.problem.width,
                                 radius=p.r if p.features == "layernorm" else None)
        back = dataclasses.replace(lifted, problem=lp, W=t_bal * lifted.W,
                                   H_points=lifted.H_points / t_bal)
        lc = _dual_certificate(back, pts)
        if lc is not None and lc.valid:
            bounds.append(lc.lower_bound)
        rank = _relaxation_rank(lifted, pts)
    if not bounds:
        return None
    lower = max(bounds)
    return (sol.value - lower) <= CERTIFY_RTOL * max(abs(sol.value), 1e-300), lower, rank


def _dual_certificate(sol: Solution, pts: Points):
    """The dual bound of THEORY §5 at ``sol`` (no solver; None if it cannot be formed)."""
    from .certificate import _certify_dual

    try:
        with np.errstate(all="ignore"):
            return _certify_dual(sol, pts, "class", CERTIFY_RTOL)
    except (ValueError, np.linalg.LinAlgError, FloatingPointError):
        return None


def solve(problem: Problem, method: str = "auto", seed: int = 0, *, progress: Progress = None,
          **kwargs: Any) -> Solution:
    """Global optimum of a UFM problem.

    ``method``: "auto" (closed form of THEORY §4/§11 where one exists, else numerical),
    "closed_form" (raises `ClosedFormUnavailable` where none exists) or "numerical" (always the
    multi-start solver; ``kwargs`` go to `solve_numerical`). ``progress`` (numerical only): True
    for progress lines on stderr, or a callable taking a line. The result's ``status`` says
    whether global optimality is proven ("closed_form", "certified") or not ("not_certified",
    with an :class:`UncertifiedOptimumWarning`).
    """
    if not isinstance(problem, Problem):
        raise TypeError(f"problem must be a ufm.Problem, got {type(problem).__name__}")
    if method == "closed_form":
        return closed_form(problem)  # solver options do not apply
    if method == "auto":
        if closed_form_reason(problem) is None:
            return closed_form(problem)
        return solve_numerical(problem, seed=seed, progress=progress, **kwargs)
    if method == "numerical":
        return solve_numerical(problem, seed=seed, progress=progress, **kwargs)
    raise ValueError(f"method must be 'auto', 'closed_form' or 'numerical', got {method!r}")


__all__ = ["ClosedFormUnavailable", "UncertifiedOptimumWarning", "solve", "solve_numerical"]
