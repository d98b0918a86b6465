"""Exact elimination of (W, b) for MSE: the weighted ridge solution given the features (THEORY §5).

At point level the MSE objective is (1/2) Σ_j D_j ‖W h_j + b − ȳ_j‖² + (λ_W/2)‖W‖² (+ λ_b/2‖b‖²)
+ const, with D_j = m_j/N and ȳ_j = c_j/m_j. With A = H D^{1/2} and T = Ȳ D^{1/2} the no-bias
minimiser is W = T Aᵀ(AAᵀ + λ_W I)^{-1} = T(AᵀA + λ_W I)^{-1}Aᵀ (we solve whichever system is
smaller). A free bias is eliminated by weighted centring (b = ȳ̄ − W h̄); a regularised bias is an
extra feature row of constant s = √(λ_W/λ_b) so that one ridge λ_W covers both.

Precision at small λ (the optimum's fit is O(λ²), its value O(λ)):
- the residual is formed as WA − T = −λ T(AᵀA + λI)^{-1} (P ≤ d), which has no cancellation, so
  fits of 1e-400 are not lost in the rounding of WA ≈ T (for P > d, WA − T is formed directly;
  its rounding floor is then ~eps²‖T‖² in the fit);
- with a free bias the centred system has the exact null vector √D (A√D = 0, T√D = 0); it is
  removed by a Householder reflection instead of being left to rounding;
- when λ_W < 1e-10·‖A‖_F² Cholesky is not trusted; the SVD filter σ/(σ² + λ) is used, with
  singular values below max(d, P)·eps·σ_max treated as zero (the rank-aware limit W → T A⁺).
"""

from __future__ import annotations

import math

import numpy as np
import scipy.linalg as sla

from .problem import Points, Problem, mse_constant, penalty

# Cholesky is used while cond(Gram + λI) ≤ (‖A‖_F² + λ)/λ ≤ 1/RIDGE_CHOLESKY_RCOND + 1
RIDGE_CHOLESKY_RCOND = 1e-10


def _ridge_core(A: np.ndarray, T: np.ndarray, lam: float) -> tuple[np.ndarray, np.ndarray]:
    """(W, R) with W = argmin ½‖WA − T‖² + (λ/2)‖W‖² and R = WA − T (see module docstring)."""
    d, P = A.shape
    K = T.shape[0]
    if P == 0:
        return np.zeros((K, d)), np.zeros((K, 0))
    scale = float(np.sum(A * A))
    if lam >= RIDGE_CHOLESKY_RCOND * scale:
        if P <= d:
            G = A.T @ A
            G[np.diag_indices(P)] += lam
            X = sla.cho_solve(sla.cho_factor(G), T.T)  # (AᵀA + λI)⁻¹Tᵀ
            return (A @ X).T, -lam * X.T
        G = A @ A.T
        G[np.diag_indices(d)] += lam
        W = sla.solve(G, A @ T.T, assume_a="pos").T
        return W, W @ A - T
    U, s, Vt = np.linalg.svd(A, full_matrices=False)
    keep = s > max(d, P) * np.finfo(float).eps * s[0]
    TV = T @ Vt.T  # K × min(d, P)
    W = ((TV[:, keep]) * (s[keep] / (s[keep] ** 2 + lam))) @ U[:, keep].T
    if P <= d:  # Vt is a complete basis of R^P: R = −λ Σ_i (T v_i) v_iᵀ/(σ_i² + λ), exactly
        filt = np.where(keep, lam / np.where(keep, s**2 + lam, 1.0), 1.0)
        return W, -(TV * filt) @ Vt
    return W, W @ A - T


def _householder_drop(v: np.ndarray, X: np.ndarray) -> np.ndarray:
    """X·Q with Q the P×(P−1) orthonormal basis of v^⊥ (‖v‖ = 1) given by the Householder
    reflection that swaps v and e_1 (its columns 2..P)."""
    w = v.copy()
    w[0] -= 1.0
    ww = float(w @ w)
    if ww == 0.0:  # v = e_1
        return X[:, 1:]
    return (X - np.outer(X @ w, w) * (2.0 / ww))[:, 1:]


def _householder_lift(v: np.ndarray, Y: np.ndarray) -> np.ndarray:
    """Y·Qᵀ for Q as in `_householder_drop` (Y: rows in the (P−1)-dim coordinates)."""
    w = v.copy()
    w[0] -= 1.0
    ww = float(w @ w)
    Yf = np.concatenate([np.zeros((Y.shape[0], 1)), Y], axis=1)
    if ww == 0.0:
        return Yf
    return Yf - np.outer(Yf @ w, w) * (2.0 / ww)


def ridge_fit(
    problem: Problem, Hp: np.ndarray, points: Points
) -> tuple[np.ndarray, np.ndarray | None, np.ndarray]:
    """Optimal (W, b) of the MSE objective for fixed point features Hp (d×P), and the residual
    R = W Hp + b1ᵀ − Ȳ (K×P) formed without cancellation."""
    D = points.mult / problem.N
    Ybar = points.counts / points.mult
    sq = np.sqrt(D)
    lam = problem.lam_W
    if problem.bias == "none":
        W, Rs = _ridge_core(Hp * sq, Ybar * sq, lam)
        return W, None, Rs / sq
    if problem.bias == "free":
        hbar = Hp @ D  # Σ D_j = 1
        ybar = Ybar @ D
        Ac = (Hp - hbar[:, None]) * sq
        Tc = (Ybar - ybar[:, None]) * sq
        unit = sq / np.linalg.norm(sq)
        W, Rq = _ridge_core(_householder_drop(unit, Ac), _householder_drop(unit, Tc), lam)
        return W, ybar - W @ hbar, _householder_lift(unit, Rq) / sq
    # s² = λ_W/λ_b, formed from square roots (the ratio over- or underflows at the extremes)
    s = math.sqrt(lam) / math.sqrt(problem.lam_b)
    X = np.vstack([Hp, np.full((1, Hp.shape[1]), s)])
    Theta, Rs = _ridge_core(X * sq, Ybar * sq, lam)
    return Theta[:, :-1], s * Theta[:, -1], Rs / sq


def ridge(problem: Problem, Hp: np.ndarray, points: Points) -> tuple[np.ndarray, np.ndarray | None]:
    """Optimal (W, b) of the MSE objective for fixed point features Hp (d×P)."""
    W, b, _ = ridge_fit(problem, Hp, points)
    return W, b


def mse_value(
    problem: Problem, W: np.ndarray, Hp: np.ndarray, b: np.ndarray | None, R: np.ndarray,
    points: Points,
) -> tuple[float, float]:
    """(fit, penalty) of the MSE objective from the residual R of `ridge_fit` (accurate where
    `evaluate`, which forms W h + b − ȳ itself, rounds a fit of O(λ²) to ~1e-32)."""
    m, N = points.mult, problem.N
    fit = float(np.sum(m * np.sum(R**2, axis=0)) / (2 * N)) + mse_constant(points, N)
    return fit, penalty(problem, W, Hp, b, points)
