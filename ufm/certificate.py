"""Convex lower bounds certifying global optimality (THEORY §5).

Point (class/group) level, data term L(Z) = (1/N) Σ_j Σ_k c_jk ℓ(z_j + b, k) over the logits
Z = W H_p (K×P) of the P points, D = diag(m_j):

- Free features: (λ_W/2)‖W‖² + (λ_H/2)‖H_p D^{1/2}‖² ≥ √(λ_Wλ_H)‖W H_p D^{1/2}‖_* (AM–GM on the
  balanced factorisation), so   min L(Z) + √(λ_Wλ_H)‖Z D^{1/2}‖_* (+ λ_b/2‖b‖²)
  is a lower bound, attained when width ≥ rank of the optimal Z (balanced classes: the weight is
  √n, i.e. c = √(nλ_Wλ_H)).
- LayerNorm: with Q = H_pᵀH_p, min_{W: WH_p = Z} ‖W‖² = tr(Z Q⁺ Zᵀ), so the SDP
  min L(Z) + (λ_W/2) tr(T) s.t. [[T, Z], [Zᵀ, Q]] ⪰ 0, diag(Q) = r²
  is a lower bound (the rank bound rank Q ≤ d' is dropped; centring only enters through d'), exact
  when d' ≥ rank(Q*).

Two ways to get the bound (``method``):

- ``"sdp"``: solve the program with cvxpy (imported only here, so ``import ufm`` stays light).
  The objective is scaled by 1/|value of the candidate| so that the solver tolerances are
  relative. ``lower_bound`` is the solver's primal value minus the duality-gap slack
  eps·(1 + |scaled value|) that both solvers' stopping rules guarantee, i.e. a bound on the dual
  objective; it is valid up to the solver's feasibility tolerance (also eps) when the status is
  optimal. Clarabel (interior point, accurate) for small programs, SCS (first order) for large.
- ``"dual"``: evaluate the Lagrange dual at a dual point built from the candidate — no solver,
  O(P³), so it scales to P in the thousands. Any dual-feasible point gives a lower bound:
  * LayerNorm: with multipliers Y = 2Λ for the off-diagonal block and ν for diag(Q) = r², the
    dual is  max −L*(Y) − r² Σ_j ν_j  s.t.  Diag(ν) ⪰ YᵀY/(2λ_W)  (Schur complement of the
    block [[λ_W/2 I, Λ], [Λᵀ, Diag ν]] ⪰ 0). We take Y = ∇L(Z_candidate) and ν_j =
    (A Q)_jj/r² with A = YᵀY/(2λ_W), Q = H_pᵀH_p (complementary slackness: (Diag ν − A)H_pᵀ = 0
    at a KKT point, where the bound equals the candidate's value), then raise ν by the most
    negative eigenvalue of Diag(ν) − A (plus a rounding margin) so that it is feasible.
  * Free features: max −L*(Y) s.t. ‖Y D^{-1/2}‖_2 ≤ √(λ_Wλ_H); Y = t∇L(Z) with the largest
    feasible t ≤ 1.
  * −L* in closed form: CE (1/N) Σ_j m_j H(q_j) with q_j = (N y_j + c_j)/m_j a distribution
    (the candidate's softmax); MSE Σ_j[mse const − y_jᵀȳ_j − N‖y_j‖²/(2m_j)]. A free bias needs
    Y1 = 0 (CE: q rebalanced so that Σ_j m_j q_j = class counts, by iterative proportional
    fitting; MSE: Y centred); a regularised bias adds −‖Y1‖²/(2λ_b).
  The bound is valid up to floating-point rounding, for any candidate; it is tight (gap → 0)
  exactly when the candidate is a global optimum of a tight relaxation.

The point-level bound is a bound for the sample-level problem because the point reduction is
exact for the nonconvex problem. ``level="sample"`` solves the same programs with one point per
sample (a group, whose samples must share a feature, stays one point) — a check, small N only.
"""

from __future__ import annotations

import math
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from .problem import Points, ce_fit_grad, mse_constant
from .ridge import ridge_fit

if TYPE_CHECKING:  # cvxpy is imported when an SDP certificate is computed
    import cvxpy as cp
