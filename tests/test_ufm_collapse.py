"""At the UFM optimum the collapse metrics vanish (formulas written here, not the package's)."""

from __future__ import annotations

import numpy as np
import pytest

import ufm

pytestmark = pytest.mark.unit

LN = "layernorm"


def collapse(sol: ufm.Solution, centre_means: bool) -> dict:
    """NC1 = tr Σ_W / tr Σ_B, normalised class-mean Gram, per-sample cos(h_i, w_{y_i})."""
    p = sol.problem
    H, W = sol.H, sol.W
    y = np.repeat(np.arange(p.K), p.counts)
    M = np.stack([H[:, y == k].mean(axis=1) for k in range(p.K)], axis=1)
    mu_G = H.mean(axis=1)
    Mc = M - mu_G[:, None] if centre_means else M
    R = H - M[:, y]
    sw = np.sum(R**2) / H.shape[1]
    sb = np.sum((M - mu_G[:, None]) ** 2) / p.K
    norms = np.linalg.norm(Mc, axis=0)
    gram = (Mc.T @ Mc) / np.outer(norms, norms)
    cos = np.sum(H * W[y].T, axis=0) / (np.linalg.norm(H, axis=0) * np.linalg.norm(W[y], axis=1))
    return {"nc1": sw / sb, "gram": gram, "nc3": 1 - cos.mean(), "norms": norms, "M": M}


def etf(K: int) -> np.ndarray:
    return (K / (K - 1)) * (np.eye(K) - np.ones((K, K)) / K)


CASES = [
    (dict(loss="ce", features=LN, num_classes=5, samples_per_class=3, width=8, lam_W=0.01),
     "simplex_etf", False),
    (dict(loss="ce", features=LN, num_classes=4, samples_per_class=2, width=6, lam_W=0.01,
          bias="free"), "simplex_etf", False),
    (dict(loss="mse", features=LN, num_classes=4, samples_per_class=2, width=6, lam_W=0.01),
     "orthogonal_frame", False),
    (dict(loss="mse", features=LN, num_classes=4, samples_per_class=2, width=6, lam_W=0.01,
          bias="free"), "simplex_etf", True),
    (dict(loss="ce", num_classes=4, samples_per_class=3, width=6, lam_W=0.01, lam_H=0.01),
     "simplex_etf", False),
    (dict(loss="mse", num_classes=4, samples_per_class=3, width=6, lam_W=0.01, lam_H=0.01),
     "orthogonal_frame", False),
    (dict(loss="mse", num_classes=4, samples_per_class=3, width=6, lam_W=0.01, lam_H=0.01,
          bias="free"), "simplex_etf", True),
]


@pytest.mark.parametrize("method", ["closed_form", "numerical"])
@pytest.mark.parametrize(("kw", "geometry", "centre"), CASES)
def test_optimum_is_collapsed(kw, geometry, centre, method):
    p = ufm.Problem(**kw)
    sol = ufm.solve(p, method=method, seed=3, n_starts=2) if method == "numerical" else \
        ufm.solve(p, method=method)
    m = collapse(sol, centre)
    assert sol.geometry == geometry
    assert m["nc1"] < 1e-12
    target = etf(p.K) if geometry == "simplex_etf" else np.eye(p.K)
    tol = 1e-12 if method == "closed_form" else 1e-5
    assert np.abs(m["gram"] - target).max() < tol
    assert np.ptp(m["norms"]) < tol * m["norms"].max()
    assert m["nc3"] < tol  # each w_k points along its class's (centred) mean
    if p.features == LN:
        assert np.allclose(sol.H.sum(axis=0), 0, atol=1e-12)
        assert np.allclose(np.linalg.norm(sol.H, axis=0), p.r, rtol=1e-13)


def test_equiangular_regime_of_regularised_bias():
    lam, lam_b, r2, K = 0.1, 1.0, 6.0, 4
    p = ufm.Problem("mse", K, 2, 6, lam, bias="regularized", lam_b=lam_b, features=LN)
    for sol in (ufm.solve(p), ufm.solve(p, method="numerical", n_starts=2)):
        m = collapse(sol, centre_means=False)
        assert sol.geometry == "equiangular" and m["nc1"] < 1e-12
        off = m["gram"][~np.eye(K, dtype=bool)]
        assert np.allclose(off, -(lam / lam_b) / r2, atol=1e-6)


def test_imbalanced_optimum_still_has_zero_nc1():
    p = ufm.Problem("ce", 4, [1, 2, 4, 8], 6, 0.01, features=LN)
    sol = ufm.solve(p, n_starts=2)
    m = collapse(sol, centre_means=False)
    assert sol.method == "numerical" and m["nc1"] < 1e-12
    # imbalance breaks the ETF (minority collapse pulls small classes together)
    assert np.abs(m["gram"] - etf(4)).max() > 1e-3
