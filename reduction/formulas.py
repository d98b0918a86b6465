"""The formulas of the collapse metrics on small float64 objects (THEORY §6).

Plain numpy functions of the class-level statistics the accumulator (metrics.py) gathers: the
simplex-ETF target, the NC2 distance, equinorm and equiangularity, and NC1 in Papyan's form with a
rank-(K−1) pseudo-inverse. Every function is scale-free: inputs are divided by a power of two
≥ max|x| first, which is exact, so extreme feature scales neither overflow nor underflow.
"""

from __future__ import annotations

import math

import numpy as np

__all__ = [
    "equiangularity",
    "equinorm",
    "etf_target",
    "nc1_papyan",
    "nc2_distance",
    "self_duality",
]


def _pow2_at_least(m: float) -> float:
    """The power of two 2^e with m < 2^e ≤ 2m (capped at 2^1023), for finite m > 0.

    Scaling by a power of two is exact in binary floating point (barring subnormal results),
    which is why the internal feature normalisation uses one: H and 2^k H give identical metrics.
    """
    return math.ldexp(1.0, min(math.frexp(m)[1], 1023))


def _unit_scale(X: np.ndarray) -> np.ndarray:
    """X / 2^e with 2^e ≥ max|X| (X unchanged if it is 0): Gram matrices and norms of the result
    neither overflow nor underflow, whatever the scale of X."""
    m = float(np.max(np.abs(X), initial=0.0))
    return X / _pow2_at_least(m) if m > 0 else X


def etf_target(num_classes: int) -> np.ndarray:
    """Simplex-ETF Gram target P_K = I_K − 11ᵀ/K (THEORY §1)."""
    return np.eye(num_classes) - np.full((num_classes, num_classes), 1.0 / num_classes)


def nc2_distance(X: np.ndarray, target: np.ndarray) -> float:
    """‖G/‖G‖_F − T/‖T‖_F‖_F with G = X Xᵀ (X: K rows). NaN if X = 0 (no geometry to compare).

    X is first divided by a power of two ≥ max|X| (the value is scale-free), so G cannot overflow
    or underflow for extreme scales.
    """
    G = _unit_scale(np.asarray(X, dtype=np.float64))
    G = G @ G.T
    gn = np.linalg.norm(G)
    if gn == 0.0:
        return math.nan
    return float(np.linalg.norm(G / gn - target / np.linalg.norm(target)))


def equinorm(X: np.ndarray) -> float:
    """std/mean of the row norms (population std). NaN if all rows are zero."""
    norms = np.linalg.norm(_unit_scale(X), axis=1)
    m = norms.mean()
    return float(norms.std() / m) if m > 0 else math.nan


def equiangularity(X: np.ndarray) -> float:
    """Mean over pairs k<l of |cos(x_k, x_l) + 1/(K−1)|; 0 for a simplex ETF. NaN on a zero row."""
    K = X.shape[0]
    X = _unit_scale(X)
    norms = np.linalg.norm(X, axis=1)
    if np.any(norms == 0):
        return math.nan
    C = (X / norms[:, None]) @ (X / norms[:, None]).T
    iu = np.triu_indices(K, k=1)
    return float(np.mean(np.abs(C[iu] + 1.0 / (K - 1))))


def nc1_papyan(Sw: np.ndarray, Mbar: np.ndarray, K: int) -> float:
    """(1/K) tr(Σ_W Σ_B⁺), Σ_B⁺ = Σ_{j ≤ K−1} v_j v_jᵀ / s_j² from the SVD of M̄/√K.

    Σ_B has rank ≤ K−1 (its rows are centred by a weighted mean), so only its top K−1 eigenpairs are
    signal; a plain pinv also inverts rounding-noise eigenvalues and can return huge or negative
    values. Eigenvalues below a relative tolerance are dropped too (rank-deficient means, d < K−1).
    Each term v_jᵀ Σ_W v_j is clipped at 0 because Σ_W is PSD (only rounding can make it negative).
    """
    _, s, Vt = np.linalg.svd(Mbar / math.sqrt(K), full_matrices=False)
    if s.size == 0 or s[0] == 0.0:
        return math.inf
    keep = min(K - 1, s.size)
    s, Vt = s[:keep], Vt[:keep]
    tol = s[0] * max(Mbar.shape) * np.finfo(np.float64).eps
    mask = s > tol
    s, Vt = s[mask], Vt[mask]
    quad = np.maximum(np.einsum("jd,de,je->j", Vt, Sw, Vt), 0.0)
    return float((quad / s**2).sum() / K)


def self_duality(W: np.ndarray, Mbar: np.ndarray) -> float:
    """‖W M̄ᵀ/‖W M̄ᵀ‖_F − P_K/√(K−1)‖_F (THEORY §6): how far the classifier-times-means matrix is
    from the simplex ETF that self-duality and NC2 together give (W ∝ M̄, M̄ M̄ᵀ ∝ P_K make
    W M̄ᵀ ∝ P_K, and ‖P_K‖_F = √(K−1)). The normalisation of Kothapalli (2023), as the
    rhubarbwu/neural-collapse library's ``self_duality_error`` computes it; in [0, 2]. NaN when
    W M̄ᵀ = 0. Inputs are rescaled by powers of two first (scale-free, no overflow).
    """
    K = W.shape[0]
    S = _unit_scale(np.asarray(W, dtype=np.float64)) @ _unit_scale(np.asarray(Mbar, np.float64)).T
    n = np.linalg.norm(S)
    if n == 0.0 or K < 2:
        return math.nan
    return float(np.linalg.norm(S / n - etf_target(K) / math.sqrt(K - 1)))