from .solution import Solution
from .threads import single_thread_blas

# Interior point (Clarabel) forms a dense block of size ~(n(n+1)/2)² for an n×n PSD cone: time
# grows like n⁶ (measured here: n = 60: 4 s, 90: 88 s, 120: 280 s) and memory explodes past
# n ≈ 150; above this size use SCS (n = 160: 13 s).
CLARABEL_MAX_PSD = 60
SAMPLE_LEVEL_MAX_POINTS = 500  # one (K+P)-dimensional PSD block: a check for small N only
# method="auto": the SDP up to this block size n = K + P, above it the dual bound, followed by
# the SDP when the dual does not certify and the SDP is estimated to take ≤ AUTO_SDP_BUDGET_S
AUTO_SDP_MAX = 40
AUTO_SDP_BUDGET_S = 30.0
# Measured on this project's 2-core machine (one BLAS thread), seconds: (overhead, a, e) in
# overhead + a·nᵉ, n = K + P for the SDP (Clarabel n⁶, SCS n³) and n = P for the dual
_EST = {"CLARABEL": (0.3, 1.5e-10, 6.0), "SCS": (0.05, 3.3e-6, 3.0),
        "DUAL": (0.002, 4e-10, 3.0)}


def estimate_seconds(solver: str, n: int) -> float:
    """Rough size-based run time of a certificate: ``solver`` "CLARABEL" or "SCS" (n = K + P,
    the PSD block) or "DUAL" (n = P)."""
    c, a, e = _EST[solver]
    return c + a * float(n) ** e


@dataclass(frozen=True)
class Certificate:
    """Convex lower bound for a solution's problem.

    ``gap = value − lower_bound`` and ``rel_gap = gap / max(|value|, 1e-300)``. ``valid`` is
    False when the solver did not report an optimal status (the bound is then not trustworthy).
    ``exact`` says whether the relaxation is known to be tight at its solution (rank condition).
    ``certified`` is ``valid and rel_gap <= tolerance``. ``solver`` is "CLARABEL", "SCS" or
    "DUAL" (the dual bound of the module docstring).
    """

    value: float
    lower_bound: float
    gap: float
    rel_gap: float
    solver: str
    status: str
    solver_value: float
    tolerance: float
    solver_eps: float
    level: str
    num_points: int
    relaxation_rank: int
    exact: bool
    valid: bool
    time_s: float

    @property
    def certified(self) -> bool:
        return self.valid and self.rel_gap <= self.tolerance

    def to_dict(self) -> dict:
        d = {k: getattr(self, k) for k in self.__dataclass_fields__}
        d["certified"] = self.certified
        return d


def _data_term(solution: Solution, Zb: cp.Expression, pts: Points) -> cp.Expression:
    import cvxpy as cp

    p = solution.problem
    C, m, N = pts.counts, pts.mult, p.N
    if p.loss == "ce":
        lse = cp.log_sum_exp(Zb, axis=0)
        return (m @ lse - cp.sum(cp.multiply(C, Zb))) / N
    R = (Zb - C / m) @ np.diag(np.sqrt(m))
    return cp.sum_squares(R) / (2 * N) + mse_constant(pts, N)


def _numeric_rank(A: np.ndarray, rtol: float = 1e-5, atol: float = 0.0) -> int:
    """Number of singular values above max(rtol·σ_max, atol). The absolute floor matters when
    the optimum is 0 (standard UFM past its threshold): the solver's Z is then pure noise
    (1e-15..4e-9 measured), which a relative threshold alone would count as full rank."""
    s = np.linalg.svd(A, compute_uv=False)
    return int(np.sum(s > max(rtol * s.max(initial=0.0), atol, 1e-300)))


Progress = Callable[[str], None] | bool | None


def _reporter(progress: Progress) -> Callable[[str], None] | None:
    if progress is True:
        return lambda msg: print(msg, file=sys.stderr, flush=True)
    if progress is None or progress is False:
        return None
    if not callable(progress):
        raise ValueError(f"progress must be a callable, True, False or None, got {progress!r}")
    return progress


