"""Exact elimination of (W, b) for MSE: the weighted ridge solution given the features.

At point level the MSE objective is (1/2) Σ_j D_j ‖W h_j + b − ȳ_j‖² + (λ_W/2)‖W‖² (+ λ_b/2‖b‖²)
+ const, with D_j = m_j/N and ȳ_j = c_j/m_j. With A = H D^{1/2} and T = Ȳ D^{1/2} the no-bias
minimiser is W = T Aᵀ(AAᵀ + λ_W I)^{-1} = T(AᵀA + λ_W I)^{-1}Aᵀ (we solve whichever system is
smaller). A free bias is eliminated by weighted centring (b = ȳ̄ − W h̄); a regularised bias is an
extra feature row of constant s = √(λ_W/λ_b) so that one ridge λ_W covers both.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg as sla

from .problem import Points, Problem


def _ridge_nobias(A: np.ndarray, T: np.ndarray, lam: float) -> np.ndarray:
    d, P = A.shape
    if d <= P:
        G = A @ A.T
        G[np.diag_indices(d)] += lam
        return sla.solve(G, A @ T.T, assume_a="pos").T
    G = A.T @ A
    G[np.diag_indices(P)] += lam
    return sla.solve(G, T.T, assume_a="pos").T @ A.T


def ridge(problem: Problem, Hp: np.ndarray, points: Points) -> tuple[np.ndarray, np.ndarray | None]:
    """Optimal (W, b) of the MSE objective for fixed point features Hp (d×P)."""
    D = points.mult / problem.N
    Ybar = points.counts / points.mult
    sq = np.sqrt(D)
    lam = problem.lam_W
    if problem.bias == "none":
        return _ridge_nobias(Hp * sq, Ybar * sq, lam), None
    if problem.bias == "free":
        hbar = Hp @ D  # Σ D_j = 1
        ybar = Ybar @ D
        W = _ridge_nobias((Hp - hbar[:, None]) * sq, (Ybar - ybar[:, None]) * sq, lam)
        return W, ybar - W @ hbar
    s = np.sqrt(lam / problem.lam_b)
    X = np.vstack([Hp, np.full((1, Hp.shape[1]), s)])
    Theta = _ridge_nobias(X * sq, Ybar * sq, lam)
    return Theta[:, :-1], s * Theta[:, -1]
