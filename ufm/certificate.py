"""Convex lower bounds certifying global optimality (SPEC §5), solved with cvxpy.

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

The point-level bound is a bound for the sample-level problem because the point reduction is
exact for the nonconvex problem. ``level="sample"`` solves the same programs with one point per
sample (a group, whose samples must share a feature, stays one point) — a check, small N only.
The objective is scaled by 1/|value of the candidate| so that the solver tolerances are relative.
``lower_bound`` is the solver's primal value minus the duality-gap slack eps·(1 + |scaled value|)
that both solvers' stopping rules guarantee, i.e. a bound on the dual objective; it is valid up to
the solver's feasibility tolerance (also eps) when the status is optimal.
Clarabel (interior point, accurate) is used for small programs, SCS (first order) for large ones.
"""

from __future__ import annotations

import time
import warnings
from dataclasses import dataclass

import cvxpy as cp
import numpy as np

from .problem import Points, mse_constant
from .solution import Solution
from .threads import single_thread_blas

# Interior point (Clarabel) forms a dense block of size ~(n(n+1)/2)² for an n×n PSD cone, so
# memory explodes past n ≈ 150 (n = 210 exhausted 20 GB here); above this size use SCS.
CLARABEL_MAX_PSD = 120
SAMPLE_LEVEL_MAX_POINTS = 500  # one (K+P)-dimensional PSD block: a check for small N only


@dataclass(frozen=True)
class Certificate:
    """Convex lower bound for a solution's problem.

    ``gap = value − lower_bound`` and ``rel_gap = gap / max(|value|, 1e-12)``. ``valid`` is
    False when the solver did not report an optimal status (the bound is then not trustworthy).
    ``exact`` says whether the relaxation is known to be tight at its solution (rank condition).
    ``certified`` is ``valid and rel_gap <= tolerance``.
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
    p = solution.problem
    C, m, N = pts.counts, pts.mult, p.N
    if p.loss == "ce":
        lse = cp.log_sum_exp(Zb, axis=0)
        return (m @ lse - cp.sum(cp.multiply(C, Zb))) / N
    R = (Zb - C / m) @ np.diag(np.sqrt(m))
    return cp.sum_squares(R) / (2 * N) + mse_constant(pts, N)


def _numeric_rank(A: np.ndarray, rtol: float = 1e-5) -> int:
    s = np.linalg.svd(A, compute_uv=False)
    return int(np.sum(s > rtol * max(s.max(initial=0.0), 1e-300)))


def certify(
    solution: Solution,
    level: str = "class",
    solver: str | None = None,
    tolerance: float = 1e-6,
    solver_eps: float = 1e-10,
) -> Certificate:
    """Lower-bound the optimum of ``solution.problem`` by its convex relaxation.

    ``level``: "class" (point-level reduction: classes, or groups; exact for any class counts) or
    "sample" (one point per sample; groups stay one point).
    ``solver``: "CLARABEL", "SCS" or None (automatic by size).
    """
    p = solution.problem
    if level not in ("class", "sample"):
        raise ValueError(f"level must be 'class' or 'sample', got {level!r}")
    pts = p.points if level == "class" else p.sample_points()
    if pts.P > SAMPLE_LEVEL_MAX_POINTS:
        raise ValueError(
            f"level='sample' has {pts.P} points (> {SAMPLE_LEVEL_MAX_POINTS}); its SDP does not "
            "scale: use level='class' (exact for any class counts)"
        )
    K, P = p.K, pts.P
    t0 = time.perf_counter()
    cons: list = []
    if p.bias == "none":
        b = None
    else:
        b = cp.Variable(K)
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
    name = solver or ("CLARABEL" if K + P <= CLARABEL_MAX_PSD else "SCS")
    if name not in ("CLARABEL", "SCS"):
        raise ValueError(f"solver must be 'CLARABEL', 'SCS' or None, got {solver!r}")
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
                prob.solve(solver=name, **opts)
        except cp.error.SolverError as exc:
            raise RuntimeError(f"certificate solver {name} failed: {exc}") from exc
        if prob.status == cp.OPTIMAL:
            break
    status = str(prob.status)
    primal = float(prob.value) / sigma if prob.value is not None else float("-inf")
    # Both solvers stop when |primal − dual| ≤ eps + eps·|objective|; the dual objective bounds
    # the optimum from below, so subtract that slack from the reported primal value.
    lb = primal - (eps + eps * abs(primal * sigma)) / sigma
    if p.features == "free":
        rank = _numeric_rank(np.asarray(Z.value) * np.sqrt(pts.mult))
        dim = p.width
    else:
        rank = _numeric_rank(np.asarray(Q.value))
        dim = p.d_eff
    gap = solution.value - lb
    return Certificate(
        value=solution.value, lower_bound=lb, gap=gap,
        rel_gap=gap / max(abs(solution.value), 1e-12), solver=name, status=status,
        solver_value=primal, tolerance=tolerance, solver_eps=eps, level=level, num_points=P,
        relaxation_rank=rank,
        exact=rank <= dim, valid=status == cp.OPTIMAL, time_s=time.perf_counter() - t0,
    )