def _point_features(solution: Solution, pts: Points) -> np.ndarray:
    """Candidate feature of each point of ``pts`` (d × P) without expanding to samples."""
    sp = solution.points
    if sp.P == pts.P and np.array_equal(sp.assignment, pts.assignment):
        return solution.H_points
    first = np.full(pts.P, -1, dtype=np.int64)
    order = np.arange(pts.assignment.size)
    first[pts.assignment[::-1]] = order[::-1]  # first sample of each point
    return solution.H_points[:, sp.assignment[first]]


def certify(
    solution: Solution,
    level: str = "class",
    solver: str | None = None,
    tolerance: float = 1e-6,
    solver_eps: float = 1e-10,
    *,
    method: str = "auto",
    progress: Progress = None,
    verbose: bool = False,
) -> Certificate:
    """Lower-bound the optimum of ``solution.problem`` by its convex relaxation (THEORY §5).

    ``level``: "class" (point-level reduction: classes, or groups; exact for any class counts) or
    "sample" (one point per sample; groups stay one point).
    ``method``: "sdp" (cvxpy), "dual" (dual point from the candidate, no solver; scales to
    thousands of points), or "auto": the SDP while its PSD block K + P ≤ AUTO_SDP_MAX, else the
    dual — and then also the SDP if the dual does not certify and the SDP is estimated to take
    at most AUTO_SDP_BUDGET_S, keeping the higher bound; always the SDP when ``solver`` is
    given. The SDP needs cvxpy (``pip install 'deepcollapse[certify]'``); without it "auto"
    uses the dual bound and "sdp" raises one line naming the extra.
    ``solver``: "CLARABEL", "SCS" or None (automatic by size), for the SDP.
    ``progress``: True (lines on stderr), a callable taking a line, or None: before solving it
    gets the size and a size-based time estimate, afterwards the elapsed time.
    ``verbose``: passed to the SDP solver (its own iteration log).
    """
    p = solution.problem
    if level not in ("class", "sample"):
        raise ValueError(f"level must be 'class' or 'sample', got {level!r}")
    if method not in ("auto", "sdp", "dual"):
        raise ValueError(f"method must be 'auto', 'sdp' or 'dual', got {method!r}")
    if solver is not None and solver not in ("CLARABEL", "SCS"):
        raise ValueError(f"solver must be 'CLARABEL', 'SCS' or None, got {solver!r}")
    if solver is not None and method == "dual":
        raise ValueError("solver applies to method='sdp' only")
    report = _reporter(progress)
    pts = p.points if level == "class" else p.sample_points()
    if pts.P > SAMPLE_LEVEL_MAX_POINTS and level == "sample":
        raise ValueError(
            f"level='sample' has {pts.P} points (> {SAMPLE_LEVEL_MAX_POINTS}); its SDP does not "
            "scale: use level='class' (exact for any class counts)"
        )
    n = p.K + pts.P
    sdp_name = solver or ("CLARABEL" if n <= CLARABEL_MAX_PSD else "SCS")
    what = (f"SDP with a {n}×{n} PSD block" if p.features == "layernorm"
            else f"nuclear-norm program on a {p.K}×{pts.P} matrix") + f" via {sdp_name}"

    def run_sdp() -> Certificate:
        return _run(report, what, level, pts.P, estimate_seconds(sdp_name, n),
                    lambda: _certify_sdp(solution, pts, level, sdp_name, tolerance, solver_eps,
                                         verbose))

    def run_dual() -> Certificate:
        return _run(report, f"dual bound at the candidate ({pts.P}×{pts.P} eigenproblem)",
                    level, pts.P, estimate_seconds("DUAL", pts.P),
                    lambda: _certify_dual(solution, pts, level, tolerance))

    if method == "sdp" or (method == "auto" and solver is not None):
        return run_sdp()
    if method == "dual":
        return run_dual()
    # auto: the SDP for small blocks, else the dual; if that does not certify, the other one
    # too when affordable (the dual always is), keeping the higher valid bound
    if n <= AUTO_SDP_MAX and _have_cvxpy():
        try:
            first = run_sdp()
        except RuntimeError:  # the solver failed (e.g. values of 1e-196): the dual needs none
            return run_dual()
    else:
        first = run_dual()
    if first.certified:
        return first
    if first.solver == "DUAL":
        if estimate_seconds(sdp_name, n) > AUTO_SDP_BUDGET_S or not _have_cvxpy():
            return first
        try:
            second = run_sdp()
        except RuntimeError:
            return first
    else:
        second = run_dual()
    valid = [c for c in (first, second) if c.valid]
    return max(valid, key=lambda c: c.lower_bound) if valid else first


