"""Closed-form optima of SPEC §4 (balanced classes; groups allowed only when label-pure).

LayerNorm UFM (radius r, λ = λ_W, d' = width − 1 centred / width plain sphere):
- CE, d' ≥ K−1, any bias: simplex ETF of radius r, w_k = (s*/r) μ_k, b = 0, with s* the root in
  (0, r/(Kλ)] of λs = r e^{−u}/(1 + (K−1)e^{−u}), u = K r s/(K−1);
  value log(1 + (K−1)e^{−u*}) + λKs*²/2.
- MSE, no bias: d' ≥ K orthogonal frame, value Kλ/(2(r² + Kλ)); d' = m < K an equal-norm tight
  frame (harmonic frame), value (λ/2)[m²/(K(r² + mλ)) + (K−m)/(Kλ)].
- MSE, free bias, d' ≥ K−1: simplex ETF, b = 1/K, value λ(K−1)²/(2K(r² + (K−1)λ)).
- MSE, regularised bias: ETF while λ_b ≤ (K−1)λ/r², value
  λ_b/(2K(1+λ_b)) + λ(K−1)²/(2K(r² + (K−1)λ)); else equiangular with cosine −a/r² (a = λ/λ_b),
  d' ≥ K, value Kλ/(2(r² + a + Kλ)).
For MSE, W and b are the exact ridge solution for the class means.

Standard UFM, c = √(nλ_Wλ_H), γ = √(nλ_H/λ_W) (so h_k = w_k/γ):
- CE (any bias; b = 0): Kc ≥ 1 → W = H = 0, value log K; else (d ≥ K−1) logits u*·P_K with
  u* = log((1 − (K−1)c)/c), value −log(1 − (K−1)c) + (K−1)c·u*.
- MSE no bias: a = max(0, 1 − Kc), logits a·I (d ≥ K when a > 0), value Kc(1 − Kc/2) or ½.
- MSE free bias: logits a·P_K (d ≥ K−1), b = 1/K, value (K−1)c(1 − Kc/2) or (K−1)/(2K).
"""

from __future__ import annotations

import math

import numpy as np
from scipy.optimize import brentq

from .problem import Problem, evaluate
from .ridge import ridge
from .solution import Solution


class ClosedFormUnavailable(ValueError):
    """Raised when SPEC §4 gives no closed form for a problem."""


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


def ce_layernorm_s(K: int, r: float, lam: float) -> float:
    """s* = root in (0, r/(Kλ)] of λs = r/(e^u + K − 1), u = K r s/(K−1) (stable form)."""

    def g(s: float) -> float:
        u = K * r * s / (K - 1)
        return lam * s - r / (math.exp(min(u, 700.0)) + K - 1)

    hi = r / (K * lam)
    return brentq(g, 0.0, hi, xtol=1e-300, rtol=4 * np.finfo(float).eps, maxiter=500)


def closed_form_reason(problem: Problem) -> str | None:
    """None when a closed form exists, else why not."""
    p = problem
    if not p.balanced:
        return "classes are imbalanced"
    if not p.groups_label_pure:
        return "groups tie samples of different labels"
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


def _c(p: Problem) -> float:
    return math.sqrt(int(p.counts[0]) * p.lam_W * p.lam_H)


def closed_form(problem: Problem) -> Solution:
    """The SPEC §4 optimum; raises ClosedFormUnavailable where none exists."""
    reason = closed_form_reason(problem)
    if reason is not None:
        raise ClosedFormUnavailable(f"no closed form for this problem: {reason}")
    p = problem
    K, r, lam = p.K, p.r, p.lam_W
    bvec = None if p.bias == "none" else np.zeros(K)
    info: dict = {}
    if p.features == "layernorm":
        if p.loss == "ce":
            M = r * math.sqrt(K / (K - 1)) * _basis(p, K - 1) @ _etf_coords(K)
            s = ce_layernorm_s(K, r, lam)
            u = K * r * s / (K - 1)
            W, geometry = (s / r) * M.T, "simplex_etf"
            fv = math.log1p((K - 1) * math.exp(-u)) + lam * K * s**2 / 2
            info.update(s_star=s, formula_value=fv)
        elif p.bias == "none":
            if p.d_eff >= K:
                M, geometry = r * _basis(p, K), "orthogonal_frame"
                info["formula_value"] = K * lam / (2 * (r**2 + K * lam))
            else:
                m = p.d_eff
                M = r * math.sqrt(K / m) * _basis(p, m) @ _harmonic_frame(K, m)
                geometry = "tight_frame"
                fv = (lam / 2) * (m**2 / (K * (r**2 + m * lam)) + (K - m) / (K * lam))
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
        if p.loss == "mse":
            W, bvec = ridge(p, Hp, p.points)
    else:
        n = int(p.counts[0])
        c = _c(p)
        gamma = math.sqrt(n * p.lam_H / lam)
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
                info.update(u_star=u, formula_value=-math.log(1 - (K - 1) * c) + (K - 1) * c * u)
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
    fit, pen = evaluate(p, W, Hp, bvec, p.points)
    return Solution(
        problem=p, W=W, H_points=Hp, b=bvec, value=fit + pen, fit=fit, penalty=pen,
        geometry=geometry, method="closed_form", points=p.points, info=info,
    )


def _point_labels(p: Problem) -> np.ndarray:
    """Label of each (label-pure) point."""
    return np.argmax(p.points.counts, axis=0)
