"""Closed-form optima of THEORY §4 (balanced classes; label-pure groups) and §11 (shared label
distribution).

LayerNorm UFM (radius r, λ = λ_W, d' = width − 1 centred / width plain sphere):
- CE, d' ≥ K−1, any bias: simplex ETF of radius r, w_k = (s*/r) μ_k, b = 0, with s* the root in
  (0, r/(Kλ)] of λs = r e^{−u}/(1 + (K−1)e^{−u}), u = K r s/(K−1);
  value log(1 + (K−1)e^{−u*}) + λKs*²/2 (root found for any λ in 1e-300..1e300,
  see `ce_layernorm_u`).
- MSE, no bias: d' ≥ K orthogonal frame, value Kλ/(2(r² + Kλ)); d' = m < K an equal-norm tight
  frame (harmonic frame), value λm²/(2K(r² + mλ)) + (K − m)/(2K).
- MSE, free bias, d' ≥ K−1: simplex ETF, b = 1/K, value λ(K−1)²/(2K(r² + (K−1)λ)).
- MSE, regularised bias: ETF while λ_b ≤ (K−1)λ/r², value
  λ_b/(2K(1+λ_b)) + λ(K−1)²/(2K(r² + (K−1)λ)); else equiangular with cosine −a/r² (a = λ/λ_b),
  d' ≥ K, value Kλ/(2(r² + a + Kλ)).
- Every group with the same label distribution p (THEORY §11 case (i), any class totals, any
  d' ≥ 1): one shared feature; see `_shared_closed_form`.
- Every group followed by a single label (THEORY §11 case (ii)): for fixed (W, b) the best
  feature of a point depends only on its label, so all points of a class share one feature and
  the problem is the classic one with the class totals as class sizes; the closed forms above
  apply when those totals are equal.
For MSE, W and b are the exact ridge solution for the class means.

Standard UFM, c = √(nλ_Wλ_H), γ = √(nλ_H/λ_W) (so h_k = w_k/γ):
- CE (any bias; b = 0): Kc ≥ 1 → W = H = 0, value log K; else (d ≥ K−1) logits u*·P_K with
  u* = log((1 − (K−1)c)/c), value −log(1 − (K−1)c) + (K−1)c·u*.
- MSE no bias: a = max(0, 1 − Kc), logits a·I (d ≥ K when a > 0), value Kc(1 − Kc/2) or ½.
- MSE free bias: logits a·P_K (d ≥ K−1), b = 1/K, value (K−1)c(1 − Kc/2) or (K−1)/(2K).
"""

from __future__ import annotations

import math
import sys

import numpy as np
from scipy.optimize import brentq
from scipy.special import lambertw

from .problem import Problem, check_finite, evaluate, mse_constant
from .ridge import mse_value, ridge_fit
from .solution import Solution


class ClosedFormUnavailable(ValueError):
    """Raised when THEORY §4/§11 give no closed form for a problem."""


def helmert(d: int, k: int) -> np.ndarray:
    """First k columns of the Helmert basis: orthonormal, each orthogonal to 1 (d × k, k ≤ d−1)."""
    U = np.zeros((d, k))
    for j in range(1, k + 1):
        U[:j, j - 1] = 1.0
        U[j, j - 1] = -float(j)
        U[:, j - 1] /= math.sqrt(j * (j + 1))
    return U


def _basis(problem: Problem, k: int) -> np.ndarray:
    """k orthonormal directions available to features (centred subspace for centred LN)."""
    d = problem.width
    if problem.features == "layernorm" and problem.centered:
        return helmert(d, k)
    return np.eye(d, k)


def _etf_coords(K: int) -> np.ndarray:
    """(K−1) × K coordinates with Gram P_K (columns: ETF scaled by √((K−1)/K))."""
    return helmert(K, K - 1).T