def _have_cvxpy() -> bool:
    """Is the SDP solver installed (the [certify] extra)? Without it "auto" uses the dual."""
    import importlib.util

    return importlib.util.find_spec("cvxpy") is not None


def _run(report: Callable[[str], None] | None, what: str, level: str, P: int, est: float,
         fn: Callable[[], Certificate]) -> Certificate:
    t0 = time.perf_counter()
    if report is not None:
        report(f"certificate: {what}, {level} level, {P} points; estimated "
               f"~{_fmt_seconds(est)}; solving…")
    cert = fn()
    if report is not None:
        report(f"certificate: done in {_fmt_seconds(time.perf_counter() - t0)} "
               f"(status {cert.status}, rel_gap {cert.rel_gap:.2e})")
    return cert


def _fmt_seconds(t: float) -> str:
    if t < 1:
        return f"{t:.2f} s"
    if t < 120:
        return f"{t:.0f} s"
    return f"{t / 60:.0f} min"


def _certify_sdp(
    solution: Solution, pts: Points, level: str, name: str, tolerance: float,
    solver_eps: float, verbose: bool,
) -> Certificate:
    from deepcollapse.output import require

    cp = require("cvxpy", "certify", "ufm.certify's SDP (method='dual' needs no solver)")

    p = solution.problem
    K, P = p.K, pts.P
    t0 = time.perf_counter()
    cons: list = []
    b = None if p.bias == "none" else cp.Variable(K)
    if p.features == "free":
        Z = cp.Variable((K, P))
        reg = np.sqrt(p.lam_W * p.lam_H) * cp.normNuc(Z @ np.diag(np.sqrt(pts.mult)))
    else:
        S = cp.Variable((K + P, K + P), PSD=True)
        Z, Q = S[:K, K:], S[K:, K:]
        cons.append(cp.diag(Q) == p.r**2)
        reg = 0.5 * p.lam_W * cp.trace(S[:K, :K])
    Zb = Z if b is None else Z + cp.reshape(b, (K, 1), order="F") @ np.ones((1, P))
    obj = _data_term(solution, Zb, pts) + reg
    if p.bias == "regularized":
        obj = obj + 0.5 * p.lam_b * cp.sum_squares(b)
    # Scale the objective to O(1) at the candidate so that absolute solver tolerances are relative.
    sigma = 1.0 / max(abs(solution.value), 1e-12)
    prob = cp.Problem(cp.Minimize(sigma * obj), cons)
    # Ask for solver_eps first; interior point on exponential cones sometimes stalls just short
    # of it (status optimal_inaccurate), so fall back once to the solver's standard 1e-8.
    # SCS (first order) is asked for 1e-8 at best: tighter costs far more iterations.
    first = solver_eps if name == "CLARABEL" else max(solver_eps, 1e-8)
    for eps in dict.fromkeys(max(first, e) for e in (first, 1e-9, 1e-8)):
        if name == "CLARABEL":
            opts = {"tol_gap_abs": eps, "tol_gap_rel": eps, "tol_feas": eps, "max_iter": 500}
        else:
            opts = {"eps_abs": eps, "eps_rel": eps, "max_iters": 100_000}
        try:
            with warnings.catch_warnings(), single_thread_blas():
                # an inaccurate solve is reported through `status` / `valid` instead
                warnings.simplefilter("ignore", UserWarning)
                prob.solve(solver=name, verbose=verbose, **opts)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # SolverError, or a panic inside the solver's native code
            raise RuntimeError(f"certificate solver {name} failed: "
                               f"{type(exc).__name__}: {exc}") from exc
        if prob.status == cp.OPTIMAL:
            break
    status = str(prob.status)
    primal = float(prob.value) / sigma if prob.value is not None else float("-inf")
    # Both solvers stop when |primal − dual| ≤ eps + eps·|objective|; the dual objective bounds
    # the optimum from below, so subtract that slack from the reported primal value.
    lb = primal - (eps + eps * abs(primal * sigma)) / sigma
    if p.features == "free":
        zval = np.zeros((K, P)) if Z.value is None else np.asarray(Z.value)
        rank = _numeric_rank(zval * np.sqrt(pts.mult), atol=1e-6 * math.sqrt(pts.mult.max()))
        dim = p.width
    else:
        qval = np.zeros((P, P)) if Q.value is None else np.asarray(Q.value)
        rank = _numeric_rank(qval, atol=1e-6 * p.r**2)
        dim = p.d_eff
    gap = solution.value - lb
    return Certificate(
        value=solution.value, lower_bound=lb, gap=gap,
        rel_gap=gap / max(abs(solution.value), 1e-300), solver=name, status=status,
        solver_value=primal, tolerance=tolerance, solver_eps=eps, level=level, num_points=P,
        relaxation_rank=rank,
        exact=rank <= dim, valid=status == cp.OPTIMAL, time_s=time.perf_counter() - t0,
    )


