"""THEORY §4 closed forms: formula values, the numerical solver from random starts, certificates."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.optimize import brentq

import ufm

pytestmark = pytest.mark.unit

LN = "layernorm"
CASES = [
    # LayerNorm CE: d' ≥ K−1 (d' = K−1 included), all bias modes, plain sphere, custom radius
    dict(loss="ce", features=LN, num_classes=4, samples_per_class=3, width=5, lam_W=0.01),
    dict(loss="ce", features=LN, num_classes=4, samples_per_class=2, width=5, lam_W=0.01,
         bias="free"),
    dict(loss="ce", features=LN, num_classes=4, samples_per_class=2, width=6, lam_W=0.01,
         bias="regularized", lam_b=0.1),
    dict(loss="ce", features=LN, num_classes=3, samples_per_class=5, width=3, lam_W=0.05),
    dict(loss="ce", features=LN, num_classes=5, samples_per_class=2, width=4, lam_W=0.02,
         radius=1.5, centered=False),
    # LayerNorm MSE: orthogonal frame (d' = K), tight frame (d' < K), ETF, both bias regimes
    dict(loss="mse", features=LN, num_classes=4, samples_per_class=3, width=5, lam_W=0.01),
    dict(loss="mse", features=LN, num_classes=4, samples_per_class=3, width=4, lam_W=0.01),
    dict(loss="mse", features=LN, num_classes=5, samples_per_class=1, width=3, lam_W=0.2,
         centered=False),
    dict(loss="mse", features=LN, num_classes=4, samples_per_class=3, width=3, lam_W=0.05),
    dict(loss="mse", features=LN, num_classes=4, samples_per_class=3, width=4, lam_W=0.01,
         bias="free"),
    dict(loss="mse", features=LN, num_classes=3, samples_per_class=2, width=6, lam_W=0.3,
         bias="free", radius=2.0),
    dict(loss="mse", features=LN, num_classes=4, samples_per_class=2, width=6, lam_W=0.1,
         bias="regularized", lam_b=0.01),
    dict(loss="mse", features=LN, num_classes=4, samples_per_class=2, width=6, lam_W=0.1,
         bias="regularized", lam_b=0.05),  # exactly at the ETF threshold (K−1)λ/r²
    dict(loss="mse", features=LN, num_classes=4, samples_per_class=2, width=6, lam_W=0.1,
         bias="regularized", lam_b=1.0),
    # standard UFM CE: Kc < 1, Kc close to 1, Kc = 1, Kc > 1; bias modes
    dict(loss="ce", num_classes=4, samples_per_class=3, width=5, lam_W=0.01, lam_H=0.01),
    dict(loss="ce", num_classes=4, samples_per_class=3, width=3, lam_W=0.01, lam_H=0.02,
         bias="free"),
    dict(loss="ce", num_classes=4, samples_per_class=3, width=4, lam_W=0.01, lam_H=0.02,
         bias="regularized", lam_b=0.5),
    dict(loss="ce", num_classes=4, samples_per_class=1, width=4, lam_W=0.2, lam_H=0.2),
    dict(loss="ce", num_classes=4, samples_per_class=1, width=4, lam_W=0.245, lam_H=0.245),
    dict(loss="ce", num_classes=4, samples_per_class=1, width=4, lam_W=0.25, lam_H=0.25),
    dict(loss="ce", num_classes=4, samples_per_class=3, width=5, lam_W=0.1, lam_H=0.3),
    dict(loss="ce", num_classes=3, samples_per_class=2, width=2, lam_W=0.5, lam_H=0.5,
         bias="free"),
    # standard UFM MSE: no bias (d = K) and free bias (d = K−1), both sides of Kc = 1
    dict(loss="mse", num_classes=4, samples_per_class=3, width=4, lam_W=0.01, lam_H=0.01),
    dict(loss="mse", num_classes=4, samples_per_class=1, width=4, lam_W=0.2, lam_H=0.2),
    dict(loss="mse", num_classes=4, samples_per_class=1, width=4, lam_W=0.245, lam_H=0.245,
         bias="free"),
    dict(loss="mse", num_classes=4, samples_per_class=1, width=4, lam_W=0.25, lam_H=0.25),
    dict(loss="mse", num_classes=4, samples_per_class=3, width=2, lam_W=0.1, lam_H=0.5),
    dict(loss="mse", num_classes=4, samples_per_class=3, width=3, lam_W=0.01, lam_H=0.01,
         bias="free"),
    dict(loss="mse", num_classes=4, samples_per_class=3, width=3, lam_W=0.1, lam_H=0.5,
         bias="free"),
]


def spec_value(p: ufm.Problem) -> float:
    """THEORY §4 optimal values, written out independently of the package."""
    K, lam = p.K, p.lam_W
    if p.features == LN:
        r = p.r
        dp = p.width - 1 if p.centered else p.width
        if p.loss == "ce":
            s = brentq(lambda s: lam * s - r * math.exp(-K * r * s / (K - 1))
                       / (1 + (K - 1) * math.exp(-K * r * s / (K - 1))), 1e-14, r / (K * lam),
                       xtol=1e-16, rtol=1e-15)
            u = K * r * s / (K - 1)
            return math.log(1 + (K - 1) * math.exp(-u)) + lam * K * s**2 / 2
        if p.bias == "none":
            if dp >= K:
                return K * lam / (2 * (r**2 + K * lam))
            m = dp
            return (lam / 2) * (m**2 / (K * (r**2 + m * lam)) + (K - m) / (K * lam))
        etf = lam * (K - 1) ** 2 / (2 * K * (r**2 + (K - 1) * lam))
        if p.bias == "free":
            return etf
        if p.lam_b <= (K - 1) * lam / r**2:
            # ETF regime: the bias direction (target mean 1/K) is shrunk by λ_b (derived here:
            # the 1-direction contributes λ_b/(2K(1+λ_b)) to the value)
            return etf + p.lam_b / (2 * K * (1 + p.lam_b))
        a = lam / p.lam_b
        return K * lam / (2 * (r**2 + a + K * lam))
    c = math.sqrt(p.counts[0] * p.lam_W * p.lam_H)
    if p.loss == "ce":
        if K * c >= 1:
            return math.log(K)
        return -math.log(1 - (K - 1) * c) + (K - 1) * c * math.log((1 - (K - 1) * c) / c)
    if p.bias == "none":
        return K * c * (1 - K * c / 2) if K * c < 1 else 0.5
    return (K - 1) * c * (1 - K * c / 2) if K * c < 1 else (K - 1) / (2 * K)


def _id(c: dict) -> str:
    return "-".join(f"{k}={v}" for k, v in c.items() if k not in ("samples_per_class",))


@pytest.fixture(scope="module", params=CASES, ids=[_id(c) for c in CASES])
def case(request):
    p = ufm.Problem(**request.param)
    return p, ufm.solve(p, method="closed_form")


def test_closed_form_matches_spec_formula(case):
    p, sol = case
    assert sol.method == "closed_form"
    assert sol.value == pytest.approx(spec_value(p), rel=1e-12, abs=1e-15)
    assert sol.value == pytest.approx(sol.fit + sol.penalty, rel=1e-14)
    assert sol.W.dtype == np.float64 and sol.W.shape == (p.K, p.width)
    assert sol.H.shape == (p.width, p.N)


@pytest.mark.parametrize("seed", [0, 1])
def test_numerical_solver_matches_closed_form(case, seed):
    p, sol = case
    num = ufm.solve(p, method="numerical", seed=seed, n_starts=3)
    assert num.method == "numerical"
    assert abs(num.value - sol.value) <= 1e-8 * abs(sol.value)


def test_certificate_matches_closed_form(case):
    p, sol = case
    cert = ufm.certify(sol)
    assert cert.valid and cert.level == "class" and cert.num_points == p.K
    # lower bound below the value up to the solver's tolerance
    assert cert.lower_bound <= sol.value + 1e-8 * abs(sol.value)
    tight_frame = sol.geometry == "tight_frame"  # d' < K: the SDP drops the rank bound
    if tight_frame:
        assert not cert.exact and cert.rel_gap > 1e-3
    else:
        assert abs(cert.rel_gap) <= 1e-6 and cert.certified


def test_spec_worked_example():
    p = ufm.Problem("ce", 10, 100, 64, 0.005, features="layernorm")
    sol = ufm.solve(p)
    assert sol.method == "closed_form" and sol.geometry == "simplex_etf"
    s = np.linalg.norm(sol.W, axis=1)
    assert np.allclose(s, s[0]) and s[0] == pytest.approx(0.848, abs=5e-4)
    assert sol.value == pytest.approx(0.02276, abs=5e-6)
    # the stationarity condition λs = r e^{-u}/(1 + (K−1)e^{-u}) holds at s*
    u = 10 * 8 * s[0] / 9
    assert 0.005 * s[0] == pytest.approx(8 * math.exp(-u) / (1 + 9 * math.exp(-u)), rel=1e-10)


def _means(sol):
    p = sol.problem
    y = np.repeat(np.arange(p.K), p.counts)
    return np.stack([sol.H[:, y == k].mean(axis=1) for k in range(p.K)], axis=1)


def test_spec_classifier_formulas():
    lam, K = 0.01, 4
    p = ufm.Problem("mse", K, 3, 6, lam, features=LN)  # orthogonal frame
    sol = ufm.solve(p)
    M, r2 = _means(sol), 6.0
    assert np.allclose(sol.W, M.T / (r2 + K * lam), atol=1e-13)
    assert np.allclose(M.T @ M, r2 * np.eye(K), atol=1e-12)
    p = ufm.Problem("mse", K, 3, 6, lam, features=LN, bias="free")  # ETF with b = 1/K
    sol = ufm.solve(p)
    M = _means(sol)
    assert np.allclose(sol.W, (K - 1) * M.T / (K * (r2 + (K - 1) * lam)), atol=1e-13)
    assert np.allclose(sol.b, 1.0 / K, atol=1e-13)
    p = ufm.Problem("ce", K, 5, 6, 0.02, lam_H=0.03)  # h_k = √(λ_W/(nλ_H)) w_k
    sol = ufm.solve(p)
    assert np.allclose(_means(sol), math.sqrt(0.02 / (5 * 0.03)) * sol.W.T, atol=1e-13)


def test_closed_form_unavailable_is_clear():
    p = ufm.Problem("ce", 3, [1, 2, 3], 4, 0.01, lam_H=0.01)
    with pytest.raises(ufm.ClosedFormUnavailable, match="imbalanced"):
        ufm.solve(p, method="closed_form")
    assert ufm.solve(p).method == "numerical"
    p = ufm.Problem("ce", 5, 2, 3, 0.01, features=LN)
    with pytest.raises(ufm.ClosedFormUnavailable, match="K−1"):
        ufm.solve(p, method="closed_form")
    with pytest.raises(ValueError, match="method"):
        ufm.solve(p, method="newton")


def test_closed_form_large_K_is_fast():
    import time

    t = time.perf_counter()
    sol = ufm.solve(ufm.Problem("ce", 1000, 10, 1024, 0.005, features=LN))
    assert time.perf_counter() - t < 10
    assert sol.geometry == "simplex_etf"
    assert sol.value == pytest.approx(spec_value(sol.problem), rel=1e-12)