def _harmonic_frame(K: int, m: int) -> np.ndarray:
    """m × K real harmonic frame: orthonormal rows, every column of squared norm m/K (m < K)."""
    k = np.arange(K)
    rows = []
    if m % 2 == 1:
        rows.append(np.full(K, 1.0 / math.sqrt(K)))
    for j in range(1, m // 2 + 1):
        rows.append(np.sqrt(2.0 / K) * np.cos(2 * np.pi * j * k / K))
        rows.append(np.sqrt(2.0 / K) * np.sin(2 * np.pi * j * k / K))
    return np.array(rows)


def ce_layernorm_u(K: int, r: float, lam: float) -> float:
    """u* = K r s*/(K−1) of the LayerNorm-CE closed form, for any λ > 0 (THEORY §4).

    Stationarity λs = r/(e^u + K − 1) with s = (K−1)u/(K r) reads u(e^u + K − 1) = ρ,
    ρ = K r²/((K−1)λ). Its left side increases from 0 to ∞, so the root is unique. We solve
    log u + u + log1p((K−1)e^{−u}) = log ρ in t = log u: ρ is formed in logs (no overflow for
    λ = 1e-300 or r² > 1e308), and the bracket follows from u + max(0, log K − u) ≤
    log(e^u + K − 1) ≤ u + log K:
      t_hi = min(log ρ − log K, log log ρ (when log ρ ≥ 1)),  t_lo = min(0, log ρ − 1 − log K).
    Asymptotics: λ → ∞: u* = ρ/K (1 + O(ρ)), s* → r/(Kλ); λ → 0: u* = log ρ − log log ρ + o(1),
    e.g. u* ≈ 455 at λ = 1e-200 (K = 10, r = 8). A final Newton step on the log equation restores
    full relative precision in u.
    """
    if not (K >= 2 and r > 0 and lam > 0 and math.isfinite(r) and math.isfinite(lam)):
        raise ValueError(f"need K >= 2 and finite r, λ > 0; got K={K}, r={r}, λ={lam}")
    L = math.log(K) + 2 * math.log(r) - math.log(K - 1) - math.log(lam)
    logk = math.log(K)

    def F(u: float) -> float:
        return math.log(u) + u + math.log1p((K - 1) * math.exp(-u)) - L

    def G(t: float) -> float:  # F(e^t) with log u = t exactly: no log(0) when e^t underflows
        u = math.exp(t)
        return t + u + math.log1p((K - 1) * math.exp(-u)) - L

    t_hi = L - logk
    if L >= 1:
        t_hi = min(t_hi, math.log(L))
    t_lo = min(0.0, L - 1 - logk)
    # G' ≥ 1, so widening by 1 on each side gives a sign margin of 1 against rounding
    t = brentq(G, t_lo - 1.0, t_hi + 1.0, xtol=1e-15, rtol=4 * np.finfo(float).eps, maxiter=400)
    u = math.exp(t)
    if u < sys.float_info.min:  # ρ below float64's range (r = 1e-300): u* = ρ/K underflows
        return u
    for _ in range(2):  # Newton on F(u) = 0 (F' = 1/u + 1/(1 + (K−1)e^{−u}) > 0)
        du = F(u) / (1.0 / u + 1.0 / (1.0 + (K - 1) * math.exp(-u)))
        if not math.isfinite(du):
            break
        u = max(u - du, 0.5 * u)
    return u


def ce_layernorm_s(K: int, r: float, lam: float) -> float:
    """s* = (K−1)u*/(K r): the classifier row norm of the LayerNorm-CE optimum (THEORY §4);
    the root in (0, r/(Kλ)] of λs = r e^{−u}/(1 + (K−1)e^{−u}), u = K r s/(K−1)."""
    return (K - 1) * ce_layernorm_u(K, r, lam) / (K * r)


def ce_layernorm_value(K: int, r: float, lam: float) -> float:
    """Optimal value log(1 + (K−1)e^{−u*}) + λK s*²/2 (THEORY §4): → log K as λ → ∞ (as
    log K − r²/(2Kλ)), → 0 as λ → 0."""
    u = ce_layernorm_u(K, r, lam)
    s = (K - 1) * u / (K * r)
    return math.log1p((K - 1) * math.exp(-u)) + lam * K * s * s / 2


def _omega(x: np.ndarray) -> np.ndarray:
    """ω(x) = W₀(eˣ) (the root of w + log w = x), without forming eˣ for large x."""
    x = np.asarray(x, dtype=np.float64)
    small = x < 700
    w = np.where(small, lambertw(np.exp(np.minimum(x, 700.0))).real,
                 x - np.log(np.maximum(x, 1.0)))
    pos = w > 0
    for _ in range(3):  # Newton polish: (w + log w − x)·w/(1 + w)
        wp = w[pos]
        w[pos] = wp - (wp + np.log(wp) - x[pos]) * wp / (1.0 + wp)
    return w


def _shared_log_q(A: float, p: np.ndarray, mu: float) -> np.ndarray:
    """y_k = log q_k solving e^y + μ(y + A) = p_k for each k (THEORY §11, case (i)).

    With c = p_k − μA: c ≤ 0 (always for p_k = 0) gives y = −a − ω(−a − log μ), a = −c/μ (so
    e^y = −μ(y + A)); c > 0 gives Newton from log c, where h(y) = e^y + μy − c is convex,
    increasing and h(log c) = μ log c ≤ 0 (c ≤ 1), so the iterates decrease to the root after
    the first step.
    """
    c = p - mu * A
    y = np.empty_like(p)
    neg = c <= 0
    if neg.any():
        a = -c[neg] / mu
        y[neg] = -a - _omega(-a - math.log(mu))
    pos = ~neg
    if pos.any():
        cp = c[pos]
        yp = np.log(cp)
        for _ in range(100):
            ey = np.exp(yp)
            step = (ey + mu * yp - cp) / (ey + mu)
            yp = yp - step
            if np.all(np.abs(step) <= 4e-16 * np.maximum(1.0, np.abs(yp))):
                break
        y[pos] = yp
    return y


def shared_ce_logits(p: np.ndarray, mu: float) -> np.ndarray:
    """argmin_z F(z) = lse(z) − pᵀz + (μ/2)‖z‖² for a distribution p (THEORY §11, case (i)).

    F is μ-strongly convex; stationarity softmax(z) + μz = p gives Σz = 0 and z = (p − q)/μ
    with q = softmax(z). With A = lse(z) and y_k = z_k − A = log q_k, each label solves the
    scalar monotone equation e^{y_k} + μ(y_k + A) = p_k (`_shared_log_q`), and A is the root of
    Σ_k z_k = 0, i.e. ψ(A) = A + mean_k y_k(A) = 0 (ψ' = 1 − mean μ/(q_k + μ) > 0, ≈ 1 for small
    μ), or equivalently of log Σ_k e^{y_k(A)} = 0 (slope ≈ −1 for large μ; the first form is
    flat there, the second flat for small μ, so each is used on its side of μ = 1). A ≥ log K
    since Σz = 0. Working per label keeps full relative precision from μ = 1e-200
    (z → log p + const, and ≈ A + log(μ log(1/μ)) for labels with p_k = 0) to μ = 1e20
    (z → (p − 1/K)/μ), where a joint Newton step would drown in the rounding of q − p.
    """
    p = np.asarray(p, dtype=np.float64)
    K = p.size

    def root_fn(A: float) -> float:  # increasing in A
        y = _shared_log_q(A, p, mu)
        if mu < 1.0:
            return float(A + y.mean())
        ym = y.max()
        return -float(ym + np.log(np.exp(y - ym).sum()))

    lo = math.log(K)
    step = 1.0
    hi = lo + step
    while root_fn(hi) < 0:
        lo, step = hi, 2 * step
        hi = lo + step
    A = brentq(root_fn, lo, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)
    z = _shared_log_q(A, p, mu) + A
    if mu >= 1.0:
        # the λ → ∞ side: z = (p − q)/μ is tiny and better formed from q directly
        q = np.exp(z - A)
        z = (p - q / q.sum()) / mu
    return z


def shared_distribution(problem: Problem) -> np.ndarray | None:
    """p when every point (group) has the same label distribution c_g/m_g = p, else None."""
    C, m = problem.points.counts, problem.points.mult
    # exact integer test: c_g m_0 = c_0 m_g for every g
    if np.array_equal(C * m[0], C[:, :1] * m[None, :]):
        return C[:, 0] / m[0]
    return None


def closed_form_reason(problem: Problem) -> str | None:
    """None when a closed form exists, else why not."""
    p = problem
    if p.features == "layernorm" and shared_distribution(p) is not None:
        return None  # THEORY §11 case (i): one shared feature, any class totals
    if not p.balanced:
        return "classes are imbalanced"
    if not p.groups_label_pure:
        return ("groups tie samples of different labels (a closed form exists only when every "
                "group has the same label distribution, with LayerNorm features)")
    K, dp = p.K, p.d_eff
    if p.features == "layernorm":
        if p.loss == "ce":
            return None if dp >= K - 1 else f"feature dimension {dp} < K−1 = {K - 1}"
        if p.bias == "none":
            return None
        if p.bias == "free" or p.lam_b <= (K - 1) * p.lam_W / p.r**2:
            return None if dp >= K - 1 else f"feature dimension {dp} < K−1 = {K - 1}"
        return None if dp >= K else f"feature dimension {dp} < K = {K} (equiangular regime)"
    c = _c(p)
    if K * c >= 1:
        return None if (p.loss == "ce" or p.bias != "regularized") else "MSE with regularised bias"
    if p.loss == "ce":
        return None if dp >= K - 1 else f"width {dp} < K−1 = {K - 1}"
    if p.bias == "regularized":
        return "MSE with regularised bias"
    need = K if p.bias == "none" else K - 1
    return None if dp >= need else f"width {dp} < {need}"


def _c(p: Problem, n: float | None = None) -> float:
    """c = √(nλ_Wλ_H), as a product of square roots (λ_Wλ_H underflows for λ ~ 1e-200)."""
    n = float(p.counts[0]) if n is None else n
    return math.sqrt(n) * math.sqrt(p.lam_W) * math.sqrt(p.lam_H)


def reference_value(problem: Problem) -> float:
    """A positive scale for the optimal value, for the solver's objective scaling.

    The THEORY §4 value of the balanced problem with the same K, width, λs and N/K samples per
    class (dimension conditions ignored), raised to the label-mixing floor: for CE
    (1/N) Σ_g m_g H(c_g/m_g) (no shared feature beats the conditional entropy), for MSE
    `mse_constant`. Not a bound in general; it sets the order of magnitude from λ = 1e-200
    (values ~1e-196) to λ = 1e20 (values → log K).
    """
    p = problem
    K, lam = p.K, p.lam_W
    if p.features == "layernorm":
        r2 = p.r**2
        if p.loss == "ce":
            v = ce_layernorm_value(K, p.r, lam)
        elif p.bias == "none":
            v = K * lam / (2 * (r2 + K * lam))
        elif p.bias == "free" or p.lam_b <= (K - 1) * lam / r2:
            v = lam * (K - 1) ** 2 / (2 * K * (r2 + (K - 1) * lam))
        else:
            v = K * lam / (2 * (r2 + lam / p.lam_b + K * lam))
    else:
        c = _c(p, p.N / K)
        if p.loss == "ce":
            v = math.log(K) if K * c >= 1 else (
                -math.log1p(-(K - 1) * c) + (K - 1) * c * math.log((1 - (K - 1) * c) / c))
        elif p.bias == "none":
            v = K * c * (1 - K * c / 2) if K * c < 1 else 0.5
        else:
            v = (K - 1) * c * (1 - K * c / 2) if K * c < 1 else (K - 1) / (2 * K)
    C, m = p.points.counts, p.points.mult
    if p.loss == "ce":
        Pr = C / m
        with np.errstate(divide="ignore", invalid="ignore"):
            ent = -np.sum(np.where(Pr > 0, Pr * np.log(Pr), 0.0), axis=0)
        floor = float(m @ ent) / p.N
    else:
        floor = mse_constant(p.points, p.N)
    return max(v, floor, 1e-300)


def closed_form(problem: Problem) -> Solution:
    """The THEORY §4/§11 optimum; raises ClosedFormUnavailable where none exists."""
    reason = closed_form_reason(problem)
    if reason is not None:
        raise ClosedFormUnavailable(f"no closed form for this problem: {reason}")
    p = problem
    pvec = shared_distribution(p) if p.features == "layernorm" else None
    if pvec is not None:
        return _shared_closed_form(p, pvec)
    K, r, lam = p.K, p.r, p.lam_W
    bvec = None if p.bias == "none" else np.zeros(K)
    info: dict = {}
    if p.features == "layernorm":
        if p.loss == "ce":
            M = r * math.sqrt(K / (K - 1)) * _basis(p, K - 1) @ _etf_coords(K)
            u = ce_layernorm_u(K, r, lam)
            s = (K - 1) * u / (K * r)
            W, geometry = (s / r) * M.T, "simplex_etf"
            fv = math.log1p((K - 1) * math.exp(-u)) + lam * K * s**2 / 2
            info.update(s_star=s, u_star=u, formula_value=fv)
        elif p.bias == "none":
            if p.d_eff >= K:
                M, geometry = r * _basis(p, K), "orthogonal_frame"
                info["formula_value"] = K * lam / (2 * (r**2 + K * lam))
            else:
                m = p.d_eff
                M = r * math.sqrt(K / m) * _basis(p, m) @ _harmonic_frame(K, m)
                geometry = "tight_frame"
                fv = lam * m**2 / (2 * K * (r**2 + m * lam)) + (K - m) / (2 * K)
                info["formula_value"] = fv
        elif p.bias == "free" or p.lam_b <= (K - 1) * lam / r**2:
            M = r * math.sqrt(K / (K - 1)) * _basis(p, K - 1) @ _etf_coords(K)
            geometry = "simplex_etf"
            fv = lam * (K - 1) ** 2 / (2 * K * (r**2 + (K - 1) * lam))
            if p.bias == "regularized":
                fv += p.lam_b / (2 * K * (1 + p.lam_b))
            info["formula_value"] = fv
        else:
            a = lam / p.lam_b
            cos = -a / r**2
            coords = np.vstack([
                math.sqrt(r**2 * (1 - cos)) * _etf_coords(K),
                np.full((1, K), math.sqrt(r**2 * (1 + (K - 1) * cos) / K)),
            ])
            M, geometry = _basis(p, K) @ coords, "equiangular"
            info.update(cosine=cos, formula_value=K * lam / (2 * (r**2 + a + K * lam)))
        Hp = M[:, _point_labels(p)]
    else:
        n = int(p.counts[0])
        c = _c(p)
        gamma = math.sqrt(n) * math.sqrt(p.lam_H) / math.sqrt(lam)
        d = p.width
        info["c"] = c
        if p.loss == "ce":
            if K * c >= 1:
                W, M, geometry = np.zeros((K, d)), np.zeros((d, K)), "zero"
                info["formula_value"] = math.log(K)
            else:
                u = math.log((1 - (K - 1) * c) / c)
                E = (_basis(p, K - 1) @ _etf_coords(K)).T  # K×d, E Eᵀ = P_K
                W, M, geometry = math.sqrt(u * gamma) * E, math.sqrt(u / gamma) * E.T, "simplex_etf"
                info.update(u_star=u, formula_value=-math.log1p(-(K - 1) * c) + (K - 1) * c * u)
        else:
            a = max(0.0, 1 - K * c)
            if p.bias == "none":
                E = _basis(p, K).T if a > 0 else np.zeros((K, d))
                geometry = "orthogonal_frame" if a > 0 else "zero"
                info["formula_value"] = K * c * (1 - K * c / 2) if a > 0 else 0.5
            else:
                E = (_basis(p, K - 1) @ _etf_coords(K)).T if a > 0 else np.zeros((K, d))
                geometry = "simplex_etf" if a > 0 else "zero"
                bvec = np.full(K, 1.0 / K)
                info["formula_value"] = (
                    (K - 1) * c * (1 - K * c / 2) if a > 0 else (K - 1) / (2 * K)
                )
            W, M = math.sqrt(a * gamma) * E, math.sqrt(a / gamma) * E.T
        Hp = M[:, _point_labels(p)]
    R = None
    if p.loss == "mse":
        # W, b: the exact ridge solution for these features (for free features it equals the
        # formula's classifier); the fit comes from the cancellation-free residual
        W, bvec, R = ridge_fit(p, Hp, p.points)
    return _solution(p, W, Hp, bvec, R, geometry, info)


def _solution(
    p: Problem,
    W: np.ndarray,
    Hp: np.ndarray,
    bvec: np.ndarray | None,
    R: np.ndarray | None,
    geometry: str,
    info: dict,
) -> Solution:
    """The closed-form Solution, its value evaluated (MSE: from the ridge residual R)."""
    if p.loss == "mse":
        assert R is not None  # every MSE closed form comes with its ridge residual
        fit, pen = mse_value(p, W, Hp, bvec, R, p.points)
    else:
        fit, pen = evaluate(p, W, Hp, bvec, p.points)
    check_finite(p, fit + pen, W, Hp, bvec)
    return Solution(
        problem=p, W=W, H_points=Hp, b=bvec, value=fit + pen, fit=fit, penalty=pen,
        geometry=geometry, method="closed_form", points=p.points, info=info,
        status="closed_form", lower_bound=fit + pen,
    )


def _point_labels(p: Problem) -> np.ndarray:
    """Label of each (label-pure) point."""
    return np.argmax(p.points.counts, axis=0)


def _shared_closed_form(p: Problem, pvec: np.ndarray) -> Solution:
    """THEORY §11 case (i): every group has the same label distribution p (LayerNorm features).

    For fixed (W, b) each group minimises the same function of its feature, so one feature h
    (any point of the sphere) serves all groups, and the data term is Σ_k p_k ℓ(z, k) with
    z = W h + b. The cheapest W with W h = a is a hᵀ/r² (‖W‖² = ‖a‖²/r²), and splitting
    z = a + b optimally gives the penalty (μ_eff/2)‖z‖², μ = λ/r², μ_eff = μ (no bias),
    μλ_b/(μ + λ_b) (regularised bias, b = μz/(μ + λ_b)), 0 (free bias, W = 0, b = z). So:
    - CE: z = argmin lse(z) − pᵀz + (μ_eff/2)‖z‖² (`shared_ce_logits`; softmax(z) + μ_eff z = p),
      value −Σ p_k log softmax(z)_k + (μ_eff/2)‖z‖²; free bias: value H(p), b = log p.
    - MSE: z = p/(1 + μ_eff), value ½(1 − ‖p‖²) + μ_eff‖p‖²/(2(1 + μ_eff)); free bias
      ½(1 − ‖p‖²).
    The optimum does not depend on the width (any d' ≥ 1) or on the group sizes, and the group
    features are collapsed to one point: Gram r²11ᵀ.
    """
    r, lam = p.r, p.lam_W
    P = p.points.P
    mu = lam / r**2
    if p.bias == "regularized":
        mu_eff = lam * p.lam_b / (p.lam_b * r**2 + lam)
        split_w = 1.0 / (1.0 + mu / p.lam_b)  # share of z carried by W h
    elif p.bias == "none":
        mu_eff, split_w = mu, 1.0
    else:
        mu_eff, split_w = 0.0, 0.0
    h = r * _basis(p, 1)[:, 0]
    Hp = np.repeat(h[:, None], P, axis=1)
    info: dict = {"distribution": pvec, "mu_eff": mu_eff}
    bvec: np.ndarray | None
    if p.loss == "ce":
        if p.bias == "free":
            z = np.log(pvec)
            z -= z.mean()
        else:
            z = shared_ce_logits(pvec, mu_eff)
        W = np.outer(split_w * z, h) / r**2
        bvec = None if p.bias == "none" else (1.0 - split_w) * z
        zs = z - z.max()
        logq = zs - np.log(np.exp(zs).sum())
        fv = -float(np.sum(np.where(pvec > 0, pvec * logq, 0.0))) + 0.5 * mu_eff * float(z @ z)
        info.update(logits=z)
    else:
        W, bvec, R = ridge_fit(p, Hp, p.points)
        pp = float(pvec @ pvec)
        fv = 0.5 * (1 - pp) + (mu_eff * pp / (2 * (1 + mu_eff)) if p.bias != "free" else 0.0)
    info["formula_value"] = fv
    return _solution(p, W, Hp, bvec, R if p.loss == "mse" else None, "shared_feature", info)