def _balanced_ce_gradient(Z0: np.ndarray, b: np.ndarray, C: np.ndarray, m: np.ndarray,
                          N: int) -> tuple[np.ndarray, np.ndarray]:
    """(Y, q) for a free bias: Y = ∇L(Z0 + b1ᵀ) with Y1 = 0 up to rounding of Y's own scale.

    The bias is re-optimised by Newton on the convex min_b L(Z0 + b1ᵀ) (its gradient Y1 is
    formed entry by entry without cancellation, so it vanishes to ~eps relative to Y even when Y
    is ~1e-198), then the remaining residual r = Y1 (Σ_k r_k = 0 since every column of Y sums to
    0) is removed by Y − r wᵀ with w_j = m_j/N, which keeps each column summing to 0.
    """
    b = b - b.mean()
    K = Z0.shape[0]
    best = None
    for _ in range(50):
        Zb = Z0 + b[:, None]
        _, G = ce_fit_grad(Zb, C, m)
        g = G.sum(axis=1) / N
        gn = float(np.abs(g).max())
        if best is not None and gn >= best[0]:
            break
        best = (gn, G, Zb)
        if gn <= 4 * np.finfo(float).eps * float(np.abs(G).sum()) / N:
            break
        q = _softmax_cols(Zb)
        Hm = (np.diag(q @ m) - (q * m) @ q.T) / N
        Hm += (np.trace(Hm) / K) * np.ones((K, K)) / K  # the 1-direction is flat
        b = b - np.linalg.solve(Hm, g)
    assert best is not None  # the first iteration always sets it
    _, G, Zb = best
    Y = G / N
    r = Y.sum(axis=1)
    Y = Y - np.outer(r, m / N)
    q = _softmax_cols(Zb) - np.outer(r, np.ones_like(m))  # = (N Y + C)/m, entrywise
    return Y, np.maximum(q, 0.0)


def _entropy_cols(q: np.ndarray) -> np.ndarray:
    """Entropy of each column of q, with the largest entry's term −(1 − δ)log1p(−δ) formed from
    δ = Σ of the other entries: near a one-hot q (margins of 455 at λ = 1e-200) that term is
    ≈ δ, which log(q_max) = log(1.0) would lose."""
    P = q.shape[1]
    cols = np.arange(P)
    imax = np.argmax(q, axis=0)
    rest = q.copy()
    rest[imax, cols] = 0.0
    delta = np.minimum(rest.sum(axis=0), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        ent = -np.sum(np.where(rest > 0, rest * np.log(rest), 0.0), axis=0)
        top = np.where(delta < 1.0, -(1.0 - delta) * np.log1p(-delta), 0.0)
    return ent + top


def _softmax_cols(Z: np.ndarray) -> np.ndarray:
    """softmax of each column, the small entries without rounding to the largest one."""
    E = np.exp(Z - Z.max(axis=0))
    return E / E.sum(axis=0)


def _neg_conjugate(p, C: np.ndarray, m: np.ndarray, N: int, Y: np.ndarray,
                   q: np.ndarray | None, pts: Points) -> float:
    """−L*(Y) (module docstring); for CE, q (K×P) are the distributions with Y = (m q − C)/N."""
    if p.loss == "ce":
        assert q is not None  # CE's dual point comes with its distributions
        return float(m @ _entropy_cols(q)) / N
    Ybar = C / m
    return mse_constant(pts, N) - float(np.sum(Y * Ybar)) - N * float(np.sum(Y**2 / m)) / 2


def _certify_dual(solution: Solution, pts: Points, level: str, tolerance: float) -> Certificate:
    p = solution.problem
    P, N = pts.P, p.N
    C, m = pts.counts, pts.mult
    t0 = time.perf_counter()
    eps = np.finfo(float).eps
    with single_thread_blas():
        Hp = _point_features(solution, pts)
        q = None
        if p.loss == "ce":
            Z = solution.W @ Hp
            if solution.b is not None:
                Z = Z + solution.b[:, None]
            if p.bias == "free":
                assert solution.b is not None  # a free bias is part of the solution
                Y, q = _balanced_ce_gradient(solution.W @ Hp, solution.b, C, m, N)
            else:
                Y = ce_fit_grad(Z, C, m)[1] / N  # (m q − C)/N, without cancellation
                q = _softmax_cols(Z)
        else:
            # any Y gives a valid bound; the ridge residual of the candidate's features is the
            # cancellation-free gradient (R·m/N) of the data term there
            _, _, R = ridge_fit(p, Hp, pts)
            Y = R * (m / N)
            if p.bias == "free":
                Y = Y - Y.mean(axis=1, keepdims=True)
        if p.features == "free":
            mu = math.sqrt(p.lam_W) * math.sqrt(p.lam_H)
            spec = float(np.linalg.norm(Y / np.sqrt(m), 2)) if Y.size else 0.0
            t = 1.0 if spec <= mu else mu / spec * (1 - 4 * eps)
            Y = t * Y
            if q is not None:
                q = t * q + (1 - t) * (C / m)
            bound = _neg_conjugate(p, C, m, N, Y, q, pts)
            shift = 0.0
            rank = _numeric_rank((solution.W @ Hp) * np.sqrt(m), atol=1e-6 * math.sqrt(m.max()))
            dim = p.width
        else:
            bound = _neg_conjugate(p, C, m, N, Y, q, pts)
            Ys = Y / math.sqrt(2 * p.lam_W)  # scaled first: YᵀY underflows at λ = 1e-200
            A = Ys.T @ Ys
            Qc = Hp.T @ Hp
            nu = np.einsum("ij,ji->i", A, Qc) / p.r**2
            S = np.diag(nu) - A
            ev = np.linalg.eigvalsh(S)
            # eigvalsh is backward stable: computed eigenvalues are within ~P·eps·‖S‖ of exact
            shift = max(0.0, -float(ev[0])) + 4 * P * eps * float(np.max(np.abs(ev)))
            bound -= p.r**2 * (float(nu.sum()) + P * shift)
            # rank of Q = HᵀH from the d × d matrix H Hᵀ (same nonzero eigenvalues; d ≪ P)
            eq = np.linalg.eigvalsh(Hp @ Hp.T)
            rank = int(np.sum(eq > max(1e-5 * eq.max(initial=0.0), 1e-6 * p.r**2)))
            dim = p.d_eff
        if p.bias == "regularized":
            bound -= float(np.sum((Y.sum(axis=1) / math.sqrt(2 * p.lam_b)) ** 2))
    lb = bound
    gap = solution.value - lb
    rel_gap = gap / max(abs(solution.value), 1e-300)
    valid = math.isfinite(lb)
    return Certificate(
        value=solution.value, lower_bound=lb, gap=gap, rel_gap=rel_gap, solver="DUAL",
        status="optimal" if valid else "failed", solver_value=lb, tolerance=tolerance,
        solver_eps=float(eps), level=level, num_points=P, relaxation_rank=rank,
        exact=bool(valid and rel_gap <= tolerance and rank <= dim), valid=valid,
        time_s=time.perf_counter() - t0,
    )
